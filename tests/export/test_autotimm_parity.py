"""Real AutoTimm checkpoints -> bundles -> engine outputs, compared with AutoTimm's own model.

The checkpoints are trained for a few steps by Lightning (tests/autotimm_factory.py). The
reference is the trained model object itself, still in memory (not rebuilt from the file),
applied to exactly the tensor the engine feeds its bundle (``runner.preprocess(frames)``), with
AutoTimm's own decoding (``predict``) and the post-processing AutoTimm prescribes; the engine
runs the exported TorchScript bundle through :class:`ModelRunner` and :class:`Postprocessor`.
Frames are decoded from real H.264 clips of three sizes, one of them portrait.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autotimm_stream.errors import ConfigError, ModelError
from autotimm_stream.export.checkpoint import export_checkpoint, inspect_checkpoint, load_autotimm_model
from autotimm_stream.postprocess import Postprocessor, on_frame
from autotimm_stream.runtime.load import read_meta
from autotimm_stream.runtime.preprocess import plan
from autotimm_stream.runtime.runner import ModelRunner
from autotimm_stream.synthetic import write_clip
from tests.autotimm_factory import DET_SIZE, Factory, Made
from tests.helpers import iou

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["classifier", "multilabel", "fcos", "yolox_head", "yolox_detector", "seg_deeplabv3plus", "seg_fcn", "instance"]
SIZES = [(240, 320), (360, 640), (640, 480)]  # (height, width): landscape 4:3, 16:9, portrait
TASK = {
    "classifier": ("classification", "linear"),
    "multilabel": ("multilabel", "linear"),
    "fcos": ("detection", "fcos"),
    "yolox_head": ("detection", "yolox"),
    "yolox_detector": ("detection", "yolox"),
    "seg_deeplabv3plus": ("segmentation", "deeplabv3plus"),
    "seg_fcn": ("segmentation", "fcn"),
    "instance": ("detection", "fcos"),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# -- fixtures (session-scoped: every checkpoint and bundle is made once) ---------------------------
@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    return Factory(tmp_path_factory.mktemp("autotimm_ckpt"))


@pytest.fixture(scope="session")
def h264_frames(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], list[np.ndarray]]:
    """Per size, two RGB frames decoded from a generated H.264 clip of that size."""
    folder = tmp_path_factory.mktemp("autotimm_clips")
    out = {}
    for i, (h, w) in enumerate(SIZES):
        path = write_clip(folder / f"clip_{w}x{h}.mp4", frames=6, width=w, height=h, seed=11 + i, dominant=False)
        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 6 and frames[0].shape == (h, w, 3)
        out[(h, w)] = [frames[0], frames[4]]
    return out


class Bundles:
    """Exports each checkpoint once (TorchScript) and keeps a runner for it."""

    def __init__(self, factory: Factory, folder: Path):
        self.factory, self.folder = factory, folder
        self.cache: dict[str, tuple[Made, Path, ModelRunner]] = {}

    def classes_arg(self, made: Made) -> str | list[str]:
        # the three ways --classes can come: "a,b,c", a file with one per line, a list (API)
        if made.kind.startswith("seg_"):
            path = self.folder / f"{made.kind}_classes.txt"
            path.write_text("\n".join(made.classes) + "\n")
            return str(path)
        if made.kind in ("classifier", "fcos"):
            return ",".join(made.classes)
        return list(made.classes)

    def __call__(self, kind: str) -> tuple[Made, Path, ModelRunner]:
        if kind not in self.cache:
            made = self.factory(kind)
            out = self.folder / f"{kind}.pt"
            export_checkpoint(made.path, out, image_size=made.export_image_size, classes=self.classes_arg(made))
            self.cache[kind] = (made, out, ModelRunner(out))
        return self.cache[kind]


@pytest.fixture(scope="session")
def bundles(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return Bundles(factory, tmp_path_factory.mktemp("autotimm_bundles"))


# -- references -------------------------------------------------------------------------------------
def frame_boxes(boxes: torch.Tensor, hw: tuple[int, int], spec) -> np.ndarray:
    """Input-pixel xyxy boxes -> source-frame pixels, undoing the letterbox: x = (x_in - pad) / scale."""
    h, w = hw
    geo = plan(h, w, spec)
    in_h, in_w = spec.size
    # the letterbox the engine promises: aspect kept, long side fills the input, padding centred
    assert geo.crop == (0, 0)
    assert (
        max(abs(geo.resized[0] - h * min(in_h / h, in_w / w)), abs(geo.resized[1] - w * min(in_h / h, in_w / w))) <= 1
    )
    assert geo.pad == ((in_h - geo.resized[0]) // 2, (in_w - geo.resized[1]) // 2)
    sy, sx = geo.scale
    pt, pl = geo.pad
    b = boxes.detach().double().cpu().numpy().copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - pl) / sx).clip(0, w)
    b[:, [1, 3]] = ((b[:, [1, 3]] - pt) / sy).clip(0, h)
    return b


def check_classification(made: Made, runner: ModelRunner, x: torch.Tensor, results: list[dict]) -> None:
    with torch.no_grad():
        logits = made.model(x)
    if made.kind == "multilabel":
        probs = torch.sigmoid(logits)
        thr = float(made.hparams["threshold"])
        assert thr == 0.45  # the factory's non-default value: it must come from the hparams
        above = (probs > thr).sum().item()  # AutoTimm: logits.sigmoid() > threshold
        assert 0 < above < probs.numel(), f"all or no classes above {thr}: the comparison would be vacuous"
        for p, res in zip(probs, results):
            got = {pr.class_id: pr.score for pr in res.classes}
            decidable = [c for c in range(len(p)) if abs(float(p[c]) - thr) > 1e-4]
            want = {c for c in decidable if float(p[c]) > thr}
            assert {c for c in got if c in decidable} == want, (got, p.tolist(), thr)
            for c, s in got.items():
                assert s == pytest.approx(float(p[c]), abs=1e-4)
                assert made.classes[c] == next(pr.label for pr in res.classes if pr.class_id == c)
        return
    probs = torch.softmax(logits, dim=1)
    k = runner.meta.top_k
    ref_p, ref_i = probs.topk(k, dim=1)
    for rp, ri, res in zip(ref_p, ref_i, results):
        assert [p.class_id for p in res.classes] == ri.tolist(), (res, rp.tolist())
        assert [p.label for p in res.classes] == [made.classes[i] for i in ri.tolist()]
        np.testing.assert_allclose([p.score for p in res.classes], rp.numpy(), atol=1e-4, rtol=0)


def check_detection(
    made: Made, runner: ModelRunner, x: torch.Tensor, results: list[dict], sizes: list[tuple[int, int]]
) -> None:
    model = made.model
    with torch.no_grad():
        ref = model.predict(x)  # AutoTimm's own decode (decode_fcos_detections / YOLOXDetector.predict)
    total = 0
    cap = runner.meta.decode["max_detections"]
    for det, res, hw in zip(ref, results, sizes):
        # The engine emits AutoTimm's list (after its cap) minus the boxes with no place on the frame:
        # inverted ones (YOLO-style heads have no ReLU on the distances) and those wholly in the
        # letterbox padding (docs/detection.md). Zero-area boxes on the frame stay.
        b = det["boxes"]
        real = on_frame(b, plan(hw[0], hw[1], runner.spec)) & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
        ref_boxes = frame_boxes(b, hw, runner.spec)[real.numpy()]
        ref_labels = det["labels"][real].tolist()
        ref_scores = det["scores"][real].tolist()
        got = res.detections
        total += len(ref_labels)
        assert len(det["labels"]) <= cap
        assert all(d.box[0] <= d.box[2] and d.box[1] <= d.box[3] for d in got)
        assert len(got) == len(ref_labels), f"engine {len(got)} boxes, AutoTimm {len(ref_labels)} on a {hw} frame"
        free = set(range(len(ref_labels)))
        for d in got:
            # iou() matches zero-area boxes by their coordinates
            cands = [(iou(np.array(d.box), ref_boxes[j]), j) for j in free if ref_labels[j] == d.class_id]
            best, j = max(cands, default=(0.0, -1))
            assert best >= 0.99, f"engine box {d} has no AutoTimm match (best IoU {best:.4f})"
            assert d.score == pytest.approx(ref_scores[j], abs=1e-4)
            assert d.label == made.classes[d.class_id]
            free.discard(j)
    assert total >= 1, "the reference found no boxes: the comparison would be vacuous"


def check_segmentation(made: Made, x: torch.Tensor, results: list[dict], sizes: list[tuple[int, int]]) -> None:
    with torch.no_grad():
        logits = made.model(x)
    classes_seen: set[int] = set()
    for i, (res, hw) in enumerate(zip(results, sizes)):
        up = F.interpolate(logits[i : i + 1], size=hw, mode="bilinear", align_corners=False)
        want = up.argmax(1)[0].numpy()
        got = res.mask
        assert got.shape == hw
        agree = float((got.astype(np.int64) == want).mean())
        assert agree >= 0.999, f"masks agree on {agree:.5%} of a {hw} frame"
        classes_seen |= set(np.unique(want).tolist())
        fractions = {c.class_id: c.fraction for c in res.class_fractions}
        assert sum(fractions.values()) == pytest.approx(1.0)
        assert [c.label for c in res.class_fractions] == [made.classes[c] for c in fractions]
    assert len(classes_seen) >= 2, "the reference mask is one class: the comparison would be vacuous"


# -- parity: bundle == AutoTimm's model, frames of several sizes ----------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for h, w in SIZES])
@pytest.mark.parametrize("kind", KINDS)
def test_bundle_matches_autotimm(kind, size, bundles, h264_frames):
    made, _, runner = bundles(kind)
    frames = h264_frames[size]
    sizes = [f.shape[:2] for f in frames]
    x = runner.preprocess(frames)
    assert tuple(x.shape) == (len(frames), 3, *runner.meta.input_size)
    results = Postprocessor(runner.meta)(runner.forward(x), sizes)
    assert len(results) == len(frames)
    task = runner.meta.task
    if task in ("classification", "multilabel"):
        check_classification(made, runner, x, results)
    elif task == "detection":
        check_detection(made, runner, x, results, sizes)
    else:
        check_segmentation(made, x, results, sizes)


def test_mixed_size_batch_matches_single_size_batches(bundles, h264_frames):
    """One batch holding all three sizes gives each frame what its own-size batch gave."""
    made, _, runner = bundles("fcos")
    frames = [h264_frames[s][0] for s in SIZES]
    pp = Postprocessor(runner.meta)
    mixed = pp(runner.forward(runner.preprocess(frames)), [f.shape[:2] for f in frames])
    for f, res in zip(frames, mixed):
        alone = pp(runner.forward(runner.preprocess([f])), [f.shape[:2]])[0]
        assert len(res.detections) == len(alone.detections)
        for a, b in zip(res.detections, alone.detections):
            assert a.class_id == b.class_id and np.allclose(a.box, b.box, atol=1e-2)


# -- metadata ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bundle_metadata(kind, bundles):
    import timm

    made, bundle_path, runner = bundles(kind)
    meta = read_meta(bundle_path)
    assert meta == runner.meta
    task, head = TASK[kind]
    assert (meta.task, meta.head) == (task, head)
    assert meta.class_names == made.classes
    hp = made.hparams
    size = made.image_size
    assert meta.input_size == (size, size)
    if task in ("classification", "multilabel"):
        # no DataModule recorded: AutoTimm's inference transform, i.e. the backbone's timm statistics
        cfg = timm.data.resolve_model_data_config(timm.create_model("test_resnet", pretrained=False))
        assert meta.resize == "center_crop"  # AutoTimm's eval transforms ignore timm's crop_mode
        assert meta.crop_pct == pytest.approx(cfg["crop_pct"])
        assert meta.interpolation == cfg["interpolation"]
        assert meta.mean == pytest.approx(cfg["mean"]) and meta.std == pytest.approx(cfg["std"])
        assert meta.transform_backend == "torchvision"
        assert meta.decode == {}
        if task == "multilabel":
            assert meta.threshold == pytest.approx(hp["threshold"])
    else:
        assert meta.resize == ("letterbox" if task == "detection" else "squash")
        assert meta.transform_backend == "albumentations" and meta.interpolation == "bilinear"
        assert (meta.mean, meta.std) == (pytest.approx(IMAGENET[0]), pytest.approx(IMAGENET[1]))
    if task == "detection":
        strides = hp["strides"] if "strides" in hp else made.model.strides  # YOLOXDetector: fixed (8, 16, 32)
        assert meta.decode == {
            "score_thresh": pytest.approx(hp["score_thresh"]),
            "nms_thresh": pytest.approx(hp["nms_thresh"]),
            "max_detections": hp["max_detections_per_image"],
            "strides": [int(s) for s in strides],
        }
        levels = len(strides)
        assert len(meta.outputs) == (3 if head == "fcos" else 2) * levels
    origin = meta.origin
    assert origin["kind"] == "autotimm"
    assert origin["sha256"] == hashlib.sha256(made.path.read_bytes()).hexdigest()
    assert origin["compiled"] is made.compiled
    assert origin["image_size_from"] == ("checkpoint" if made.export_image_size is None else "--image-size")
    assert meta.versions.get("autotimm") and meta.versions.get("torch") == torch.__version__


@pytest.mark.parametrize("kind", ["classifier", "fcos"])
def test_compiled_checkpoint_loads_the_trained_weights(kind, factory):
    """``_orig_mod.`` keys are stripped and every trained tensor lands where it was (strict load)."""
    made = factory(kind)
    raw = torch.load(made.path, map_location="cpu", weights_only=False)
    assert any("._orig_mod." in k for k in raw["state_dict"])
    assert raw["hyper_parameters"]["compile_model"] is True
    model, info = load_autotimm_model(made.path)
    assert info.compiled and not model.training
    want = made.model.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    if kind == "fcos":
        assert info.image_size == DET_SIZE  # from the DataModule hparams (with a pickled TransformConfig)
        assert raw["hyper_parameters"].get("compile_kwargs") is None  # a default user's hparams


# -- bad input --------------------------------------------------------------------------------------------
def _variant(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def _touch_marker(path: str) -> None:  # what an unsafe unpickler would run
    Path(path).write_text("unpickled")


class Payload:
    """Pickles as a call to ``_touch_marker``: the file appears only if someone unpickles unsafely."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


class SubclassedDict(collections.OrderedDict):
    pass


@pytest.fixture(scope="module")
def bad_files(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, type, list[str]]]:
    """name -> (file, expected error, fragments the message must contain)."""
    d = tmp_path_factory.mktemp("bad_ckpt")
    ml, seg = factory("multilabel").path, factory("seg_fcn").path
    data = ml.read_bytes()
    files: dict[str, tuple[Path, type, list[str]]] = {}
    (d / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    files["truncated"] = (d / "truncated.ckpt", ModelError, ["truncated.ckpt", "complete"])
    (d / "empty.ckpt").write_bytes(b"")
    files["empty"] = (d / "empty.ckpt", ModelError, ["not a PyTorch checkpoint"])
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "hyper_parameters": {"foo": 1}}, d / "foreign.ckpt")
    files["foreign"] = (d / "foreign.ckpt", ModelError, ["not from a supported AutoTimm task", "expected one of"])
    torch.save(torch.zeros(3), d / "tensor.pt")
    files["tensor"] = (d / "tensor.pt", ModelError, ["not a Lightning checkpoint", "state_dict"])
    # AutoTimm-looking hparams that are not a supported task / cannot be rebuilt / do not fit the weights
    files["no_task_marker"] = (
        _variant(ml, d / "no_marker.ckpt", lambda c: c["hyper_parameters"].pop("multi_label")),
        ModelError,
        ["not from a supported AutoTimm task", "ImageClassifier"],
    )
    files["unknown_head"] = (
        _variant(seg, d / "unet.ckpt", lambda c: c["hyper_parameters"].update(head_type="unet")),
        ModelError,
        ["cannot rebuild its SemanticSegmentor", "deeplabv3plus"],
    )
    files["num_classes_vs_weights"] = (
        _variant(seg, d / "ncls.ckpt", lambda c: c["hyper_parameters"].update(num_classes=7)),
        ModelError,
        ["do not fit", "size mismatch"],
    )
    files["no_num_classes"] = (
        _variant(ml, d / "nonum.ckpt", lambda c: c["hyper_parameters"].pop("num_classes")),
        ModelError,
        ["no valid num_classes"],
    )
    # pickled globals outside the allow-list: refused, never unpickled
    marker = d / "MARKER"
    files["payload_global"] = (
        _variant(ml, d / "payload.ckpt", lambda c: c["hyper_parameters"].update(extra=Payload(str(marker)))),
        ModelError,
        ["unsafe unpickling", "_touch_marker", "weights_only=True"],
    )
    files["namespace_global"] = (
        _variant(
            ml, d / "namespace.ckpt", lambda c: c.update(hyper_parameters=argparse.Namespace(**c["hyper_parameters"]))
        ),
        ModelError,
        ["unsafe unpickling", "argparse.Namespace"],
    )
    files["dict_subclass_global"] = (
        _variant(ml, d / "odict.ckpt", lambda c: c.update(state_dict=SubclassedDict(c["state_dict"]))),
        ModelError,
        ["unsafe unpickling", "SubclassedDict"],
    )
    assert not marker.exists()  # writing the files did not run the payload
    return files


BAD = [
    "truncated",
    "empty",
    "foreign",
    "tensor",
    "no_task_marker",
    "unknown_head",
    "num_classes_vs_weights",
    "no_num_classes",
    "payload_global",
    "namespace_global",
    "dict_subclass_global",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_is_refused(name, bad_files, tmp_path):
    path, error, fragments = bad_files[name]
    out = tmp_path / "bundle.pt"
    with pytest.raises(error) as exc:
        export_checkpoint(path, out)
    message = str(exc.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert not out.exists()
    assert not (path.parent / "MARKER").exists(), "the checkpoint's pickled payload ran"


def test_payload_global_is_refused_by_inspect_too(bad_files):
    path, _, _ = bad_files["payload_global"]
    marker = path.parent / "MARKER"
    with pytest.raises(ModelError, match="unsafe unpickling"):
        inspect_checkpoint(path)
    assert not marker.exists()
    # the payload is live: an unsafe load does run it (so its absence above means something)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text() == "unpickled"
    marker.unlink()


def test_a_datamodule_given_a_path_object_still_loads(factory, tmp_path):
    # data_dir=Path(...) is how many users build their DataModule: the path is pickled with it
    def with_path(ckpt):
        ckpt.setdefault("datamodule_hyper_parameters", {})["data_dir"] = Path("/data/train")

    path = _variant(factory("multilabel").path, tmp_path / "path.ckpt", with_path)
    info = inspect_checkpoint(path)
    assert info.datamodule is not None and info.datamodule["data_dir"] == Path("/data/train")


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        export_checkpoint(tmp_path / "nope.ckpt", tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="is a folder"):
        export_checkpoint(tmp_path, tmp_path / "b.pt")


@pytest.mark.parametrize("classes", ["circle,square", ["a", "b", "c", "d"]])
def test_class_count_must_match_the_head(classes, factory, tmp_path):
    made = factory("multilabel")
    out = tmp_path / "b.pt"
    with pytest.raises(ConfigError) as exc:
        export_checkpoint(made.path, out, classes=classes)
    n = len(classes) if isinstance(classes, list) else 2
    assert f"gives {n} names" in str(exc.value) and "has 3 classes" in str(exc.value)
    assert not out.exists()


# -- the CLI ---------------------------------------------------------------------------------------------
def _cli_export(ckpt: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotimm_stream", "export", str(ckpt), "-o", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow  # three interpreter starts that import torch and autotimm: 28-39 s measured on 2 shared cores
def test_cli_export_refuses_bad_checkpoints(bad_files, factory, tmp_path):
    """Exit code 2, one line on stderr naming the problem, no traceback, no file written."""
    cases = {
        "truncated": (bad_files["truncated"][0], (), "complete"),
        "tensor": (bad_files["tensor"][0], (), "not a Lightning checkpoint"),
        "classes": (factory("multilabel").path, ("--classes", "a,b"), "has 3 classes"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:  # each run imports torch and autotimm: ~10 s
        runs = {
            name: pool.submit(_cli_export, ckpt, tmp_path / f"{name}.pt", *extra)
            for name, (ckpt, extra, _) in cases.items()
        }
        done = {name: f.result() for name, f in runs.items()}
    for name, (_, _, fragment) in cases.items():
        proc = done[name]
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr and lines[0].startswith("autotimm-stream: error: ")
        assert fragment in lines[0], (name, lines[0])
        assert not (tmp_path / f"{name}.pt").exists(), name
