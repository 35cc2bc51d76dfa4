"""The embedded default run: a bundled model on a generated clip, nothing else needed.

The default is the AutoTimm-trained shape detector (``assets/demo_detector.pt``, exported from
``assets/demo_detector.ckpt`` by ``autotimm-stream export``); ``segmentation`` runs the
AutoTimm-trained shape segmentor (``assets/demo_segmentor.pt``, DeepLabV3+, exported from
``assets/demo_segmentor.ckpt``) on a clip of another scene; ``classification`` runs the small timm
classifier of the first milestone. All were trained on generated scenes that never include the
demo clips'.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from ..config import RunConfig, apply_overrides, validate_config
from ..errors import ModelError
from ..fileio import write_atomic
from ..sources.file import probe_video
from ..synthetic import write_clip
from ..tasks import Task

__all__ = ["demo_config", "demo_bundle_path", "DEMO_SEED", "SEGMENTATION_DEMO_SEED", "DEMO_TASKS"]

DEMO_SEED = 7  # the detection and classification demos' scene; their models never saw it in training
SEGMENTATION_DEMO_SEED = 13  # the segmentation demo's scene (never seen by its model either)
# task -> (bundle in assets/, script that rebuilds it, whether the clip shows one dominant shape, clip seed)
DEMO_TASKS = {
    Task.DETECTION: ("demo_detector.pt", "examples/training/train_demo_detector.py", False, DEMO_SEED),
    Task.CLASSIFICATION: ("demo_classifier.pt", "examples/training/train_demo_classifier.py", True, DEMO_SEED),
    Task.SEGMENTATION: (
        "demo_segmentor.pt",
        "examples/training/train_demo_segmentor.py",
        False,
        SEGMENTATION_DEMO_SEED,
    ),
}


def demo_bundle_path(task: Task | str = Task.DETECTION) -> str:
    name, script, _, _ = DEMO_TASKS[Task(task)]
    path = str(resources.files("autotimm_stream") / "assets" / name)
    if not os.path.isfile(path):
        raise ModelError(f"the demo model {path!r} is missing; rebuild it with `python {script}`")
    return path


def _clip(out_dir: str, frames: int, dominant: bool, seed: int = DEMO_SEED) -> str:
    kind = "one" if dominant else "many"
    scene = "" if seed == DEMO_SEED else f"_seed{seed}"
    path = os.path.join(out_dir, f"demo_clip_{kind}{scene}_{frames}.mp4")
    try:
        info = probe_video(path)
        if info.frames == frames:
            return path
    except OSError:
        pass

    def write(tmp: str) -> None:
        write_clip(tmp, frames=frames, width=640, height=360, fps=25, seed=seed, dominant=dominant)

    write_atomic(path, write, suffix=".mp4")  # the muxer picks the container from the name
    return path


def demo_config(
    out_dir: str = "demo_out",
    overrides: list[str] | None = None,
    frames: int = 250,
    realtime: bool = True,
    task: Task | str = Task.DETECTION,
) -> RunConfig:
    """The demo's config: generates the clip into ``out_dir`` when it is not there yet.

    The clip plays at its own speed by default (``realtime``), so a subscriber started beside
    the demo can watch the results arrive; ``realtime=False`` runs as fast as the machine allows.
    """
    os.makedirs(out_dir, exist_ok=True)
    _, _, dominant, seed = DEMO_TASKS[Task(task)]
    data: dict[str, Any] = {
        "sources": [
            {"id": "demo", "uri": _clip(out_dir, frames, dominant, seed), "policy": "block", "realtime": realtime}
        ],
        "model": {"path": demo_bundle_path(task), "device": "auto"},
        "output_dir": out_dir,
    }
    return validate_config(apply_overrides(data, overrides or []), origin="demo config")
