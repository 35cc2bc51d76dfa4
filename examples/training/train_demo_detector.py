"""Train the demo detector: a small AutoTimm ``ObjectDetector`` (FCOS) that finds shapes in generated frames.

The engine's detection demo plays a generated clip (``write_clip(..., seed=7, dominant=False)``:
three circles, squares or triangles moving over a textured background, 640x360, H.264). This script
trains an AutoTimm ``ObjectDetector`` (FCOS head, timm backbone built with ``pretrained=False``) to
find and name those shapes, saves a real Lightning checkpoint of it (what an AutoTimm user's
``trainer.save_checkpoint`` writes) and a JSON report (same name, ``.json``) of how well it does on
frames it has never seen:

    python examples/training/train_demo_detector.py [--out-ckpt demo_out/demo_detector.ckpt] [--steps N] [--seed S]

How it works:

- Training frames are rendered by ``ShapeScene`` (1 to 5 shapes) at mixed sizes and aspect ratios
  (320x240 ... 1280x720, square and portrait too), with random brightness/contrast, mirroring and
  JPEG artefacts (a stand-in for the H.264 of the demo clip). The ground truth is each shape's
  tight box, ``Shape.box()``.
- Each frame becomes network input through the engine's own ``preprocess_batch`` with the
  detection letterbox spec (long side to ``--image-size``, centred grey-114 padding, ImageNet
  normalisation), and its boxes go through the same geometry (``plan``): the network trains on
  exactly what the engine feeds it at inference. Resizing is bilinear without antialiasing, as
  AutoTimm's own detection transforms (OpenCV INTER_LINEAR) and so the bundles the engine exports
  from detector checkpoints. The inputs are cached (float16, ~1.2 GB for 3000 frames at 256 px)
  and drawn in random batches of 4.
- Training is plain AutoTimm: ``ObjectDetector.training_step`` (focal + IoU + centerness losses)
  under a Lightning ``Trainer`` on the CPU, AdamW with a one-cycle schedule (peak 4e-3), 1600
  steps. Many small steps beat few large ones here: at the same number of frames seen (6400),
  batches of 16 x 400 steps left circles and squares confused (held-out F1 ~0.83), batches of
  8 x 800 reached ~0.94 and 4 x 1600 ~0.97, each cheaper than the last. A 320 px input was slower
  and no better. Backbones tried at equal steps (mobilenetv3_small_100, lcnet_100, regnetx_002)
  all did worse than timm's tiny ``test_resnet`` (0.73M parameters with FPN 64 and 2-conv heads).
- The checkpoint is written by ``trainer.save_checkpoint(..., weights_only=True)``; a
  LightningDataModule records ``image_size`` in it (``datamodule_hyper_parameters``), as AutoTimm's
  DataModules do, so exporting needs no ``--image-size``. ``compile_model=False``: on the CPU
  torch.compile costs more than it saves here, so the state-dict keys are ``backbone.*`` rather
  than the ``backbone._orig_mod.*`` of a compiled model.
- When ``autotimm_stream.export.checkpoint.export_checkpoint`` is there, the checkpoint is also
  exported to a bundle (same name, ``.pt``), its preprocessing checked against the training one,
  and the bundle evaluated through the engine (``ModelRunner`` + ``Postprocessor``).
- Evaluation (``evaluate``) takes any ``predict_fn(frames) -> [(boxes xyxy in frame pixels, scores,
  labels)]``, so the same code can measure the checkpoint here and an exported bundle through the
  engine. A detection is a true positive when it has the right class and IoU >= 0.5 with a
  not-yet-matched ground-truth box (greedy, best score first); precision and recall are given at
  ``--score-thresh`` and at a few other thresholds. Shapes mostly hidden behind later-drawn shapes
  (visible box fraction < 0.5) are "ignore" objects: neither required nor counted as false
  positives when found. Held-out frames: 30 scenes (seeds 100..129) x 8 frames, some at sizes never
  used in training. The demo clip (seed 7) is never trained on; it is measured separately after its
  H.264 round-trip, ground truth from a twin of its scene. The exit status is 1 below
  ``--min-precision`` or ``--min-recall`` on the held-out frames.

Seeds: held-out scenes use seeds 100..129, the demo clip seed 7, and training scenes
``20_000 + 1_000_000 * S + i``: all disjoint. ``--seed S`` also seeds torch and numpy; torch is
pinned to 2 threads because float reductions, and so the weights, can depend on the thread count.

Cost on 2 CPU cores (measured, default settings; the report records each run's own): ~20 s to
render and cache the frames, ~330 s for 1600 steps (~0.2 s a step), ~15 s to evaluate the
checkpoint and ~20 s to export and evaluate the bundle: about 6 minutes in all (~11 minutes of
CPU time), ~3 GB of memory at peak. The checkpoint is ~3.0 MB, the bundle ~3.1 MB. With the
default seed: held-out precision 0.973 / recall 0.971 and demo clip 0.974 / 0.947 at score 0.3.
Two runs with the same seed on this machine gave identical metrics, to the last digit.

``--evaluate-only`` skips training and re-measures the checkpoint at ``--out-ckpt`` (and
re-exports its bundle), e.g. after a change to the engine's export or post-processing.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from autotimm_stream.runtime.preprocess import PreprocessSpec, plan, preprocess_batch
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
CLASS_NAMES = list(SHAPES)
FPN_CHANNELS = 64
HEAD_NUM_CONVS = 2
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "demo_out" / "demo_detector.ckpt"

# The demo clip's scene (keep in step with autotimm_stream.app.demo): never trained on, only measured.
# Scenes (sizes, shapes, held-out frames: 30 scenes x 8 = 240): common.MULTI_SHAPE_SCENES.
DEMO_SEED = 7
TRAIN_SEED_BASE = 20_000

IMAGE_SIZE = 256
DEFAULT_STEPS = 1600
DEFAULT_FRAMES = 3000
BATCH_SIZE = 4
LR = 4e-3  # peak of the one-cycle schedule
WEIGHT_DECAY = 1e-4
SCORE_THRESH = 0.3  # the score a detection must reach to count (and the bundle's default threshold)
NMS_THRESH = 0.5
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6)
IGNORE_VISIBLE_BELOW = 0.5  # ground truth this hidden by later shapes is optional
LOSS_KEYS = ("train/loss", "train/cls_loss", "train/reg_loss", "train/centerness_loss")  # logged while training

Truth = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4] xyxy, labels [N], ignore [N] (bool)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [M, 4] xyxy, scores [M], labels [M]


def detection_spec(image_size: int) -> PreprocessSpec:
    """What the engine feeds a detector: letterbox to a square input, ImageNet normalisation."""
    # OpenCV, no antialiasing: AutoTimm's detection transforms resize with OpenCV's INTER_LINEAR, and the
    # engine's checkpoint export gives detector bundles that preprocessing (checked after export).
    return PreprocessSpec(
        size=(image_size, image_size), resize="letterbox", interpolation="bilinear", backend="albumentations"
    )


# --------------------------------------------------------------------------- data


def scene_truth(scene: ShapeScene) -> Truth:
    """Boxes and labels of the scene's current frame; shapes mostly covered by later ones are "ignore"."""
    boxes = np.array([s.box() for s in scene.shapes], dtype=np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, scene.width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, scene.height)
    labels = np.array([SHAPES.index(s.kind) for s in scene.shapes], dtype=np.int64)
    ignore = np.zeros(len(boxes), dtype=bool)
    for i in range(len(boxes) - 1):  # shapes are drawn in order: later ones cover earlier ones
        x1, y1, x2, y2 = boxes[i].astype(int)
        if x2 <= x1 or y2 <= y1:
            ignore[i] = True
            continue
        covered = np.zeros((y2 - y1, x2 - x1), dtype=bool)
        for bx1, by1, bx2, by2 in boxes[i + 1 :].astype(int):
            covered[max(by1 - y1, 0) : max(by2 - y1, 0), max(bx1 - x1, 0) : max(bx2 - x1, 0)] = True
        ignore[i] = 1.0 - covered.mean() < IGNORE_VISIBLE_BELOW
    return boxes, labels, ignore


def train_sample(scene: ShapeScene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An augmented frame of ``scene`` (``augment_frame``), its boxes (mirrored with it) and labels."""
    # Train on every shape, even a mostly hidden one: its visible part still says where it is.
    boxes, labels, _ = scene_truth(scene)
    img, mirrored = augment_frame(scene.render(), rng)
    if mirrored:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = img.shape[1] - boxes[:, [2, 0]]
    return img, boxes, labels


def to_input_boxes(boxes: np.ndarray, h: int, w: int, spec: PreprocessSpec) -> np.ndarray:
    """Frame-pixel boxes -> network-input pixels, through the engine's letterbox geometry."""
    geo = plan(h, w, spec)
    (sy, sx), (pt, pl) = geo.scale, geo.pad
    return boxes * np.array([sx, sy, sx, sy], dtype=np.float32) + np.array([pl, pt, pl, pt], dtype=np.float32)


def to_frame_boxes(boxes: np.ndarray, h: int, w: int, spec: PreprocessSpec) -> np.ndarray:
    """Network-input boxes -> frame pixels (the inverse of ``to_input_boxes``), clipped to the frame."""
    geo = plan(h, w, spec)
    (sy, sx), (pt, pl) = geo.scale, geo.pad
    out = (boxes - np.array([pl, pt, pl, pt], dtype=np.float32)) / np.array([sx, sy, sx, sy], dtype=np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def build_dataset(
    spec: PreprocessSpec, n: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``n`` cached network inputs (float16), made by the engine's ``preprocess_batch``, and their targets."""
    stream = ScenePool(
        np.random.default_rng(seed), TRAIN_SEED_BASE + TRAIN_SEED_STRIDE * seed, MULTI_SHAPE_SCENES, DEMO_SEED
    )

    def sample() -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        img, boxes, labels = stream.sample(train_sample)
        boxes = to_input_boxes(boxes, img.shape[0], img.shape[1], spec)
        return img, (torch.from_numpy(boxes), torch.from_numpy(labels))

    x, targets = cached_inputs(sample, spec, n)
    all_boxes = [boxes for boxes, _ in targets]
    all_labels = [labels for _, labels in targets]
    counts = torch.bincount(torch.cat(all_labels), minlength=len(SHAPES)).tolist()
    print(f"{stream.scenes_used} training scenes; objects per class {counts}", flush=True)
    return x, all_boxes, all_labels


# --------------------------------------------------------------------------- model and training


def build_model(seed: int, steps: int):
    from autotimm import FeatureBackboneConfig, ObjectDetector

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        return ObjectDetector(
            backbone=FeatureBackboneConfig(model_name=BACKBONE, pretrained=False),
            num_classes=len(CLASS_NAMES),
            detection_arch="fcos",
            metrics=[],  # the default mAP metric needs pycocotools; evaluation is done here
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            scheduler="onecycle",
            scheduler_kwargs={"max_lr": LR, "total_steps": steps, "pct_start": max(0.1, 3 / steps)},
            fpn_channels=FPN_CHANNELS,
            head_num_convs=HEAD_NUM_CONVS,
            score_thresh=SCORE_THRESH,
            nms_thresh=NMS_THRESH,
            compile_model=False,
            seed=seed,
            deterministic=True,
        )


def train(model, x, boxes, labels, image_size: int, steps: int, batch_size: int, seed: int):
    """Fit ``model`` with a Lightning Trainer; returns the trainer (to save the checkpoint)."""

    def collate(idx: list[int]) -> dict[str, object]:
        """The batch ``ObjectDetector.training_step`` expects: images, and per image boxes (xyxy, input pixels) and labels."""
        return {
            "image": x[torch.tensor(idx)].float(),
            "boxes": [boxes[i] for i in idx],
            "labels": [labels[i] for i in idx],
        }

    return fit(model, make_datamodule(len(x), collate, image_size, batch_size, steps, seed), steps, LOSS_KEYS)


def load_checkpoint(path: Path):
    """The detector of a checkpoint this script wrote, and its training image size (``--evaluate-only``)."""

    def build(hp: dict):
        if hp.get("backbone") != BACKBONE or hp.get("fpn_channels") != FPN_CHANNELS:
            raise SystemExit(
                f"{path} is not this script's detector ({hp.get('backbone')}, fpn {hp.get('fpn_channels')})"
            )
        return build_model(int(hp.get("seed") or 0), int(hp["scheduler_kwargs"]["total_steps"]))

    return load_lightning_checkpoint(path, build)


def checkpoint_predictor(model, spec: PreprocessSpec, batch: int = 32) -> Callable[[Sequence[np.ndarray]], list]:
    """``predict_fn`` for ``evaluate``: the trained module, the engine's preprocessing, FCOS decoding."""
    from autotimm.tasks._fcos_targets import decode_fcos_detections

    model.eval()  # AutoTimm's predict() does not switch to eval: BatchNorm must use its running stats

    def predict_fn(frames: Sequence[np.ndarray]) -> list[Detections]:
        out: list[Detections] = []
        for i in range(0, len(frames), batch):
            chunk = list(frames[i : i + batch])
            x = preprocess_batch(chunk, spec)
            with torch.inference_mode():
                cls, reg, ctr = model(x)
                dets = decode_fcos_detections(
                    cls, reg, ctr, model.strides, model.num_classes, tuple(x.shape[-2:]),
                    0.05, model.nms_thresh, model.max_detections_per_image,
                )  # fmt: skip
            for img, d in zip(chunk, dets, strict=True):
                b = to_frame_boxes(d["boxes"].numpy(), img.shape[0], img.shape[1], spec)
                out.append((b, d["scores"].numpy(), d["labels"].numpy()))
        return out

    return predict_fn


# --------------------------------------------------------------------------- evaluation


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_frame(det: Detections, truth: Truth, score_thresh: float, iou_thresh: float) -> tuple[int, int, int]:
    """(true positives, false positives, required ground truth) for one frame.

    Greedy, best score first: a detection matches the unmatched ground-truth box of its class
    with the highest IoU (>= ``iou_thresh``). Matching an "ignore" box is neither a hit nor a
    false positive; ignore boxes are not required.
    """
    boxes, scores, labels = det
    gt_boxes, gt_labels, ignore = truth
    keep = scores >= score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes[order], gt_boxes) if len(gt_boxes) and len(boxes) else np.zeros((len(boxes), len(gt_boxes)))
    used = np.zeros(len(gt_boxes), dtype=bool)
    tp = fp = 0
    for row, d in enumerate(order):
        cand = np.where((gt_labels == labels[d]) & ~used & (iou[row] >= iou_thresh))[0]
        if len(cand) == 0:
            fp += 1
            continue
        # prefer a required box over an ignore box, then the higher IoU
        g = cand[np.lexsort((-iou[row, cand], ignore[cand]))[0]]
        used[g] = True
        tp += int(not ignore[g])
    return tp, fp, int((~ignore).sum())


def evaluate(
    predict_fn: Callable[[Sequence[np.ndarray]], list[Detections]],
    frames: Sequence[np.ndarray],
    truths: Sequence[Truth],
    score_thresh: float = SCORE_THRESH,
    iou_thresh: float = 0.5,
    sweep: Sequence[float] = SWEEP,
) -> dict[str, object]:
    """Precision and recall at IoU ``iou_thresh`` of ``predict_fn`` on ``frames``.

    ``predict_fn`` maps a list of uint8 RGB frames to one ``(boxes xyxy in frame pixels, scores,
    labels)`` per frame (numpy). It may return detections below ``score_thresh``: they are dropped
    here, so one prediction pass serves the whole ``sweep`` of thresholds.
    """
    dets = predict_fn(frames)
    if len(dets) != len(frames):
        raise ValueError(f"predict_fn returned {len(dets)} results for {len(frames)} frames")

    def at(t: float, only_class: int | None = None, any_class: bool = False) -> dict[str, float | int]:
        tp = fp = req = 0
        for (boxes, scores, labels), (gt_boxes, gt_labels, ignore) in zip(dets, truths, strict=True):
            if only_class is not None:
                d, g = labels == only_class, gt_labels == only_class
                boxes, scores, labels = boxes[d], scores[d], labels[d]
                gt_boxes, gt_labels, ignore = gt_boxes[g], gt_labels[g], ignore[g]
            if any_class:
                labels, gt_labels = np.zeros_like(labels), np.zeros_like(gt_labels)
            hits, false, required = match_frame((boxes, scores, labels), (gt_boxes, gt_labels, ignore), t, iou_thresh)
            tp, fp, req = tp + hits, fp + false, req + required
        return {
            "precision": round(tp / max(tp + fp, 1), 4),
            "recall": round(tp / max(req, 1), 4),
            "true_positives": tp,
            "false_positives": fp,
            "missed": req - tp,
        }

    def pr(r: dict[str, float | int]) -> dict[str, float | int]:
        return {"precision": r["precision"], "recall": r["recall"]}

    return {
        "frames": len(frames),
        "objects": int(sum((~g[2]).sum() for g in truths)),
        "ignored_objects": int(sum(g[2].sum() for g in truths)),
        "score_thresh": score_thresh,
        "iou_thresh": iou_thresh,
        **at(score_thresh),
        "per_class": {name: pr(at(score_thresh, only_class=k)) for k, name in enumerate(CLASS_NAMES)},
        # Boxes alone, whatever their class: separates localisation from naming errors.
        "class_agnostic": pr(at(score_thresh, any_class=True)),
        "by_score_thresh": {str(t): pr(at(t)) for t in sweep},
    }


def bundle_predictor(path: Path) -> Callable[[Sequence[np.ndarray]], list[Detections]]:
    """``predict_fn`` through the engine: ``ModelRunner`` (its preprocessing and network) + ``Postprocessor``."""

    def detections(res: dict) -> Detections:
        dets = res["detections"]
        return (
            np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4),
            np.array([d.score for d in dets], dtype=np.float32),
            np.array([d.class_id for d in dets], dtype=np.int64),
        )

    return engine_predictor(path, detections, batch=32, threshold=0.05)  # low: evaluate() applies the thresholds


def export_and_evaluate(
    ckpt: Path, spec: PreprocessSpec, sets: dict[str, tuple[list, list]], score_thresh: float
) -> dict[str, object]:
    """Export the checkpoint with the engine's ``export_checkpoint`` and evaluate the bundle through the engine."""
    try:  # an engine without checkpoint export: the checkpoint alone
        from autotimm_stream.export.checkpoint import export_checkpoint  # noqa: F401
        from autotimm_stream.runtime.load import read_meta  # noqa: F401
    except ImportError as exc:
        return {"bundle": f"skipped: {exc}"}
    try:
        bundle = export_bundle(ckpt, spec, CLASS_NAMES)
        predict_fn = bundle_predictor(bundle)
        res: dict[str, object] = {"bundle": str(bundle), "bundle_bytes": bundle.stat().st_size}
        for name, (frames, truths) in sets.items():
            res[f"bundle_{name}"] = evaluate(predict_fn, frames, truths, score_thresh=score_thresh)
        return res
    except Exception as exc:  # the checkpoint stands on its own: report the engine-side failure, do not lose the run
        print(f"bundle export/evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {"bundle": f"failed: {type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = new_parser(
        __doc__,
        "--out-ckpt",
        DEFAULT_OUT,
        "checkpoint to write (a .json report goes next to it)",
        steps=DEFAULT_STEPS,
        frames=DEFAULT_FRAMES,
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
    )
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the choice of training scenes")
    p.add_argument(
        "--score-thresh",
        type=float,
        default=SCORE_THRESH,
        help=f"score a detection must reach (default {SCORE_THRESH})",
    )
    p.add_argument("--min-precision", type=float, default=0.9, help="exit with status 1 below this held-out precision")
    p.add_argument("--min-recall", type=float, default=0.9, help="exit with status 1 below this held-out recall")
    p.add_argument("--no-bundle", action="store_true", help="do not try to export and evaluate a bundle")
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the checkpoint at --out-ckpt (and export its bundle) again",
    )
    return check_lightning_args(p, p.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed_all(args.seed)
    report_path = args.out_ckpt.with_suffix(".json")

    if args.evaluate_only:
        model, args.image_size = load_checkpoint(args.out_ckpt)
        spec = detection_spec(args.image_size)
        training = previous_training(report_path)
    else:
        spec = detection_spec(args.image_size)
        model, training = train_and_save(
            args, spec, build_dataset, lambda: build_model(args.seed, args.steps), train, f"{BACKBONE} FCOS", LR
        )

    t2 = time.perf_counter()
    predict_fn = checkpoint_predictor(model, spec)
    sets = {
        "heldout": heldout_set(MULTI_SHAPE_SCENES, scene_truth),
        "demo_clip": demo_clip_set(DEMO_SEED, scene_truth, dominant=False),
    }
    results = {name: evaluate(predict_fn, f, g, score_thresh=args.score_thresh) for name, (f, g) in sets.items()}
    eval_wall = time.perf_counter() - t2
    bundle = {} if args.no_bundle else export_and_evaluate(args.out_ckpt, spec, sets, args.score_thresh)

    report = {
        "checkpoint": str(args.out_ckpt),
        "checkpoint_bytes": args.out_ckpt.stat().st_size,
        "task": "detection",
        "detection_arch": "fcos",
        "backbone": BACKBONE,
        "fpn_channels": FPN_CHANNELS,
        "head_num_convs": HEAD_NUM_CONVS,
        "parameters": count_params(model),
        "class_names": CLASS_NAMES,
        "image_size": args.image_size,
        "preprocess": preprocess_facts(spec),
        **training,
        "eval_wall_time_s": round(eval_wall, 1),
        "torch_threads": TORCH_THREADS,
        "heldout_seeds": [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop - 1],
        "demo_seed": DEMO_SEED,
        "heldout": results["heldout"],
        "demo_clip": results["demo_clip"],
        **bundle,
        "versions": lightning_versions(),
    }
    write_report(report_path, report)
    h, d = results["heldout"], results["demo_clip"]
    print(
        f"held-out: precision {h['precision']} recall {h['recall']} ({h['frames']} frames, {h['objects']} objects); "
        f"demo clip: precision {d['precision']} recall {d['recall']} ({d['frames']} frames) at score >= {args.score_thresh}"
    )
    for name in ("heldout", "demo_clip"):
        r = report.get(f"bundle_{name}")
        if isinstance(r, dict):
            print(f"bundle through the engine, {name}: precision {r['precision']} recall {r['recall']}")
    print(f"wrote {args.out_ckpt} ({report['checkpoint_bytes'] / 1e6:.2f} MB) and {report_path}")

    failed = []
    if h["precision"] < args.min_precision:  # type: ignore[operator]
        failed.append(f"precision {h['precision']} < {args.min_precision}")
    if h["recall"] < args.min_recall:  # type: ignore[operator]
        failed.append(f"recall {h['recall']} < {args.min_recall}")
    if failed:
        print("held-out " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
