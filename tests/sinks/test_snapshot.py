"""Snapshot JPEGs: when they are taken, what they hold, where they go; then through the real engine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from autotimm_stream.config import SnapshotConfig, validate_config
from autotimm_stream.errors import ConfigError, SinkError
from autotimm_stream.frame import Frame
from autotimm_stream.messages import ClassFraction, Detection, EndOfStream, Prediction, Result
from autotimm_stream.sinks.annotate import draw_result
from autotimm_stream.sinks.snapshot import SnapshotSink, check_classes, safe_name
from tests.helpers import iou

FPS = 10


def image(h: int = 120, w: int = 160) -> np.ndarray:
    """Flat colour blocks: JPEG keeps them within a few grey levels, and a channel swap shows."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (200, 30, 30)  # red left half
    img[:, w // 2 :] = (30, 30, 200)  # blue right half
    return img


def frame(index: int, source: str = "cam", pts: float | None = -1.0, capture_ns: int = 0, **kw) -> Frame:
    pts = index / FPS if pts == -1.0 else pts
    return Frame(source_id=source, index=index, pts=pts, capture_ns=capture_ns, image=kw.pop("img", image()), **kw)


def det(index: int, *found: tuple[str, float], **kw) -> Result:
    dets = [Detection(box=(20.0, 20.0, 60.0, 70.0), class_id=0, label=label, score=s) for label, s in found]
    return Result(frame=frame(index, **kw), task="detection", detections=dets)


def sink(tmp_path: Path, classes=("dog",), **kw) -> SnapshotSink:
    s = SnapshotSink(tmp_path / "snaps", SnapshotConfig(classes=list(classes), **kw))
    s.open()
    return s


def jpgs(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -- when ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "presence, expected",
    [
        ("..........", []),  # never there
        ("..XXXXXXXXXXXXXXXXXXXXXXX", [2, 12, 22]),  # appears (rising edge), then once per cooldown
        ("X.X.X.X.X.X.X.X.X.X.X.X.X", [0, 10, 20]),  # flickers: not one file per flicker
        ("XXX............XXX", [0, 15]),  # leaves, comes back after the cooldown: its first frame again
        ("XXX...XXX.......XX", [0, 16]),  # comes back within the cooldown: waits for it
    ],
    ids=["absent", "stays", "flickers", "returns_late", "returns_early"],
)
def test_rising_edge_then_at_most_once_per_cooldown(tmp_path, presence, expected):
    s = sink(tmp_path, cooldown_s=1.0)  # 10 frames at 10 fps
    s.write([det(i, *([("dog", 0.9)] if c == "X" else [])) for i, c in enumerate(presence)])
    assert jpgs(tmp_path / "snaps") == [f"cam_{i:08d}_dog.jpg" for i in expected]
    assert s.stats()["written"] == len(expected)


def test_cooldown_is_per_source_and_class(tmp_path):
    s = sink(tmp_path, classes=("dog", "cat"), cooldown_s=1.0)
    s.write([det(0, ("dog", 0.9)), det(0, ("dog", 0.9), source="b"), det(1, ("dog", 0.9), ("cat", 0.8))])
    assert jpgs(tmp_path / "snaps") == ["b_00000000_dog.jpg", "cam_00000000_dog.jpg", "cam_00000001_cat.jpg"]
    assert s.stats()["classes"] == {"dog": 2, "cat": 1}


def test_frames_without_pts_use_their_capture_time(tmp_path):
    s = sink(tmp_path, cooldown_s=1.0)
    s.write([det(i, ("dog", 0.9), pts=None, capture_ns=i * 400_000_000) for i in range(6)])  # every 0.4 s
    assert jpgs(tmp_path / "snaps") == ["cam_00000000_dog.jpg", "cam_00000003_dog.jpg"]


def test_time_going_backwards_starts_afresh_and_a_new_stream_too(tmp_path):
    s = sink(tmp_path, cooldown_s=10.0)
    s.write([det(0, ("dog", 0.9), pts=50.0), det(1, ("dog", 0.9), pts=51.0)])
    s.write([det(2, ("dog", 0.9), pts=0.0)])  # the source's clock restarted (a looping file)
    s.end_of_stream(EndOfStream("cam", frames=3))
    s.write([det(3, ("dog", 0.9), pts=5.0)])  # the same id added again: its own clock
    assert jpgs(tmp_path / "snaps") == ["cam_00000000_dog.jpg", "cam_00000002_dog.jpg", "cam_2_00000003_dog.jpg"]


def _shade(path: str) -> float:
    return float(cv2.imread(path, cv2.IMREAD_GRAYSCALE).mean())


def test_a_source_added_again_never_overwrites_its_first_snapshots(tmp_path):
    """Its frame indices restart at 0: each later session gets its own names (as the video's files do)."""
    s = sink(tmp_path, annotated=False)
    for session, shade in enumerate((10, 130, 250)):
        if session:
            s.end_of_stream(EndOfStream("cam", frames=1, reason="removed"))
        s.write([det(0, ("dog", 0.9), img=np.full((32, 32, 3), shade, np.uint8))])
    names = ["cam_00000000_dog.jpg", "cam_2_00000000_dog.jpg", "cam_3_00000000_dog.jpg"]
    assert jpgs(tmp_path / "snaps") == names
    assert s.paths == [str(tmp_path / "snaps" / n) for n in names]
    assert s.stats()["written"] == 3
    assert [_shade(p) for p in s.paths] == pytest.approx([10, 130, 250], abs=3)  # each session's own frame


def test_sources_whose_names_sanitise_alike_never_overwrite_each_other(tmp_path):
    s = sink(tmp_path)
    s.write([det(0, ("dog", 0.9), source="cam 1"), det(0, ("dog", 0.9), source="cam/1")])
    assert jpgs(tmp_path / "snaps") == ["cam_1_00000000_dog.jpg", "cam_1_00000000_dog_2.jpg"]
    assert s.stats()["written"] == 2


def _seg(fraction: float) -> Result:
    names = ["background", "dog"]
    return Result(
        frame=frame(0),
        task="segmentation",
        class_fractions=[ClassFraction(0, names[0], 1 - fraction), ClassFraction(1, names[1], fraction)],
    )


def _cls(task: str, score: float, label: str = "dog") -> Result:
    return Result(frame=frame(0), task=task, classes=[Prediction(1, label, score)])


@pytest.mark.parametrize(
    "result, taken",
    [
        (det(0, ("dog", 0.49)), False),
        (det(0, ("dog", 0.5)), True),  # min_score is inclusive
        (det(0, ("cat", 0.99), ("dog", 0.2)), False),  # another class does not count
        (det(0, ("cat", 0.99), ("dog", 0.7)), True),  # any detection of the class will do
        (_cls("classification", 0.49), False),
        (_cls("classification", 0.51), True),
        (_cls("classification", 0.9, "cat"), False),
        (_cls("multilabel", 0.6), True),
        (_seg(0.009), False),
        (_seg(0.01), True),  # min_fraction is inclusive
        (_seg(0.4), True),
    ],
    ids=[
        "det_below",
        "det_at_min_score",
        "det_other_class",
        "det_among_others",
        "cls_below",
        "cls_above",
        "cls_other_class",
        "multilabel",
        "seg_below",
        "seg_at_min_fraction",
        "seg_large",
    ],
)
def test_what_counts_as_present(tmp_path, result, taken):
    s = sink(tmp_path, min_score=0.5, min_fraction=0.01)
    s.write([result])
    assert s.stats()["written"] == int(taken)


def test_max_files_bounds_disk_use_counts_and_warns_once(tmp_path, caplog):
    s = sink(tmp_path, classes=("dog", "cat"), cooldown_s=0.0, max_files=3)
    with caplog.at_level(logging.WARNING, logger="autotimm_stream.sinks.snapshot"):
        s.write([det(0, ("dog", 0.9)), det(1, ("dog", 0.9), ("cat", 0.9)), det(2, ("cat", 0.9)), det(3, ("dog", 0.9))])
    assert jpgs(tmp_path / "snaps") == ["cam_00000000_dog.jpg", "cam_00000001_cat.jpg", "cam_00000001_dog.jpg"]
    stats = s.stats()
    assert (stats["written"], stats["skipped"], stats["failed"]) == (3, 2, 0)
    assert stats["classes"] == {"dog": 2, "cat": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "max_files (3) reached" in warnings[0]


# -- where -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("dog", "dog"),
        ("traffic light", "traffic_light"),
        ("a/b\\c", "a_b_c"),
        ("../../etc/passwd", "etc_passwd"),  # never leaves the folder, never hidden
        ("-rf", "rf"),  # never looks like an option
        ("猫", "猫"),  # letters of any script stay
        ("???", "x"),
        ("x" * 100, "x" * 64),
    ],
)
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_file_names_are_sanitised_and_stay_unique(tmp_path):
    s = sink(tmp_path, classes=("traffic light", "traffic/light", "../up"), cooldown_s=0.0)
    s.write([det(7, ("traffic light", 0.9), ("traffic/light", 0.9), ("../up", 0.9), source="cam.2")])
    assert jpgs(tmp_path / "snaps") == [
        "cam.2_00000007_traffic_light.jpg",
        "cam.2_00000007_traffic_light_1.jpg",  # "traffic/light" sanitises alike: its position keeps it apart
        "cam.2_00000007_up.jpg",
    ]
    assert not list((tmp_path / "snaps").glob(".*"))  # no temporary file left behind


# -- what ------------------------------------------------------------------------------------------
def _decoded(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("annotated", [True, False])
def test_jpeg_is_the_frame_in_its_colours_annotated_or_not(tmp_path, annotated):
    s = sink(tmp_path, annotated=annotated, quality=95)
    r = det(3, ("dog", 0.9), img=image(121, 161))  # odd sizes stay as they are
    s.write([r])
    got = _decoded(s.paths[0]).astype(int)
    assert got.shape == (121, 161, 3)
    drawn, raw = draw_result(r).astype(int), r.frame.image.astype(int)
    assert (drawn != raw).any(axis=2).mean() > 0.02  # the drawing changes enough pixels to tell them apart
    want, other = (drawn, raw) if annotated else (raw, drawn)
    assert np.abs(got - want).mean() < 3  # JPEG's loss only
    assert np.abs(got - other).mean() > 2 * np.abs(got - want).mean()
    red = got[84:92, 66:76].mean(axis=(0, 1))  # clear of the box, the panel and the footer
    assert np.abs(red - (200, 30, 30)).max() < 8  # red stays red: RGB was turned into OpenCV's BGR


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SinkError, match=r"sinks\.snapshot\.folder: cannot create .*pick a writable folder"):
        SnapshotSink(blocker / "snaps", SnapshotConfig(classes=["dog"])).open()


def test_write_failures_are_counted_not_raised(tmp_path):
    s = sink(tmp_path, cooldown_s=0.0)
    os.rmdir(tmp_path / "snaps")  # the folder vanished under a running engine
    s.write([det(0, ("dog", 0.9)), det(1, ("dog", 0.9))])
    assert (s.stats()["written"], s.stats()["failed"]) == (0, 2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"classes": "dog"}, "sinks.snapshot.classes: Input should be a valid list, got 'dog'"),
        ({"classes": ["dog", ""]}, "sinks.snapshot.classes[1]: String should have at least 1 character, got ''"),
        ({"min_score": 1.5}, "sinks.snapshot.min_score: Input should be less than or equal to 1, got 1.5"),
        ({"cooldown_s": -1}, "sinks.snapshot.cooldown_s: Input should be greater than or equal to 0, got -1"),
        ({"max_files": 0}, "sinks.snapshot.max_files: Input should be greater than or equal to 1, got 0"),
        ({"quality": 101}, "sinks.snapshot.quality: Input should be less than or equal to 100, got 101"),
    ],
)
def test_bad_settings_name_the_field(kwargs, fragment):
    snapshot = {"enabled": True, "classes": ["dog"], **kwargs}
    with pytest.raises(ConfigError) as err:
        validate_config(
            {"sources": [{"id": "a", "uri": "a.mp4"}], "model": {"path": "m.pt"}, "sinks": {"snapshot": snapshot}}
        )
    assert fragment in str(err.value)


def test_check_classes_says_what_was_expected_and_how_to_fix_it():
    check_classes(["dog"], ["cat", "dog"])  # fine
    with pytest.raises(ConfigError) as err:
        check_classes(["Dog", "dgo", "zebra", "cat"], ["cat", "dog", "bird"])
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert msg.startswith("sinks.snapshot.classes: 'Dog', 'dgo', 'zebra' not among the model's 3 classes")
    assert "did you mean 'Dog' -> 'dog', 'dgo' -> 'dog'?" in msg
    assert "expected names from ['cat', 'dog', 'bird']" in msg and "autotimm-stream info" in msg


# -- through the engine ----------------------------------------------------------------------------
@pytest.mark.slow
def test_engine_snapshots_the_frames_where_the_demo_detector_finds_a_class(media, tmp_path):
    from autotimm_stream.app import build_sinks, build_sources
    from autotimm_stream.app.demo import DEMO_SEED, demo_bundle_path
    from autotimm_stream.config import BatchPolicy
    from autotimm_stream.pipeline import Pipeline
    from autotimm_stream.runtime.runner import ModelRunner
    from autotimm_stream.synthetic import ShapeScene, write_clip

    frames, fps, cooldown = 20, 25, 0.2  # the detector takes ~0.1 s a frame on two cores
    clip = write_clip(
        media / "shapes_snap.mp4", frames=frames, width=320, height=240, fps=fps, seed=DEMO_SEED, dominant=False
    )
    out = tmp_path / "out"
    cfg = validate_config(
        {
            "sources": [{"id": "shapes", "uri": clip}],
            "model": {"path": demo_bundle_path("detection")},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}},
            "output_dir": str(out),
        }
    )
    runner = ModelRunner(cfg.model.path)
    settings = SnapshotConfig(classes=["circle", "square", "triangle"], min_score=0.5, cooldown_s=cooldown)
    snap = SnapshotSink(out / "snapshots", settings)
    check_classes(snap.classes, runner.meta.class_names)  # what build_pipeline does before anything is written
    sources = build_sources(cfg)
    pipeline = Pipeline(sources, runner, [*build_sinks(cfg, sources), snap], BatchPolicy(max_batch=4, max_wait_ms=5.0))
    summary = pipeline.run().to_json()
    assert pipeline.error is None, pipeline.error
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(frames))

    # the rule, replayed on what the engine reported, gives exactly the files on disk
    expected, last = [], {}
    for r in rows:
        for label in dict.fromkeys(d["label"] for d in r["detections"] if d["score"] >= 0.5):
            if label not in last or r["pts"] - last[label] >= cooldown - 1e-6:
                last[label] = r["pts"]
                expected.append(f"shapes_{r['frame_index']:08d}_{label}.jpg")
    assert jpgs(out / "snapshots") == sorted(expected)
    assert summary["sinks"]["snapshot"]["written"] == len(expected)

    # each snapshot shows a real object of its class: a detection of it there matches the scene's truth
    scene = ShapeScene(320, 240, seed=DEMO_SEED, dominant=False)
    truth = []
    for _ in range(frames):
        truth.append([(s.kind, s.box()) for s in scene.shapes])
        scene.step()
    for name in expected:
        index, label = int(name.split("_")[1]), name.rsplit("_", 1)[1].removesuffix(".jpg")
        boxes = [d["box"] for d in rows[index]["detections"] if d["label"] == label and d["score"] >= 0.5]
        assert any(iou(b, t) >= 0.5 for b in boxes for k, t in truth[index] if k == label), name
    assert {n.rsplit("_", 1)[1] for n in expected} >= {"circle.jpg", "triangle.jpg"}  # both classes in view
    for name in expected[:3]:
        assert _decoded(str(out / "snapshots" / name)).shape == (240, 320, 3)
