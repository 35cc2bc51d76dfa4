"""Dynamic int8 quantization for the CPU, with the accuracy change measured and stored.

What gets quantized depends on the bundle format:

- ``onnx``: onnxruntime's ``quantize_dynamic`` (int8 weights, uint8 activations quantized per
  tensor at run time): convolutions become ``ConvInteger``, matrix products ``MatMulInteger``.
  The file shrinks ~3.5x, but onnxruntime has no fast kernel for ``ConvInteger`` on the CPU: a
  convnet runs several times *slower* than in fp32 (the measured latencies are stored).
- ``torchscript`` / ``export``: ``nn.Linear`` layers only, as ``torch.ao``'s ``quantize_dynamic``
  would do. ``torch.ao.quantization`` is deprecated in torch 2.14 and its packed-weight modules
  cannot be ``torch.export``-ed, so :class:`Int8DynamicLinear` does the same in plain tensor ops
  (``torch._int_mm``), for both formats. For a convnet that is the classifier's head alone;
  detectors and segmentors without Linear layers are refused (use ``onnx``).

Either way the fp32 and the int8 bundle are both run on the same fixed calibration inputs
(:func:`calibration_inputs`: generated shape scenes, preprocessed as the bundle says) and the
differences, raw and task-level, go into ``meta.quantization``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from ..runtime.bundle import BundleMeta
from ..runtime.load import FORMATS, Network
from ..runtime.preprocess import preprocess_batch
from ..tasks import Task
from .save import replace_meta

__all__ = [
    "Int8DynamicLinear",
    "calibration_frames",
    "calibration_inputs",
    "compare_outputs",
    "export_quantized",
    "quantize_linear",
]

_logger = logging.getLogger(__name__)

MODES = ("int8",)
CALIBRATION_SAMPLES = 16
CALIBRATION_SEED = 0
_FRAME_SIZE = (480, 360)  # (width, height) of the generated calibration frames
_BATCH = 4  # calibration inputs run in batches of this many
_TIMED_RUNS = 5
# ONNX integer ops that quantize_dynamic emits, and the float ops they stand for.
_ONNX_INTEGER_OPS = ("ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeLSTM")
_ONNX_FLOAT_OPS = ("Conv", "MatMul", "Gemm", "Attention", "LSTM")


# -- calibration inputs ------------------------------------------------------------------------
def calibration_frames(
    meta: BundleMeta, samples: int = CALIBRATION_SAMPLES, seed: int = CALIBRATION_SEED
) -> list[np.ndarray]:
    """``samples`` deterministic uint8 RGB frames: generated shape scenes (one big shape for classifiers)."""
    from ..synthetic import ShapeScene

    classify = meta.task.classifies
    scene = ShapeScene(*_FRAME_SIZE, seed=seed, dominant=classify, switch_every=3)
    frames = []
    for _ in range(samples):
        frames.append(scene.render().copy())
        for _ in range(7):
            scene.step()
    return frames


def calibration_inputs(
    meta: BundleMeta, samples: int = CALIBRATION_SAMPLES, seed: int = CALIBRATION_SEED
) -> torch.Tensor:
    """The calibration frames, preprocessed as ``meta`` says: ``[samples, 3, H, W]`` float32 on the CPU."""
    return preprocess_batch(calibration_frames(meta, samples, seed), meta.preprocess_spec())


def _run(network: Network, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    chunks = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], _BATCH):
            chunks.append(tuple(o.float().cpu() for o in network(x[i : i + _BATCH])))
    return tuple(torch.cat(parts) for parts in zip(*chunks))


def _latency_ms(network: Network, x: torch.Tensor) -> float:
    """Median time of one batch-1 forward, after one warm-up."""
    one = x[:1]
    times = []
    with torch.inference_mode():
        network(one)
        for _ in range(_TIMED_RUNS):
            t = time.perf_counter()
            network(one)
            times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


# -- comparing outputs -------------------------------------------------------------------------
def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix; two zero-area boxes (IoU 0/0) count as a match when they are the same box."""
    from torchvision.ops import box_iou

    iou = box_iou(a, b)
    same = torch.isclose(a[:, None, :], b[None, :, :], atol=1e-2, rtol=0).all(-1)
    return torch.where(torch.isnan(iou), same.to(iou.dtype), iou)


def _detection_agreement(
    meta: BundleMeta, ref: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    from ..postprocess.detection import decode_dense

    levels = len(meta.decode["strides"])
    dec = meta.decode

    def decode(o: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ctr = list(o[2 * levels : 3 * levels]) if meta.head == "fcos" else None
        return decode_dense(
            list(o[:levels]),
            list(o[levels : 2 * levels]),
            ctr,
            dec["strides"],
            meta.input_size,
            dec["score_thresh"],
            dec["nms_thresh"],
            dec["max_detections"],
        )

    n_ref = n_out = matched = 0
    score_diffs: list[float] = []
    ious: list[float] = []
    for (rb, rs, rl), (ob, os_, ol) in zip(decode(ref), decode(out)):
        n_ref += len(rb)
        n_out += len(ob)
        if not len(rb) or not len(ob):
            continue
        iou = _box_iou(rb, ob)
        iou[rl[:, None] != ol[None, :]] = 0.0  # a match must have the same label
        taken = torch.zeros(len(ob), dtype=torch.bool)
        for i in range(len(rb)):  # greedy, best fp32 box first (decode sorts by score)
            row = iou[i].masked_fill(taken, -1.0)
            j = int(row.argmax())
            if float(row[j]) >= 0.5:
                taken[j] = True
                matched += 1
                score_diffs.append(abs(float(rs[i]) - float(os_[j])))
                ious.append(float(row[j]))
    return {
        "boxes_fp32": n_ref,
        "boxes_int8": n_out,
        "box_match_rate": round(matched / n_ref, 4) if n_ref else 1.0,
        "matched_score_max_diff": round(max(score_diffs), 6) if score_diffs else 0.0,
        "matched_iou_mean": round(sum(ious) / len(ious), 4) if ious else 1.0,
    }


def compare_outputs(meta: BundleMeta, ref: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """How far ``out`` (int8) is from ``ref`` (fp32), raw and as the task's results.

    Raw: ``max_abs_diff`` / ``mean_abs_diff`` over all outputs, next to ``fp32_abs_max`` for scale.
    Task: ``top1_agreement`` and ``max_prob_diff`` (softmax) for classification; ``label_agreement``
    (a label is on where its sigmoid is above the bundle's threshold, as AutoTimm decides) and
    ``max_prob_diff`` for multilabel; ``mask_agreement`` (pixels whose class is the same after
    upsampling to the input size) for segmentation; box counts,
    ``box_match_rate`` (fp32 boxes with an int8 box of the same label at IoU >= 0.5),
    ``matched_score_max_diff`` and ``matched_iou_mean`` for detection.
    """
    diffs = torch.cat([(o.float() - r.float()).abs().flatten() for r, o in zip(ref, out)])
    report: dict[str, Any] = {
        "max_abs_diff": round(float(diffs.max()), 6),
        "mean_abs_diff": round(float(diffs.mean()), 6),
        "fp32_abs_max": round(max(float(r.abs().max()) for r in ref), 6),
    }
    if meta.task is Task.CLASSIFICATION:
        pr, po = torch.softmax(ref[0].float(), 1), torch.softmax(out[0].float(), 1)
        report["top1_agreement"] = round(float((pr.argmax(1) == po.argmax(1)).float().mean()), 4)
        report["max_prob_diff"] = round(float((pr - po).abs().max()), 6)
    elif meta.task is Task.MULTILABEL:
        pr, po = torch.sigmoid(ref[0].float()), torch.sigmoid(out[0].float())
        thr = torch.as_tensor(meta.threshold, dtype=torch.float32)
        # AutoTimm's decision: a label is on when its sigmoid is strictly above the threshold
        report["label_agreement"] = round(float(((pr > thr) == (po > thr)).float().mean()), 4)
        report["max_prob_diff"] = round(float((pr - po).abs().max()), 6)
    elif meta.task is Task.SEGMENTATION:
        same = total = 0
        for r, o in zip(ref[0], out[0]):
            mr = F.interpolate(r[None].float(), size=meta.input_size, mode="bilinear", align_corners=False).argmax(1)
            mo = F.interpolate(o[None].float(), size=meta.input_size, mode="bilinear", align_corners=False).argmax(1)
            same += int((mr == mo).sum())
            total += mr.numel()
        report["mask_agreement"] = round(same / total, 4)
    elif meta.task is Task.DETECTION:
        report.update(_detection_agreement(meta, ref, out))
    return report


_AGREEMENT = {
    Task.CLASSIFICATION: ("top1_agreement", "top-1 agreement"),
    Task.MULTILABEL: ("label_agreement", "label agreement"),
    Task.SEGMENTATION: ("mask_agreement", "mask agreement"),
    Task.DETECTION: ("box_match_rate", "fp32 boxes matched"),
}


def _summary(meta: BundleMeta, q: dict[str, Any]) -> str:
    key, words = _AGREEMENT[meta.task]
    ops = ", ".join(f"{n} {op}" for op, n in q["quantized_nodes"].items())
    size, lat = q["size_bytes"], q["latency_ms"]
    return (
        f"{ops} in int8 ({q['backend']}); on {q['samples']} calibration frames vs fp32: {words} "
        f"{100 * q[key]:.1f}%, max |diff| {q['max_abs_diff']:.4g} (fp32 outputs up to {q['fp32_abs_max']:.4g}); "
        f"file {size['int8'] / 1e6:.2f} MB vs {size['fp32'] / 1e6:.2f} MB; "
        f"batch-1 CPU latency {lat['int8']:.1f} ms vs {lat['fp32']:.1f} ms ({lat['threads']} threads)"
    )


# -- torch formats: int8 Linear layers -----------------------------------------------------------
class Int8DynamicLinear(torch.nn.Module):
    """``nn.Linear`` with int8 weights (symmetric, per output channel) and int8 activations
    quantized per row at run time; products accumulate in int32 (``torch._int_mm``).

    The scheme of ``torch.ao.quantization.quantize_dynamic`` (which quantizes activations per
    tensor), in plain tensor ops so that both tracing and ``torch.export`` keep it. CPU only:
    ``torch._int_mm`` on CUDA wants more than 16 rows.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float().cpu()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer(
            "weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()
        )
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        x_scale = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        xq = torch.round(x2 / x_scale).clamp(-127, 127).to(torch.int8)
        weight, scale, bias = self.get_buffer("weight_int8"), self.get_buffer("weight_scale"), self.get_buffer("bias")
        y = torch._int_mm(xq, weight).float() * x_scale * scale + bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linear(network: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """A copy of ``network`` with every ``nn.Linear`` replaced by :class:`Int8DynamicLinear`; and their names."""
    qnet = copy.deepcopy(network)
    names: list[str] = []
    for name, module in list(qnet.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:  # subclasses (e.g. attention's out_proj) are used by weight
                setattr(module, child_name, Int8DynamicLinear(child))
                names.append(f"{name}.{child_name}" if name else child_name)
    return qnet.eval(), names


# -- ONNX: onnxruntime's dynamic quantization ----------------------------------------------------
def _quiet_ort(record: logging.LogRecord) -> bool:
    """Drop what quantize_dynamic logs on the root logger below ERROR: an INFO line per tensor, and
    advice to pre-process the model first (tried: symbolic shape inference and graph optimisation
    change neither the graph it quantizes nor the accuracy for these networks)."""
    return not ("onnxruntime" in record.pathname and record.levelno < logging.ERROR)


def _inline_shared_initializers(model: Any) -> int:
    """Give each ``Identity(initializer)`` output its own initializer; how many there were.

    The TorchScript-based exporter stores identical weights once and aliases them through
    Identity nodes (e.g. every conv whose BatchNorm has zero scale, as timm initialises the last
    BN of each residual block); ``quantize_dynamic`` then fails ("Expected ... to be an initializer").
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep, inlined = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = model.graph.initializer.add()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            inlined += 1
        else:
            keep.append(node)
    if inlined:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return inlined


def _quantize_onnx(src: str, dst: str) -> dict[str, Any]:
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ModelError(
            "--quantize int8 --format onnx needs onnx and onnxruntime (pip install 'autotimm-stream[onnx]')"
        ) from None
    model = onnx.load(src)
    if _inline_shared_initializers(model):
        plain = f"{dst}.plain.onnx"
        onnx.save(model, plain)
    else:
        plain = src
    root = logging.getLogger()
    root.addFilter(_quiet_ort)
    try:
        quantize_dynamic(plain, dst, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(_quiet_ort)
        if plain != src:
            os.unlink(plain)
    before = Counter(n.op_type for n in onnx.load(src, load_external_data=False).graph.node)
    after = Counter(n.op_type for n in onnx.load(dst, load_external_data=False).graph.node)
    quantized = {op: before[op] - after[op] for op in _ONNX_FLOAT_OPS if after[op] < before[op]}
    import onnxruntime

    return {
        "backend": f"onnxruntime {onnxruntime.__version__} quantize_dynamic (QInt8 weights, QUInt8 activations)",
        "quantized_ops": sorted(quantized),
        "quantized_nodes": quantized,
        "integer_ops": {op: after[op] for op in _ONNX_INTEGER_OPS if after[op]},
        "float_ops_left": {op: after[op] for op in _ONNX_FLOAT_OPS if after[op]},
    }


# -- the whole job ------------------------------------------------------------------------------
def export_quantized(
    network: torch.nn.Module,
    meta: BundleMeta,
    out: str | os.PathLike[str],
    fmt: str = "torchscript",
    mode: str = "int8",
) -> BundleMeta:
    """Write an int8 (dynamic) bundle of ``network``, with the measured accuracy change in its metadata.

    An fp32 and an int8 bundle are written side by side (in a temporary folder next to ``out``),
    both are loaded as the engine would load them and run on :func:`calibration_inputs`; the
    comparison (:func:`compare_outputs`), what was quantized, file sizes and batch-1 CPU latencies
    go into ``meta.quantization``; then the int8 bundle is written to ``out``. Returns the metadata.
    """
    from .timm import export_module

    if mode not in MODES:
        raise ConfigError(f"--quantize must be one of {list(MODES)}, got {mode!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "aoti":
        raise ConfigError("--quantize int8 does not apply to --format aoti; use --format onnx or torchscript")
    out = os.fspath(out)
    network = network.eval().cpu().float()
    quantized_net: torch.nn.Module | None = None
    if fmt != "onnx":
        quantized_net, layers = quantize_linear(network)
        if not layers:
            raise ModelError(
                f"--quantize int8 with --format {fmt} quantizes Linear layers only, and this {meta.task} network "
                "has none (its work is in convolutions); use --format onnx, whose int8 covers convolutions"
            )
    folder = tempfile.mkdtemp(prefix=".quantize-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        fp32_path, int8_path = os.path.join(folder, "fp32.bundle"), os.path.join(folder, "int8.bundle")
        written = export_module(network, copy.deepcopy(meta), fp32_path, fmt=fmt)  # checks the outputs, too
        if quantized_net is None:
            report = _quantize_onnx(fp32_path, int8_path)
        else:
            export_module(quantized_net, copy.deepcopy(meta), int8_path, fmt=fmt)
            report = {
                "backend": "torch._int_mm (int8 weights per output channel, int8 activations per row)",
                "quantized_ops": ["Linear"],
                "quantized_nodes": {"Linear": len(layers)},
                "quantized_layers": layers[:20],
            }
        cpu = torch.device("cpu")
        fp32, int8 = Network(fp32_path, cpu), Network(int8_path, cpu)
        x = calibration_inputs(meta)
        report = {
            "mode": "int8-dynamic",
            **report,
            "samples": int(x.shape[0]),
            "calibration": f"synthetic.ShapeScene frames {_FRAME_SIZE[0]}x{_FRAME_SIZE[1]}, seed {CALIBRATION_SEED}",
            **compare_outputs(meta, _run(fp32, x), _run(int8, x)),
            "size_bytes": {"fp32": os.path.getsize(fp32_path), "int8": os.path.getsize(int8_path)},
            "latency_ms": {
                "fp32": _latency_ms(fp32, x),
                "int8": _latency_ms(int8, x),
                "batch": 1,
                "threads": torch.get_num_threads(),
            },
        }
        report["summary"] = _summary(meta, report)
        del fp32, int8
        meta.versions = dict(written.versions)
        if fmt == "onnx":
            import onnxruntime

            meta.versions["onnxruntime"] = onnxruntime.__version__
        meta.quantization = report
        replace_meta(int8_path, meta, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _logger.info("wrote %s (%s, int8-dynamic): %s", out, fmt, report["summary"])
    return meta
