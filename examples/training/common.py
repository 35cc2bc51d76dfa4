"""What the demo training scripts (``train_demo_classifier.py``, ``train_demo_detector.py``,
``train_demo_segmentor.py``) share: the generated scenes they train and are measured on, the
cached network inputs, the engine-side checks, and, for the two AutoTimm (Lightning) scripts, the
training loop, checkpoint loading, command line and report pieces.

Not a script: the three import it as ``common`` (a script's own folder is ``sys.path[0]`` when it
runs, as in ``python examples/training/train_demo_detector.py``). What differs
between them (seeds, image size, steps, learning rate, the model, its metrics) stays in each script.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import cv2
import numpy as np
import torch

from autotimm_stream.runtime.preprocess import PreprocessSpec, preprocess_batch
from autotimm_stream.synthetic import ShapeScene, write_clip

T = TypeVar("T")

# The demo clips (keep in step with autotimm_stream.app.demo): never trained on, only measured.
DEMO_CLIP = {"frames": 250, "width": 640, "height": 360, "fps": 25}
HELDOUT_SEEDS = range(100, 130)  # 30 held-out scenes
TRAIN_SEED_STRIDE = 1_000_000  # per --seed, so different runs draw different training scenes
POOL_SIZE = 48  # scenes alive at once while generating: consecutive frames mix many scenes
MAX_SKIP = 15  # frames advanced between two samples of a scene, so consecutive samples differ
GEN_CHUNK = 64  # frames rendered and preprocessed per call
TORCH_THREADS = 2  # fixed, because float reductions (and so the weights) depend on the thread count
# Report fields that describe a Lightning training run (kept by --evaluate-only).
TRAINING_KEYS = (
    "seed", "steps", "batch_size", "train_frames", "lr",
    "data_wall_time_s", "fit_wall_time_s", "train_wall_time_s", "train_cpu_time_s",
)  # fmt: skip


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scenes:
    """Which ``ShapeScene``s a script trains on and is measured on."""

    train_sizes: tuple[tuple[int, int], ...]  # (width, height) of training scenes
    heldout_sizes: tuple[tuple[int, int], ...]  # of held-out scenes, in turn
    uses_per_scene: int  # samples drawn from a training scene before it is replaced by a fresh seed
    heldout_frames_per_scene: int
    heldout_frame_stride: int  # frames advanced between two held-out frames of a scene
    dominant: bool = False  # one large shape (the classifier's scenes) rather than several
    train_shapes: tuple[int, int] = (1, 5)  # shapes per training scene, inclusive range (not dominant)
    heldout_shapes: int = 3  # shapes per held-out scene (not dominant)


# The detection and segmentation demos' scenes: several shapes. Training covers landscape, square
# and portrait; the held-out list adds sizes never seen in training.
MULTI_SHAPE_SCENES = Scenes(
    train_sizes=(
        (640, 360), (320, 240), (480, 480), (1280, 720), (360, 640), (800, 600), (640, 480), (960, 540),
    ),
    heldout_sizes=(
        (640, 360), (320, 240), (480, 480), (1280, 720), (1024, 768), (300, 300), (720, 1280), (854, 480),
    ),
    uses_per_scene=12,
    heldout_frames_per_scene=8,  # 30 scenes x 8 frames = 240 held-out frames
    heldout_frame_stride=10,
)  # fmt: skip


class ScenePool:
    """An endless, seeded stream of training scenes, drawn from a rotating pool.

    Building a scene costs far more than rendering one of its frames (its background is made up
    front), so each scene serves several samples, a few frames apart, before it is replaced.
    """

    def __init__(self, rng: np.random.Generator, first_seed: int, scenes: Scenes, demo_seed: int) -> None:
        self.rng = rng
        self.scenes = scenes
        self.demo_seed = demo_seed
        self.first_seed = self.next_seed = first_seed
        self.pool = [self._new_scene() for _ in range(POOL_SIZE)]
        self.uses = [0] * POOL_SIZE

    def _new_scene(self) -> ShapeScene:
        seed = self.next_seed
        self.next_seed += 1
        if seed == self.demo_seed or seed in HELDOUT_SEEDS:
            raise AssertionError(f"training seed {seed} collides with a held-out or demo seed")
        sizes = self.scenes.train_sizes
        w, h = sizes[int(self.rng.integers(len(sizes)))]
        if self.scenes.dominant:
            return ShapeScene(w, h, seed=seed, dominant=True)
        lo, hi = self.scenes.train_shapes
        return ShapeScene(w, h, seed=seed, n_shapes=int(self.rng.integers(lo, hi + 1)))

    def sample(self, take: Callable[[ShapeScene, np.random.Generator], T]) -> T:
        """``take(scene, rng)`` of a random scene of the pool, a few frames on (``take`` may draw from ``rng``)."""
        i = int(self.rng.integers(POOL_SIZE))
        scene = self.pool[i]
        for _ in range(int(self.rng.integers(1, MAX_SKIP + 1))):
            scene.step()
        out = take(scene, self.rng)
        self.uses[i] += 1
        if self.uses[i] >= self.scenes.uses_per_scene:
            self.pool[i], self.uses[i] = self._new_scene(), 0
        return out

    @property
    def scenes_used(self) -> int:
        return self.next_seed - self.first_seed


def augment_frame(img: np.ndarray, rng: np.random.Generator, jpeg_p: float = 0.5) -> tuple[np.ndarray, bool]:
    """Photometric noise the demo's footage may carry, and mirroring: (frame, whether it was mirrored).

    A mirrored triangle still points up, so every class survives a horizontal flip (a vertical
    one would not); the caller mirrors its ground truth with the frame.
    """
    # Brightness/contrast: backgrounds and colours vary by seed, lighting should not matter.
    img = cv2.convertScaleAbs(img, alpha=float(rng.uniform(0.6, 1.4)), beta=float(rng.uniform(-40, 40)))
    mirrored = bool(rng.random() < 0.5)
    if mirrored:
        img = cv2.flip(img, 1)
    if rng.random() < jpeg_p:  # compression artefacts stand in for the H.264 of the demo clip
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(img), mirrored


def cached_inputs(
    sample: Callable[[], tuple[np.ndarray, T]],
    spec: PreprocessSpec,
    n: int,
    dtype: torch.dtype = torch.float16,
    report_every: int = 10,
) -> tuple[torch.Tensor, list[T]]:
    """``n`` network inputs made by the engine's own ``preprocess_batch`` from ``sample()``'s frames, and their targets.

    ``sample()`` returns (uint8 RGB frame, target); the inputs are cached in one ``dtype`` tensor.
    """
    h, w = spec.size
    x = torch.empty((n, 3, h, w), dtype=dtype)
    targets: list[T] = []
    start = time.perf_counter()
    for done in range(0, n, GEN_CHUNK):
        samples = [sample() for _ in range(min(GEN_CHUNK, n - done))]
        # the engine's preprocessing, not a re-implementation
        x[done : done + len(samples)] = preprocess_batch([s[0] for s in samples], spec).to(dtype)
        targets.extend(s[1] for s in samples)
        if (done // GEN_CHUNK) % report_every == report_every - 1 or done + GEN_CHUNK >= n:
            print(f"frames {done + len(samples):5d}/{n}  {time.perf_counter() - start:6.1f}s", flush=True)
    return x, targets


def heldout_scenes(scenes: Scenes) -> Iterator[ShapeScene]:
    """The held-out scenes (seeds ``HELDOUT_SEEDS``, sizes in turn), yielded at each frame to measure."""
    for k, seed in enumerate(HELDOUT_SEEDS):
        w, h = scenes.heldout_sizes[k % len(scenes.heldout_sizes)]
        if scenes.dominant:
            scene = ShapeScene(w, h, seed=seed, dominant=True)
        else:
            scene = ShapeScene(w, h, seed=seed, n_shapes=scenes.heldout_shapes)
        for _ in range(scenes.heldout_frames_per_scene):
            yield scene
            for _ in range(scenes.heldout_frame_stride):
                scene.step()


def heldout_set(scenes: Scenes, truth: Callable[[ShapeScene], T]) -> tuple[list[np.ndarray], list[T]]:
    """Frames of scenes never trained on, some at sizes never trained on, and ``truth`` of each."""
    frames, truths = [], []
    for scene in heldout_scenes(scenes):
        frames.append(scene.render())
        truths.append(truth(scene))
    return frames, truths


def demo_clip_set(seed: int, truth: Callable[[ShapeScene], T], *, dominant: bool) -> tuple[list[np.ndarray], list[T]]:
    """The demo clip's frames after the H.264 round-trip, ground truth (``truth``) from a twin of its scene."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_clip(os.path.join(tmp, "demo.mp4"), **DEMO_CLIP, seed=seed, dominant=dominant)
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # write_clip renders with the default scene arguments, so a twin scene replays its ground truth.
    twin = ShapeScene(DEMO_CLIP["width"], DEMO_CLIP["height"], seed=seed, dominant=dominant)
    truths = []
    for _ in frames:
        truths.append(truth(twin))
        twin.step()
    return frames, truths


# --------------------------------------------------------------------------- engine side


def check_bundle_spec(bundle: Path, spec: PreprocessSpec) -> None:
    """The bundle must ask the engine for exactly the preprocessing the network was trained on."""
    from autotimm_stream.runtime.load import read_meta

    bundle_spec = read_meta(bundle).preprocess_spec()
    if bundle_spec != spec:
        raise RuntimeError(f"bundle preprocessing {bundle_spec} differs from training {spec}")


def export_bundle(ckpt: Path, spec: PreprocessSpec, classes: list[str]) -> Path:
    """Export the checkpoint with the engine's ``export_checkpoint`` (same name, ``.pt``); check its preprocessing."""
    from autotimm_stream.export.checkpoint import export_checkpoint

    bundle = ckpt.with_suffix(".pt")
    export_checkpoint(ckpt, bundle, classes=classes)  # image size: from the checkpoint's DataModule hparams
    check_bundle_spec(bundle, spec)
    return bundle


def engine_predictor(
    path: Path, convert: Callable[[dict[str, Any]], T], batch: int, **post_kwargs: Any
) -> Callable[[Sequence[np.ndarray]], list[T]]:
    """``predict_fn`` through the engine: ``ModelRunner`` (its preprocessing and network) + ``Postprocessor``.

    ``convert`` turns each frame's ``Postprocessor`` result into what the script's evaluation takes.
    """
    from autotimm_stream.postprocess import Postprocessor
    from autotimm_stream.runtime.runner import ModelRunner

    runner = ModelRunner(path, threads=TORCH_THREADS)
    post = Postprocessor(runner.meta, **post_kwargs)

    def predict_fn(frames: Sequence[np.ndarray]) -> list[T]:
        out: list[T] = []
        for i in range(0, len(frames), batch):
            chunk = list(frames[i : i + batch])
            results = post(runner.forward(runner.preprocess(chunk)), [f.shape[:2] for f in chunk])
            out.extend(convert(r) for r in results)
        return out

    return predict_fn


# --------------------------------------------------------------------------- AutoTimm (Lightning) training


class _Indices(torch.utils.data.Dataset):
    """Item ``i`` is ``i``: the batch is built from the cached inputs by the DataLoader's ``collate_fn``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def make_datamodule(
    n: int, collate: Callable[[list[int]], dict[str, Any]], image_size: int, batch_size: int, steps: int, seed: int
):
    """A LightningDataModule over ``n`` cached inputs; ``collate(indices)`` makes the batch ``training_step`` expects.

    Its hparams go into the checkpoint (``datamodule_hyper_parameters``), as an AutoTimm
    DataModule's do, so the checkpoint records its training ``image_size`` and an exporter needs
    no ``--image-size``.
    """
    import pytorch_lightning as pl

    data = _Indices(n)

    class ShapesDataModule(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = batch_size
            self.save_hyperparameters(
                {"image_size": image_size, "batch_size": batch_size, "train_frames": n, "seed": seed}
            )

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            sampler = torch.utils.data.RandomSampler(
                data, replacement=True, num_samples=steps * batch_size, generator=torch.Generator().manual_seed(seed)
            )
            return torch.utils.data.DataLoader(
                data, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=0
            )

    return ShapesDataModule()


def fit(model, datamodule, steps: int, loss_keys: Sequence[str]):
    """Fit ``model`` with a Lightning Trainer on the CPU, logging the mean of ``loss_keys``; returns the trainer."""
    import pytorch_lightning as pl

    class Progress(pl.Callback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.sums: dict[str, float] = {}
            self.n = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            for k in loss_keys:
                if k in trainer.callback_metrics:
                    self.sums[k] = self.sums.get(k, 0.0) + float(trainer.callback_metrics[k])
            self.n += 1
            step = trainer.global_step
            if step % 25 == 0 or step == steps:
                avg = "  ".join(f"{k.split('/')[1]} {v / self.n:.3f}" for k, v in self.sums.items())
                lr = trainer.optimizers[0].param_groups[0]["lr"]
                print(
                    f"step {step:4d}/{steps}  {avg}  lr {lr:.2e}  {time.perf_counter() - self.start:6.1f}s", flush=True
                )
                self.sums, self.n = {}, 0

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        gradient_clip_val=10.0,
        callbacks=[Progress()],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*(num_workers|does not have many workers|val_dataloader|LeafSpec).*"
        )
        trainer.fit(model, datamodule=datamodule)
    return trainer


def train_and_save(
    args: argparse.Namespace,
    spec: PreprocessSpec,
    build_dataset: Callable[[PreprocessSpec, int, int], tuple],
    build_model: Callable[[], Any],
    train: Callable[..., Any],
    name: str,
    lr: float,
):
    """Generate the data, train, save the checkpoint; returns the model and the training facts for the report.

    ``build_dataset(spec, frames, seed)`` returns the cached data, which goes to
    ``train(model, *data, image_size, steps, batch_size, seed)``; ``name`` heads the model's
    one-line description.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    data = build_dataset(spec, args.frames, args.seed)
    data_wall = time.perf_counter() - t0

    model = build_model()
    torch.set_num_threads(TORCH_THREADS)  # seed_everything may touch torch settings; keep the count fixed
    print(f"{name}: {count_params(model) / 1e6:.2f}M parameters, input {spec.size}", flush=True)
    t1 = time.perf_counter()
    trainer = train(model, *data, args.image_size, args.steps, args.batch_size, args.seed)
    fit_wall = time.perf_counter() - t1
    train_cpu = time.process_time() - c0  # all threads: a fairer cost than wall time on a shared machine
    del data

    args.out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(args.out_ckpt, weights_only=True)
    return model, {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_frames": args.frames,
        "lr": lr,
        "data_wall_time_s": round(data_wall, 1),
        "fit_wall_time_s": round(fit_wall, 1),
        "train_wall_time_s": round(data_wall + fit_wall, 1),  # data generation + optimisation
        "train_cpu_time_s": round(train_cpu, 1),
    }


def load_lightning_checkpoint(path: Path, build: Callable[[dict[str, Any]], Any]):
    """The module of a checkpoint ``train_and_save`` wrote, and its training image size (``--evaluate-only``).

    ``build(hyper_parameters)`` makes the module to load the weights into, or exits when the
    checkpoint is not the script's model.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build(ckpt["hyper_parameters"])
    torch.set_num_threads(TORCH_THREADS)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model, int(ckpt["datamodule_hyper_parameters"]["image_size"])


def previous_training(report_path: Path) -> dict[str, Any]:
    """The training facts of the report at ``report_path`` (``--evaluate-only`` keeps them), if there is one."""
    old = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    return {k: old[k] for k in TRAINING_KEYS if k in old}


# --------------------------------------------------------------------------- command line and report


def seed_all(seed: int) -> None:
    """Seed torch and numpy, and pin torch's thread count."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing here uses the global numpy RNG, but third-party code might
    torch.set_num_threads(TORCH_THREADS)


def new_parser(
    doc: str,
    out: str,
    out_default: Path,
    out_help: str,
    *,
    steps: int,
    frames: int,
    batch_size: int,
    image_size: int,
    image_size_help: str = "square network input side",
) -> argparse.ArgumentParser:
    """The parser with the options every script has first: ``out``, ``--steps``, ``--frames``, ``--batch-size``, ``--image-size``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(out, type=Path, default=out_default, help=out_help)
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--frames", type=int, default=frames, help=f"cached training frames (default {frames})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"frames per step (default {batch_size})")
    p.add_argument("--image-size", type=int, default=image_size, help=f"{image_size_help} (default {image_size})")
    return p


def check_lightning_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The bounds of the Lightning scripts' options (``p.error`` exits when one is out of them)."""
    if args.steps < 6 or args.batch_size < 1 or args.frames < 1 or args.seed < 0 or args.image_size < 32:
        p.error("--steps must be >= 6, --frames and --batch-size positive, --seed non-negative, --image-size >= 32")
    if args.image_size % 32:
        p.error("--image-size must be a multiple of 32 (the backbone's deepest stride)")
    return args


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preprocess_facts(spec: PreprocessSpec) -> dict[str, Any]:
    """The report's ``preprocess`` entry."""
    return {
        "resize": spec.resize,
        "interpolation": spec.interpolation,
        "backend": spec.backend,
        "mean": spec.mean,
        "std": spec.std,
    }


def lightning_versions() -> dict[str, str]:
    """The report's ``versions`` entry of the AutoTimm scripts."""
    import autotimm
    import pytorch_lightning as pl
    import timm

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "autotimm": getattr(autotimm, "__version__", "?"),
        "pytorch_lightning": pl.__version__,
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the JSON report and print it."""
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
