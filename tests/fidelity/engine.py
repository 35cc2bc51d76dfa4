"""The engine's answer for each frame, as a user gets it: ``autotimm-stream export`` then
``autotimm-stream run`` on a folder of PNG files, in subprocesses.

Results come from the JSONL sink (one line per frame). Segmentation lines carry only class
fractions, so a segmentor's run also publishes on ZeroMQ in ``push`` mode (reliable: nothing is
dropped while a peer is connected) and a PULL subscriber collects each frame's class map, raw
(``mask_encoding: raw``: the exact uint8 class ids at source resolution, docs/protocol.md).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autotimm_stream.client import ResultMessage, Subscriber
from autotimm_stream.testing.rtsp import free_port
from tests.helpers import CLI, cli, read_jsonl

from .checkpoints import Case, Cases

__all__ = ["EngineFrame", "Engine"]

EXPORT_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300


@dataclass
class EngineFrame:
    """The engine's result for one frame: its JSONL record and, for segmentation, its class map."""

    record: dict[str, Any]
    mask: np.ndarray | None = None


def _config(frames: Path, bundle: Path, out: Path, endpoint: str | None) -> dict[str, Any]:
    zmq: dict[str, Any] = {"enabled": False}
    if endpoint:
        zmq = {"enabled": True, "endpoint": endpoint, "mode": "push", "mask_encoding": "raw", "heartbeat_s": 0}
    return {
        "sources": [{"id": "cam", "type": "folder", "uri": str(frames), "pattern": "*.png"}],
        # exact: Pillow-trained classifiers too (auto gives them torch's kernel on the CPU)
        "model": {"path": str(bundle), "fidelity": "exact"},
        "batching": {"max_batch": 4, "max_wait_ms": 5},
        "sinks": {
            "jsonl": {"enabled": True, "filename": "predictions.jsonl"},
            "zmq": zmq,
            "video": {"enabled": False},
            "report": {"enabled": False},
        },
        "output_dir": str(out),
    }


class Engine:
    """Exports each case's checkpoint once and runs its bundle once over the frames folder."""

    def __init__(self, cases: Cases, frames: Path, work: Path):
        self.cases, self.frames, self.work = cases, frames, work
        self.names = sorted(p.name for p in frames.glob("*.png"))  # the folder source's order
        self.bundles: dict[str, Path] = {}
        self.results: dict[str, dict[str, EngineFrame]] = {}

    def bundle(self, name: str) -> Path:
        """``autotimm-stream export CKPT -o BUNDLE --classes ...`` (input size: the checkpoint's)."""
        if name not in self.bundles:
            case = self.cases(name)
            out = self.work / f"{name}.pt"
            proc = cli(
                "export",
                str(case.made.path),
                "-o",
                str(out),
                "--classes",
                ",".join(case.made.classes),
                timeout=EXPORT_TIMEOUT_S,
            )
            assert proc.returncode == 0, f"export of {name} failed:\n{proc.stderr}"
            self.bundles[name] = out
        return self.bundles[name]

    def __call__(self, name: str) -> dict[str, EngineFrame]:
        """Frame name -> the engine's result, from ``autotimm-stream run``."""
        if name not in self.results:
            self.results[name] = self._run(self.cases(name), self.bundle(name))
        return self.results[name]

    def _run(self, case: Case, bundle: Path) -> dict[str, EngineFrame]:
        out = self.work / f"{case.name}_run"
        endpoint = f"tcp://127.0.0.1:{free_port()}" if case.task == "segmentation" else None
        cfg = self.work / f"{case.name}.yaml"
        cfg.write_text(yaml.safe_dump(_config(self.frames, bundle, out, endpoint)))
        masks: dict[int, np.ndarray] = {}
        if endpoint is None:
            proc = cli("run", str(cfg), "--no-progress", timeout=RUN_TIMEOUT_S)
            stderr, code = proc.stderr, proc.returncode
        else:
            with Subscriber(endpoint, mode="pull") as sub:
                run = subprocess.Popen(
                    [*CLI, "run", str(cfg), "--no-progress"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    for msg in sub.messages(idle_timeout_s=RUN_TIMEOUT_S, until_eos={"cam"}):
                        if isinstance(msg, ResultMessage) and msg.mask is not None:
                            masks[msg.frame_index] = msg.mask.copy()
                    _, stderr = run.communicate(timeout=RUN_TIMEOUT_S)
                finally:
                    if run.poll() is None:
                        run.kill()
                        run.wait(timeout=10)
                code = run.returncode
        assert code == 0, f"run of {case.name} failed:\n{stderr}"
        records = read_jsonl(out / "predictions.jsonl")
        assert sorted(r["frame_index"] for r in records) == list(range(len(self.names))), stderr
        frames = {}
        for r in records:
            name = self.names[r["frame_index"]]
            frames[name] = EngineFrame(r, masks.get(r["frame_index"]))
        if endpoint is not None:
            assert sorted(masks) == list(range(len(self.names))), f"masks received for frames {sorted(masks)}"
        return frames
