import json
import zipfile
from pathlib import Path

import pytest
import torch

from autotimm_stream.errors import ModelError
from autotimm_stream.export.save import save_bundle
from autotimm_stream.export.timm import parse_classes
from autotimm_stream.runtime.bundle import BUNDLE_VERSION, BundleMeta
from autotimm_stream.runtime.load import read_meta
from autotimm_stream.runtime.runner import ModelRunner
from tests.helpers import CLASSES, rng_frames

ASSETS = Path(__file__).resolve().parents[2] / "autotimm_stream" / "assets"


def test_metadata_round_trip(bundle):
    meta = read_meta(bundle)
    assert meta.task == "classification"
    assert meta.class_names == CLASSES
    assert meta.input_size == (160, 160)
    assert meta.resize == "center_crop" and meta.crop_pct == 0.95
    assert meta.versions["torch"] == torch.__version__
    assert meta.origin == {"kind": "timm", "name": "test_resnet", "pretrained": False}


def test_runner_equals_eager_traced_module(bundle):
    runner = ModelRunner(bundle)
    plain = torch.jit.load(str(bundle)).eval()
    x = runner.preprocess(rng_frames(4, 120, 200))
    with torch.inference_mode():
        torch.testing.assert_close(runner.forward(x), plain(x), rtol=1e-4, atol=1e-4)


def test_forward_takes_a_batch_in_parts(bundle):
    """Frames that joined a batch late come as separately preprocessed parts: the same outputs."""
    runner = ModelRunner(bundle)
    frames = rng_frames(5, 120, 200)
    parts = [runner.preprocess(frames[:3]), runner.preprocess(frames[3:])]
    whole = runner.forward(runner.preprocess(frames))
    torch.testing.assert_close(runner.forward(parts), whole)
    torch.testing.assert_close(runner.forward(parts[:1])[0], whole[0][:3])


def test_plain_torchscript_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(ModelError, match="has no autotimm-stream metadata.*autotimm-stream export"):
        read_meta(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"not a zip", "not a TorchScript, torch.export or ONNX file"),
    ],
)
def test_bad_bundle_files(tmp_path, content, message):
    path = tmp_path / "m.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        ModelRunner(path)


@pytest.mark.parametrize("antialias, backend", [(True, "torchvision"), (False, "albumentations")])
def test_version_2_antialias_names_the_transform_library(antialias, backend):
    """Bundles up to version 2 said ``antialias``: Pillow's resample (true) or OpenCV's (false)."""
    doc = json.loads(BundleMeta(task="classification", class_names=["a"], input_size=(8, 8)).to_json())
    del doc["transform_backend"]
    doc.update(bundle_version=2, antialias=antialias)
    assert BundleMeta.from_json(json.dumps(doc)).transform_backend == backend


def test_the_bundled_demo_models_read_as_opencv_trained():
    for name in ("demo_detector.pt", "demo_segmentor.pt"):
        assert read_meta(ASSETS / name).transform_backend == "albumentations"


def test_newer_bundle_version_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    meta = BundleMeta(task="classification", class_names=["a"], input_size=(8, 8))
    save_bundle(torch.jit.trace(torch.nn.Flatten(), torch.zeros(1, 3, 8, 8)), meta, path)
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("autotimm_stream.json"))
        text = zf.read(name).decode().replace(f'"bundle_version": {BUNDLE_VERSION}', '"bundle_version": 99')
    broken = tmp_path / "v99.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, text if item.filename == name else src.read(item.filename))
    with pytest.raises(ModelError, match="version 99 is not supported"):
        read_meta(broken)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "keypoints"}, "task must be one of"),
        ({"task": "detection", "head": "linear"}, "head must be one of"),
        ({"task": "detection", "decode": {"iou": 0.5}}, "unknown fields"),
        ({"task": "segmentation", "resize": "center_crop"}, "cannot use the center_crop"),
        ({"class_names": []}, "no class names"),
        ({"threshold": [0.5, 0.5]}, "2 thresholds for 3 classes"),
        ({"resize": "zoom"}, "preprocessing metadata is invalid"),
        ({"transform_backend": "opencv"}, "backend must be one of"),
    ],
)
def test_bad_metadata(kwargs, message):
    base = {"task": "multilabel", "class_names": ["a", "b", "c"], "input_size": (8, 8)}
    with pytest.raises(ModelError, match=message):
        BundleMeta(**{**base, **kwargs})


def test_export_refuses_class_count_mismatch(tmp_path):
    from autotimm_stream.export.timm import export_module

    meta = BundleMeta(task="classification", class_names=["a", "b"], input_size=(8, 8))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    with pytest.raises(ModelError, match=r"outputs \[\(2, 5\)\] but the metadata expects one \[2, 2\] tensor"):
        export_module(model, meta, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "spec, n, expected",
    [("a,b, c", None, ["a", "b", "c"]), (None, 2, ["class_0", "class_1"]), ("a,b", 2, ["a", "b"])],
)
def test_parse_classes(spec, n, expected):
    assert parse_classes(spec, n) == expected


def test_parse_classes_from_file_and_mismatch(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("cat\ndog\n\n")
    assert parse_classes(str(f), None) == ["cat", "dog"]
    with pytest.raises(ValueError, match="gives 2 names but --num-classes is 3"):
        parse_classes(str(f), 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fp16, channels_last", [(False, False), (True, True)])
def test_cuda_runner_matches_cpu(bundle, fp16, channels_last):
    frames = rng_frames(4, 240, 320)
    cpu = ModelRunner(bundle)
    gpu = ModelRunner(bundle, device="cuda", fp16=fp16, channels_last=channels_last)
    gpu.warmup((1, 4))
    ref = torch.softmax(cpu.forward(cpu.preprocess(frames))[0], 1)
    got = torch.softmax(gpu.forward(gpu.preprocess(frames))[0], 1).cpu()
    torch.testing.assert_close(got, ref, atol=2e-2 if fp16 else 1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where CUDA is absent")
def test_cuda_requested_without_cuda_is_a_config_error(bundle):
    from autotimm_stream.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA is not available here; use 'cpu' or 'auto'"):
        ModelRunner(bundle, device="cuda")


def test_fp16_on_cpu_falls_back_to_fp32(bundle, caplog):
    runner = ModelRunner(bundle, fp16=True)
    assert runner.dtype == torch.float32
    assert "fp16 needs CUDA" in caplog.text
