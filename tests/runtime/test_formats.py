"""Bundle formats (torchscript, export, onnx) and int8 quantization, on real AutoTimm checkpoints.

Each task's checkpoint (classifier, FCOS detector, FCN segmentor; test_resnet backbone, weights
perturbed so that outputs are not trivial) is exported in every format; the ``export`` and
``onnx`` bundles must load through the runner and match the TorchScript bundle within 1e-4 on
batches of 1 and 3 (the batch dimension is dynamic). int8 bundles must carry a quantization
report whose numbers the test recomputes, and stay within stated tolerances of fp32.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autotimm_stream.errors import ModelError
from autotimm_stream.runtime.load import FORMATS, Network, detect_format, read_meta
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.synthetic import ShapeScene

pytestmark = pytest.mark.slow

TASKS = ("classification", "detection", "segmentation")
# Small inputs keep the module fast; 160 gives the detector's P7 a 2x2 map.
SIZES = {"classification": 64, "detection": 160, "segmentation": 128}
ATOL = 1e-4


def _build(task: str) -> torch.nn.Module:
    from autotimm import BackboneConfig, FeatureBackboneConfig, ImageClassifier, ObjectDetector, SemanticSegmentor

    if task == "classification":
        model = ImageClassifier(backbone=BackboneConfig(model_name="test_resnet", pretrained=False), num_classes=4)
    elif task == "detection":
        model = ObjectDetector(
            backbone=FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
            num_classes=3,
            metrics=[],
            fpn_channels=32,
            head_num_convs=1,
        )
    else:
        model = SemanticSegmentor(
            backbone=FeatureBackboneConfig(model_name="test_resnet", pretrained=False), num_classes=3, head_type="fcn"
        )
    return model


def _make_checkpoint(task: str, path: Path) -> None:
    import pytorch_lightning as pl

    torch.manual_seed({"classification": 1, "detection": 2, "segmentation": 3}[task])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AutoTimm warns about seed options it was not given
        model = _build(task)
    with torch.no_grad():  # as if trained a little: no zero biases, no unit BN statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    trainer = pl.Trainer(
        max_steps=0, logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(str(path), weights_only=True)


class Bundles:
    """Checkpoints and bundles, built on first use and cached for the module."""

    def __init__(self, root: Path):
        self.root = root
        self._ckpts: dict[str, Path] = {}
        self._bundles: dict[tuple[str, str, str | None], Path] = {}

    def checkpoint(self, task: str) -> Path:
        if task not in self._ckpts:
            path = self.root / f"{task}.ckpt"
            _make_checkpoint(task, path)
            self._ckpts[task] = path
        return self._ckpts[task]

    def path(self, task: str, fmt: str, quantize: str | None = None) -> Path:
        from autotimm_stream.export.checkpoint import export_checkpoint

        key = (task, fmt, quantize)
        if key not in self._bundles:
            out = self.root / f"{task}-{fmt}{'-' + quantize if quantize else ''}.bundle"
            export_checkpoint(self.checkpoint(task), out, image_size=SIZES[task], fmt=fmt, quantize=quantize)
            self._bundles[key] = out
        return self._bundles[key]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return Bundles(tmp_path_factory.mktemp("formats"))


def frames(n: int, seed: int = 5) -> list[np.ndarray]:
    scene = ShapeScene(200, 150, seed=seed)
    out = []
    for _ in range(n):
        out.append(scene.render().copy())
        for _ in range(4):
            scene.step()
    return out


# -- every format: load, metadata, parity with TorchScript ----------------------------------------
# aoti compiles C++ per bundle (30-60 s each here): it has its own test below
FAST_FORMATS = [f for f in FORMATS if f != "aoti"]


@pytest.mark.parametrize("fmt", FAST_FORMATS)
@pytest.mark.parametrize("task", TASKS)
def test_detect_format_and_read_meta(bundles: Bundles, task: str, fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = bundles.path(task, fmt)
    assert detect_format(path) == fmt
    meta = read_meta(path)
    assert meta.task == task
    assert meta.input_size == (SIZES[task], SIZES[task])
    assert meta.origin["kind"] == "autotimm" and meta.quantization == {}
    assert meta.outputs == (
        [f"{g}_l{i}" for g in ("cls", "reg", "ctr") for i in range(5)] if task == "detection" else ["logits"]
    )
    assert meta.to_json() == read_meta(bundles.path(task, "torchscript")).to_json()  # same metadata in every format
    leftovers = [n for n in os.listdir(path.parent) if ".tmp-" in n or ".quantize-" in n or n.endswith(".data")]
    assert not leftovers
    Network(path, torch.device("cpu"))
    assert ".pt2" not in caplog.text  # torch.export's file-name warnings


@pytest.mark.parametrize("fmt", ["export", "onnx"])
@pytest.mark.parametrize("task", TASKS)
def test_matches_torchscript(bundles: Bundles, task: str, fmt: str) -> None:
    ref = ModelRunner(bundles.path(task, "torchscript"))
    runner = ModelRunner(bundles.path(task, fmt))
    assert runner.format == fmt
    runner.warmup(batch_sizes=(1, 3), iterations=1)  # outputs are what the task and head promise
    images = frames(3)
    for batch in (images[:1], images):  # the batch dimension is dynamic
        x = runner.preprocess(batch)
        want, got = ref.forward(x), runner.forward(x)
        assert len(got) == len(want) == len(runner.meta.outputs)
        for name, w, g in zip(runner.meta.outputs, want, got):
            assert g.shape == w.shape and g.dtype == torch.float32, name
            diff = float((g - w).abs().max())
            assert diff <= ATOL, f"{task}/{fmt} output {name}: max |diff| {diff:.3g} vs TorchScript"
            assert float(w.abs().max()) > 1e-2  # not a trivial all-zero output


def test_onnx_is_one_self_contained_file_with_dynamic_batch(bundles: Bundles) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = bundles.path("detection", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    assert model.graph.initializer and not any(uses_external_data(t) for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert [o.name for o in model.graph.output] == read_meta(path).outputs
    assert not [n for n in os.listdir(path.parent) if n.endswith((".data", ".raw.onnx"))]


def test_onnx_sessions_do_not_spin_between_runs(bundles: Bundles) -> None:
    # spinning pool threads would keep the engine's decode and preprocessing threads off the cores
    runner = ModelRunner(bundles.path("detection", "onnx"))
    session = runner.network.onnx_session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert ModelRunner(bundles.path("detection", "torchscript")).network.onnx_session is None


def test_export_bundle_does_not_carry_example_inputs(bundles: Bundles) -> None:
    path = bundles.path("segmentation", "export")
    example_bytes = 2 * 3 * SIZES["segmentation"] ** 2 * 4
    with zipfile.ZipFile(path) as zf:
        samples = [i.file_size for i in zf.infolist() if "sample_inputs" in i.filename]
    assert all(size < example_bytes // 10 for size in samples)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage, not a model", b"\x08\x07\x12\x04junk\xff\xff\xff", bytes(range(256)) * 4],
    ids=["empty", "text", "protobuf-like", "binary"],
)
def test_detect_format_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a TorchScript, torch.export or ONNX file"):
        detect_format(path)
    with pytest.raises(ModelError):
        read_meta(path)
    with pytest.raises(ModelError):
        ModelRunner(path)


def test_detect_format_refuses_other_zips_missing_files_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    with pytest.raises(ModelError, match="zip archive but neither"):
        detect_format(path)
    with pytest.raises(ModelError, match="not found"):
        detect_format(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="folder"):
        detect_format(tmp_path)


# -- int8 ------------------------------------------------------------------------------------------
# Tolerances, from the arithmetic of dynamic int8 (an operand's step is 1/127 (weights) or 1/255
# (ORT activations) of its range, and errors compound layer by layer):
# - torch formats quantize the classifier's head only, one layer, per-channel weights and per-row
#   activations: logits move by well under 2% of their range (measured 0.7%), so probabilities by
#   far less than 0.01 (measured 5e-4) and top-1 should not change (>= 15 of 16 allowed);
# - ONNX quantizes every convolution with per-tensor uint8 activations: logits move by up to a few
#   percent of their range (measured 2.6% segmentor, 2.3% detector), so up to 5% is allowed; the
#   segmentor's mask must agree on >= 95% of pixels (measured 99.7%). The detector has random-ish
#   weights whose scores sit near the threshold, so box-level agreement is only checked for
#   consistency with the report, and matched boxes' scores within 0.05.
REPORT_KEYS = {
    "mode",
    "backend",
    "quantized_ops",
    "quantized_nodes",
    "samples",
    "max_abs_diff",
    "mean_abs_diff",
    "fp32_abs_max",
    "size_bytes",
    "latency_ms",
    "summary",
}


def _run(runner: ModelRunner, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    parts = [runner.forward(x[i : i + 4]) for i in range(0, x.shape[0], 4)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _check_raw(q: dict, want: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> torch.Tensor:
    diffs = torch.cat([(g - w).abs().flatten() for w, g in zip(want, got)])
    assert q["max_abs_diff"] == pytest.approx(float(diffs.max()), rel=1e-3, abs=1e-5)
    assert q["mean_abs_diff"] == pytest.approx(float(diffs.mean()), rel=1e-3, abs=1e-6)
    assert q["fp32_abs_max"] == pytest.approx(max(float(w.abs().max()) for w in want), rel=1e-5)
    assert q["max_abs_diff"] > 0  # something was quantized
    return diffs


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_int8_classifier_torch_formats(bundles: Bundles, fmt: str) -> None:
    from autotimm_stream.export.quantize import calibration_inputs

    path = bundles.path("classification", fmt, "int8")
    assert detect_format(path) == fmt
    meta = read_meta(path)
    q = meta.quantization
    assert REPORT_KEYS | {"top1_agreement", "max_prob_diff"} <= set(q)
    assert q["mode"] == "int8-dynamic" and q["quantized_ops"] == ["Linear"] and q["samples"] == 16
    assert q["quantized_nodes"] == {"Linear": 1} and q["quantized_layers"] == ["head.fc"]
    assert isinstance(q["summary"], str) and "top-1 agreement" in q["summary"]

    # What the report says, recomputed: the fp32 bundle and the int8 one on the calibration inputs.
    x = calibration_inputs(meta)
    assert x.shape[0] == q["samples"]
    want = _run(ModelRunner(bundles.path("classification", fmt)), x)
    got = _run(ModelRunner(path), x)
    _check_raw(q, want, got)
    pw, pg = torch.softmax(want[0], 1), torch.softmax(got[0], 1)
    agreement = float((pw.argmax(1) == pg.argmax(1)).float().mean())
    assert q["top1_agreement"] == pytest.approx(agreement)
    assert q["max_prob_diff"] == pytest.approx(float((pw - pg).abs().max()), rel=1e-3, abs=1e-6)

    # ...and within tolerance of fp32.
    assert agreement >= 15 / 16
    assert q["max_abs_diff"] <= 0.02 * q["fp32_abs_max"]
    assert q["max_prob_diff"] <= 0.01


def test_int8_torchscript_bundle_holds_int8_weights(bundles: Bundles) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(bundles.path("classification", "torchscript", "int8")))
    dtypes = {t.dtype for t in module.buffers()}
    assert torch.int8 in dtypes
    with pytest.raises(ModelError, match="for the CPU"):  # refused before touching CUDA
        Network(bundles.path("classification", "torchscript", "int8"), torch.device("cuda"))


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_int8_torch_formats_refuse_networks_without_linear_layers(bundles: Bundles, tmp_path: Path, fmt: str) -> None:
    from autotimm_stream.export.checkpoint import export_checkpoint

    out = tmp_path / "seg-int8.bundle"
    with pytest.raises(ModelError, match="Linear layers only.*--format onnx"):
        export_checkpoint(bundles.checkpoint("segmentation"), out, image_size=128, fmt=fmt, quantize="int8")
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_int8_onnx(bundles: Bundles, task: str) -> None:
    import onnx

    from autotimm_stream.export.quantize import calibration_inputs
    from autotimm_stream.postprocess.detection import decode_dense

    path = bundles.path(task, "onnx", "int8")
    fp32_path = bundles.path(task, "onnx")
    assert detect_format(path) == "onnx"
    meta = read_meta(path)
    q = meta.quantization
    assert REPORT_KEYS <= set(q) and q["mode"] == "int8-dynamic" and "onnxruntime" in q["backend"]
    assert q["quantized_ops"] == ["Conv"]

    # The report's op counts are the graph's.
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    fp32_convs = [n.op_type for n in onnx.load(str(fp32_path)).graph.node].count("Conv")
    assert q["quantized_nodes"] == {"Conv": fp32_convs}
    assert q["integer_ops"] == {"ConvInteger": ops.count("ConvInteger")}
    assert ops.count("ConvInteger") == fp32_convs and "Conv" not in ops
    assert q["size_bytes"]["fp32"] == os.path.getsize(fp32_path)
    assert q["size_bytes"]["int8"] < 0.4 * q["size_bytes"]["fp32"]
    assert os.path.getsize(path) == pytest.approx(q["size_bytes"]["int8"], abs=4096)  # only the report added

    x = calibration_inputs(meta)
    want = _run(ModelRunner(fp32_path), x)
    got = _run(ModelRunner(path), x)
    _check_raw(q, want, got)
    assert q["max_abs_diff"] <= 0.05 * q["fp32_abs_max"]
    if task == "segmentation":
        size = meta.input_size
        mw = F.interpolate(want[0], size=size, mode="bilinear", align_corners=False).argmax(1)
        mg = F.interpolate(got[0], size=size, mode="bilinear", align_corners=False).argmax(1)
        agreement = float((mw == mg).float().mean())
        assert q["mask_agreement"] == pytest.approx(agreement, abs=1e-4)
        assert agreement >= 0.95
    else:
        d = meta.decode

        def count(out: tuple[torch.Tensor, ...]) -> int:
            cls, reg, ctr = out[:5], out[5:10], out[10:]
            dets = decode_dense(
                cls, reg, ctr, d["strides"], meta.input_size, d["score_thresh"], d["nms_thresh"], d["max_detections"]
            )
            return sum(len(b) for b, _, _ in dets)

        assert (q["boxes_fp32"], q["boxes_int8"]) == (count(want), count(got))
        assert q["boxes_fp32"] > 0 and 0 < q["box_match_rate"] <= 1
        assert q["matched_score_max_diff"] <= 0.05 and q["matched_iou_mean"] >= 0.5


def test_int8_onnx_with_shared_weights(tmp_path: Path) -> None:
    """A freshly initialised timm resnet has identical (all-zero) folded weights wherever the last
    BatchNorm of a block has zero scale; the exporter stores them once behind Identity nodes, which
    quantize_dynamic refuses ("Expected ... to be an initializer") unless each gets its own copy."""
    import copy

    import onnx
    import timm

    from autotimm_stream.export.quantize import export_quantized
    from autotimm_stream.export.timm import export_module
    from autotimm_stream.runtime.bundle import BundleMeta

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    meta = BundleMeta(task="classification", class_names=["a", "b", "c"], input_size=(64, 64))
    export_module(model, copy.deepcopy(meta), tmp_path / "fp32.onnx", fmt="onnx")
    fp32_ops = [n.op_type for n in onnx.load(str(tmp_path / "fp32.onnx")).graph.node]
    assert "Identity" in fp32_ops  # the case this test is about

    q = export_quantized(model, meta, tmp_path / "int8.onnx", fmt="onnx").quantization
    assert q["quantized_nodes"] == {"Conv": fp32_ops.count("Conv"), "Gemm": 1}
    assert q["top1_agreement"] >= 15 / 16 and q["max_abs_diff"] <= 0.05 * q["fp32_abs_max"]
    assert read_meta(tmp_path / "int8.onnx").quantization == q
    assert sorted(os.listdir(tmp_path)) == ["fp32.onnx", "int8.onnx"]


@pytest.mark.slow
def test_aoti_bundle_matches_torchscript_on_the_cpu(tmp_path):
    """AOTInductor-compiled bundle (C++ built here with the system compiler): same outputs, dynamic batch."""
    from autotimm_stream.export.timm import export_timm
    from autotimm_stream.runtime.load import detect_format, read_meta

    classes = ["a", "b", "c"]
    torch.manual_seed(0)
    export_timm("test_resnet", tmp_path / "m.pt", classes, image_size=64)
    torch.manual_seed(0)
    export_timm("test_resnet", tmp_path / "m.aoti", classes, image_size=64, fmt="aoti")
    assert detect_format(tmp_path / "m.aoti") == "aoti"
    meta = read_meta(tmp_path / "m.aoti")
    assert meta.compiled_for == "cpu" and meta.class_names == classes
    ref, got = ModelRunner(tmp_path / "m.pt"), ModelRunner(tmp_path / "m.aoti")
    assert got.format == "aoti"
    for n in (1, 3):
        x = ref.preprocess([np.full((48, 80, 3), 40 * i, np.uint8) for i in range(n)])
        torch.testing.assert_close(got.forward(x)[0], ref.forward(x)[0], atol=1e-4, rtol=0)
