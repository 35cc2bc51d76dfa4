"""Train the demo segmentor: a small AutoTimm ``SemanticSegmentor`` that paints shapes in generated frames.

The engine's segmentation demo plays a generated clip (``write_clip(..., seed=13, dominant=False)``:
three shapes, circle, square and triangle, moving over a textured background, 640x360, H.264).
This script trains an AutoTimm ``SemanticSegmentor`` (DeepLabV3+ head, timm backbone built with
``pretrained=False``) to label every pixel background, circle, square or triangle, saves a real
Lightning checkpoint of it (what an AutoTimm user's ``trainer.save_checkpoint`` writes), exports
it with the engine's ``export_checkpoint`` to a bundle (same name, ``.pt``) and writes a JSON
report (same name, ``.json``) of how well the bundle does, through the engine, on frames it has
never seen:

    python examples/training/train_demo_segmentor.py [--out-ckpt autotimm_stream/assets/demo_segmentor.ckpt] [--steps N]

How it works:

- Training frames are rendered by ``ShapeScene`` (1 to 5 shapes) at mixed sizes and aspect ratios
  (320x240 ... 1280x720, square and portrait too), with random brightness/contrast, mirroring and
  JPEG artefacts (a stand-in for the H.264 of the demo clip). The ground truth is the scene's
  class map, ``ShapeScene.render_mask()`` (a later shape hides an earlier one, as drawn).
- Each frame becomes network input through the engine's own ``preprocess_batch`` with the
  segmentation spec an AutoTimm segmentor checkpoint exports to (squash resize to a square
  ``--image-size``, bilinear without antialiasing as OpenCV's INTER_LINEAR, ImageNet
  normalisation): the network trains on exactly what the engine feeds it. The class map is
  squashed to the same size with centre-aligned nearest sampling (``INTER_NEAREST_EXACT``).
  Inputs are cached (float16, ~0.8 GB for 2000 frames at 256 px) and drawn in random batches.
- Training is plain AutoTimm: ``SemanticSegmentor.training_step`` (its default "combined" loss:
  cross-entropy + Dice, logits upsampled to the mask) under a Lightning ``Trainer`` on the CPU,
  AdamW with a one-cycle schedule. The head is DeepLabV3+: logits at 1/4 of the input, where
  AutoTimm's other head, FCN, gives 1/32 (8x8 cells at 256 px, far too coarse for shapes ~10% of
  the frame). DeepLabV3+'s decoder has a fixed 256 channels at 1/4 resolution, which is most of
  the cost (~0.25 s a frame for a training step at 256 px on 2 cores, the backbone is a
  fraction of it), so the input side, not the backbone, sets the price.
- 128 px is enough: at logits of 32x32 the head's resolution is not what limits it (the held-out
  ground truth, area-averaged onto that grid and upsampled as the engine does, scores mIoU 0.92;
  0.97 at 256 px); learning to tell the shapes apart is, and that takes many small steps. Tried
  on 80 held-out frames, the checkpoint measured, ~3-6 minutes each: 256 px, 200 steps of 4:
  0.46 (shapes found, classes confused); 128 px: 300 steps of 8 0.72, 600 of 4 0.85, 1200 of 2
  0.83; 160 px, 600 of 4: 0.82; at 128 px x 600 x 4 a peak LR of 2e-3 gave 0.83, 8e-3 0.69;
  other backbones within the 15 MB bundle budget, same recipe: ``tinynet_e`` 0.74,
  ``mnasnet_small`` 0.65 (``test_resnet`` 0.85, as for the demo detector). 1000 steps of 4 at
  128 px is the default.
- Evaluation is through the engine: the exported bundle runs in ``ModelRunner`` and its logits
  go through ``Postprocessor`` (bilinear upsampling to the frame, argmax), as in a real run; the
  class maps are compared with ``render_mask()`` at the frame's own resolution. IoU per class
  is accumulated over all pixels of a set (intersection and union summed over frames), mIoU is
  their mean over the 4 classes, background included. Held-out frames: 30 scenes (seeds
  100..129) x 8 frames at 8 sizes, some never used in training; the demo clip (seed 13, never
  trained on) is measured after its H.264 round-trip, ground truth from a twin of its scene.
  The checkpoint itself (AutoTimm's module, the same preprocessing and upsampling) is measured on
  the held-out frames too: the two must agree. The exit status is 1 below ``--min-miou``.

Seeds: held-out scenes use seeds 100..129, the demo clip seed 13, training scenes
``40_000 + 1_000_000 * S + i``: all disjoint. ``--seed S`` also seeds torch and numpy; torch is
pinned to 2 threads because float reductions, and so the weights, can depend on the thread count.

Cost on 2 CPU cores, default settings: ~20 s to render and cache the frames, ~0.35 s a step
(~350 s for 1000 steps) when nothing else runs on the machine, ~40 s to evaluate the checkpoint,
export the bundle and evaluate it: about 7 minutes in all (a 900-step run took 6 min 16 s end to
end), ~1.6 GB of memory. The shipped run's report says 1006 s for the fit: another job shared
the two cores for most of it. The checkpoint is ~10.9 MB (2.71M parameters, 2.34M of them the
DeepLabV3+ head), the bundle ~11.1 MB. With the default seed: held-out mIoU 0.901 and demo clip
0.894 through the engine. A rerun with the same seed logged the same losses (to the last printed
digit) for as long as it ran (150 steps).

``--evaluate-only`` skips training and re-measures (and re-exports) the checkpoint at ``--out-ckpt``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from autotimm_stream.runtime.preprocess import PreprocessSpec, preprocess_batch
from autotimm_stream.synthetic import SHAPES, ShapeScene
from common import (  # this folder's shared helpers: run as a script, it is sys.path[0]
    HELDOUT_SEEDS,
    MULTI_SHAPE_SCENES,
    TORCH_THREADS,
    TRAIN_SEED_STRIDE,
    ScenePool,
    augment_frame,
    cached_inputs,
    check_lightning_args,
    count_params,
    demo_clip_set,
    engine_predictor,
    export_bundle,
    fit,
    heldout_set,
    lightning_versions,
    load_lightning_checkpoint,
    make_datamodule,
    new_parser,
    preprocess_facts,
    previous_training,
    seed_all,
    train_and_save,
    write_report,
)

BACKBONE = "test_resnet"
HEAD = "deeplabv3plus"
CLASS_NAMES = ["background", *SHAPES]  # class id = 1 + SHAPES.index(kind), as ShapeScene.render_mask()
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "autotimm_stream" / "assets" / "demo_segmentor.ckpt"

# The demo clip's scene (keep in step with autotimm_stream.app.demo): never trained on, only measured.
# Scenes (sizes, shapes, held-out frames: 30 scenes x 8 = 240): common.MULTI_SHAPE_SCENES.
DEMO_SEED = 13
TRAIN_SEED_BASE = 40_000

IMAGE_SIZE = 128
DEFAULT_STEPS = 1000
DEFAULT_FRAMES = 4000
BATCH_SIZE = 4
LR = 4e-3  # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4


def segmentation_spec(image_size: int) -> PreprocessSpec:
    """What the engine feeds an AutoTimm segmentor: squash to a square input, ImageNet normalisation."""
    # OpenCV, no antialiasing: AutoTimm's segmentation transforms resize with OpenCV's INTER_LINEAR, and the
    # engine's checkpoint export gives segmentor bundles that preprocessing (checked after export).
    return PreprocessSpec(
        size=(image_size, image_size), resize="squash", interpolation="bilinear", backend="albumentations"
    )


# --------------------------------------------------------------------------- data


def train_sample(scene: ShapeScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An augmented frame of ``scene`` (``augment_frame``) and its class map (mirrored with it)."""
    img, mask = scene.render(), scene.render_mask()
    img, mirrored = augment_frame(img, rng)
    if mirrored:
        mask = cv2.flip(mask, 1)
    return img, np.ascontiguousarray(mask)


def to_input_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A frame's class map squashed to the network input, nearest with pixel centres aligned."""
    h, w = spec.size
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def build_dataset(spec: PreprocessSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` cached network inputs (float16), made by the engine's ``preprocess_batch``, and their class maps."""
    stream = ScenePool(
        np.random.default_rng(seed), TRAIN_SEED_BASE + TRAIN_SEED_STRIDE * seed, MULTI_SHAPE_SCENES, DEMO_SEED
    )

    def sample() -> tuple[np.ndarray, np.ndarray]:
        img, mask = stream.sample(train_sample)
        return img, to_input_mask(mask, spec)

    x, masks = cached_inputs(sample, spec, n)
    y = torch.from_numpy(np.stack(masks))
    share = torch.bincount(y.flatten().long(), minlength=len(CLASS_NAMES)).double()
    share = (share / share.sum()).tolist()
    print(
        f"{stream.scenes_used} training scenes; pixel share "
        + ", ".join(f"{c} {s:.3f}" for c, s in zip(CLASS_NAMES, share)),
        flush=True,
    )
    return x, y


# --------------------------------------------------------------------------- model and training


def build_model(seed: int, steps: int, lr: float = LR):
    from autotimm import FeatureBackboneConfig, SemanticSegmentor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        return SemanticSegmentor(
            backbone=FeatureBackboneConfig(model_name=BACKBONE, pretrained=False),
            num_classes=len(CLASS_NAMES),
            head_type=HEAD,
            loss_type="combined",  # AutoTimm's default: cross-entropy + Dice
            metrics=None,  # evaluation is done here, through the engine
            lr=lr,
            weight_decay=WEIGHT_DECAY,
            scheduler="onecycle",
            scheduler_kwargs={"max_lr": lr, "total_steps": steps, "pct_start": max(0.1, 3 / steps)},
            compile_model=False,
            seed=seed,
            deterministic=True,
        )


def train(model, x, y, image_size: int, steps: int, batch_size: int, seed: int):
    """Fit ``model`` with a Lightning Trainer; returns the trainer (to save the checkpoint)."""

    def collate(idx: list[int]) -> dict[str, torch.Tensor]:
        """The batch ``SemanticSegmentor.training_step`` expects: images [B, 3, H, W], masks [B, H, W] (long)."""
        i = torch.tensor(idx)
        return {"image": x[i].float(), "mask": y[i].long()}

    return fit(model, make_datamodule(len(x), collate, image_size, batch_size, steps, seed), steps, ["train/loss"])


def load_checkpoint(path: Path):
    """The segmentor of a checkpoint this script wrote, and its training image size (``--evaluate-only``)."""

    def build(hp: dict):
        if hp.get("backbone") != BACKBONE or hp.get("head_type") != HEAD:
            raise SystemExit(f"{path} is not this script's segmentor ({hp.get('backbone')}, {hp.get('head_type')})")
        return build_model(int(hp.get("seed") or 0), int(hp["scheduler_kwargs"]["total_steps"]), float(hp["lr"]))

    return load_lightning_checkpoint(path, build)


# --------------------------------------------------------------------------- evaluation

PredictFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # uint8 RGB frames -> class maps [H, W]


def checkpoint_predictor(model, spec: PreprocessSpec, batch: int = 16) -> PredictFn:
    """``predict_fn`` of the trained module: the engine's preprocessing, bilinear upsampling, argmax."""
    import torch.nn.functional as F

    model.eval()  # AutoTimm's predict() does not switch to eval: BatchNorm must use its running stats

    def predict_fn(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i in range(0, len(frames), batch):
            chunk = list(frames[i : i + batch])
            with torch.inference_mode():
                logits = model(preprocess_batch(chunk, spec))
                for img, lg in zip(chunk, logits, strict=True):
                    up = F.interpolate(lg[None], size=img.shape[:2], mode="bilinear", align_corners=False)
                    out.append(up[0].argmax(0).to(torch.uint8).numpy())
        return out

    return predict_fn


def bundle_predictor(path: Path) -> PredictFn:
    """``predict_fn`` through the engine: ``ModelRunner`` (its preprocessing and network) + ``Postprocessor``."""
    return engine_predictor(path, lambda res: res["mask"], batch=16)


def confusion(pred: np.ndarray, truth: np.ndarray, n: int = len(CLASS_NAMES)) -> np.ndarray:
    """Pixel confusion matrix [truth, predicted] of two class maps."""
    if pred.shape != truth.shape:
        raise ValueError(f"predicted mask {pred.shape} vs ground truth {truth.shape}")
    return np.bincount(truth.astype(np.int64).ravel() * n + pred.ravel(), minlength=n * n).reshape(n, n)


def iou_report(cm: np.ndarray) -> dict[str, object]:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix.

    A class absent from both the truth and the prediction has no IoU (``None``) and is left out
    of the mean; over the held-out set and the demo clip every class is present, so their mIoU
    is the mean over all 4 classes, background included.
    """
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    return {
        "miou": round(float(iou[present].mean()), 4) if present.any() else None,
        "iou": {name: (round(float(v), 4) if ok else None) for name, v, ok in zip(CLASS_NAMES, iou, present)},
        "pixel_accuracy": round(float(tp.sum() / max(cm.sum(), 1)), 4),
    }


def evaluate(predict_fn: PredictFn, frames: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, object]:
    """IoU of ``predict_fn``'s class maps against ``truths``, over the whole set and per frame size."""
    preds = predict_fn(frames)
    if len(preds) != len(frames):
        raise ValueError(f"predict_fn returned {len(preds)} masks for {len(frames)} frames")
    total = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    by_size: dict[str, np.ndarray] = {}
    per_frame = []
    for p, t in zip(preds, truths, strict=True):
        cm = confusion(p, t)
        total += cm
        key = f"{t.shape[1]}x{t.shape[0]}"
        by_size[key] = by_size.get(key, 0) + cm
        per_frame.append(iou_report(cm)["miou"])
    return {
        "frames": len(frames),
        **iou_report(total),
        # the worst frames, by mIoU over the classes present in the truth or the prediction
        "frame_miou_min": round(min(per_frame), 4),
        "frame_miou_p05": round(float(np.percentile(per_frame, 5)), 4),
        # per frame size (a class absent from a size's frames and never predicted there has no IoU)
        "by_size": {
            k: {"miou": r["miou"], "iou": r["iou"]} for k, r in ((k, iou_report(v)) for k, v in by_size.items())
        },
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(
        __doc__,
        "--out-ckpt",
        DEFAULT_OUT,
        "checkpoint to write (the bundle .pt and the .json report go next to it)",
        steps=DEFAULT_STEPS,
        frames=DEFAULT_FRAMES,
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
    )
    p.add_argument("--lr", type=float, default=LR, help=f"peak learning rate of the one-cycle schedule (default {LR})")
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the choice of training scenes")
    p.add_argument("--min-miou", type=float, default=0.8, help="exit with status 1 below this held-out mIoU")
    p.add_argument("--no-demo-clip", action="store_true", help="do not measure the demo clip (faster)")
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: export and evaluate the checkpoint at --out-ckpt again",
    )
    return check_lightning_args(p, p.parse_args(argv))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed_all(args.seed)
    report_path = args.out_ckpt.with_suffix(".json")

    if args.evaluate_only:
        model, args.image_size = load_checkpoint(args.out_ckpt)
        spec = segmentation_spec(args.image_size)
        training = previous_training(report_path)
    else:
        spec = segmentation_spec(args.image_size)
        model, training = train_and_save(
            args,
            spec,
            build_dataset,
            lambda: build_model(args.seed, args.steps, args.lr),
            train,
            f"{BACKBONE} {HEAD}",
            args.lr,
        )

    t2 = time.perf_counter()
    heldout = heldout_set(MULTI_SHAPE_SCENES, ShapeScene.render_mask)
    ckpt_heldout = evaluate(checkpoint_predictor(model, spec), *heldout)
    bundle = export_bundle(args.out_ckpt, spec, CLASS_NAMES)
    engine = bundle_predictor(bundle)
    results = {"heldout": evaluate(engine, *heldout)}
    if not args.no_demo_clip:
        results["demo_clip"] = evaluate(engine, *demo_clip_set(DEMO_SEED, ShapeScene.render_mask, dominant=False))
    eval_wall = time.perf_counter() - t2

    report = {
        "checkpoint": _display(args.out_ckpt),
        "checkpoint_bytes": args.out_ckpt.stat().st_size,
        "bundle": _display(bundle),
        "bundle_bytes": bundle.stat().st_size,
        "task": "segmentation",
        "head_type": HEAD,
        "backbone": BACKBONE,
        "loss_type": "combined",
        "parameters": count_params(model),
        "class_names": CLASS_NAMES,
        "image_size": args.image_size,
        "preprocess": preprocess_facts(spec),
        **training,
        "eval_wall_time_s": round(eval_wall, 1),
        "torch_threads": TORCH_THREADS,
        "heldout_seeds": [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop - 1],
        "demo_seed": DEMO_SEED,
        "metric": "IoU per class over all pixels of the set (intersection and union summed over frames), "
        "at each frame's own resolution; mIoU = mean over the 4 classes, background included",
        # Through the engine: the bundle in ModelRunner, its logits through Postprocessor.
        **results,
        "checkpoint_heldout": {k: ckpt_heldout[k] for k in ("miou", "iou", "pixel_accuracy")},
        "versions": lightning_versions(),
    }
    write_report(report_path, report)
    for name, r in results.items():
        ious = ", ".join(f"{k} {v}" for k, v in r["iou"].items())  # type: ignore[union-attr]
        print(f"through the engine, {name} ({r['frames']} frames): mIoU {r['miou']} ({ious})")
    print(f"checkpoint, heldout: mIoU {ckpt_heldout['miou']}")
    print(
        f"wrote {args.out_ckpt} ({report['checkpoint_bytes'] / 1e6:.2f} MB), {bundle} "
        f"({report['bundle_bytes'] / 1e6:.2f} MB) and {report_path}"
    )
    if results["heldout"]["miou"] < args.min_miou:  # type: ignore[operator]
        print(f"held-out mIoU {results['heldout']['miou']} < {args.min_miou}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
