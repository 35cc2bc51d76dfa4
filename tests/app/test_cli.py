"""The command line as a user meets it: real subprocesses, real files, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.helpers import CLI, assert_clean_failure, checked, cli, decode_pts, free_port, iou, write_config


def test_run_writes_outputs_and_summary(clip, bundle, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", str(clip), str(bundle), out)
    proc = cli("run", str(cfg), "--set", "batching.max_batch=4")
    assert proc.returncode == 0, proc.stderr
    assert "48 frames in" in proc.stderr and "0 dropped" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 48 and summary["error"] is None
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 48
    assert len(decode_pts(out / "annotated.mp4")[0]) == 48
    # the run report: its path printed with the summary, recorded in summary.json, plots beside it
    report = out / "report.md"
    assert f"report: {report}" in proc.stderr and summary["sinks"]["report"]["path"] == str(report)
    text = report.read_text()
    for png in ("report_fps.png", "report_latency.png"):
        assert f"]({png})" in text and (out / png).stat().st_size > 1000


def test_metrics_endpoint_serves_a_configured_run(clip, bundle, tmp_path):
    """metrics.enabled in a config: the engine serves /metrics, /healthz and /ready while it runs."""
    import urllib.request

    from autotimm_stream.app import build_pipeline
    from autotimm_stream.config import validate_config

    cfg = validate_config(
        {
            "sources": [{"id": "cam", "uri": str(clip), "realtime": True}],
            "model": {"path": str(bundle)},
            "sinks": {"zmq": {"enabled": False}, "video": {"enabled": False}, "report": {"enabled": False}},
            "metrics": {"enabled": True, "port": 0},
            "output_dir": str(tmp_path),
        }
    )
    pipeline = build_pipeline(cfg)
    server = next(s for s in pipeline.services if hasattr(s, "url"))
    pipeline.start()
    try:
        deadline = time.monotonic() + 30
        while pipeline.stats(detail=False).frames < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            body = r.read().decode()
        with urllib.request.urlopen(server.url + "/ready", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        pipeline.stop()
        pipeline.close()
    line = next(x for x in body.splitlines() if x.startswith('autotimm_stream_frames_out_total{source="cam"}'))
    assert float(line.split()[-1]) >= 5


@pytest.fixture
def not_a_video(tmp_path) -> Path:
    p = tmp_path / "notes.mp4"
    p.write_text("this is text, not video\n" * 50)
    return p


@pytest.fixture
def plain_torchscript(tmp_path) -> Path:
    p = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(p))
    return p


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_video", ["sources[0].uri", "no such file", "expected an existing video file"]),
        ("folder_video", ["sources[0].uri", "is a folder"]),
        ("not_a_video", ["sources[0].uri", "is not a video FFmpeg can read"]),
        ("bad_yaml", ["is not valid YAML at line"]),
        ("unknown_key", ["sources[0].polcy: unknown key"]),
        ("wrong_type", ["batching.max_batch", "valid integer", "got 'lots'"]),
        ("missing_model", ["model bundle", "not found", "autotimm-stream export"]),
        ("no_metadata", ["has no autotimm-stream metadata", "autotimm-stream export"]),
        ("missing_config", ["not found; expected a YAML file"]),
        ("bad_set", ["expected KEY=VALUE"]),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    case, fragments, clip, bundle, tmp_path, not_a_video, plain_torchscript
):
    out = tmp_path / "out"
    source, model, extra, args = str(clip), str(bundle), "", []
    if case == "missing_video":
        source = str(tmp_path / "nope.mp4")
    elif case == "folder_video":
        source = str(tmp_path)
    elif case == "not_a_video":
        source = str(not_a_video)
    elif case == "unknown_key":
        extra = "batching:\n  max_batch: 2\n"
    elif case == "wrong_type":
        extra = "batching:\n  max_batch: lots\n"
    elif case == "missing_model":
        model = str(tmp_path / "nope.pt")
    elif case == "no_metadata":
        model = str(plain_torchscript)
    elif case == "bad_set":
        args = ["--set", "batching.max_batch"]
    cfg = write_config(tmp_path / "c.yaml", source, model, out, extra)
    if case == "bad_yaml":
        cfg.write_text(cfg.read_text() + "  - : [\n")
    elif case == "unknown_key":
        cfg.write_text(cfg.read_text().replace("    uri:", "    polcy: block\n    uri:"))
    elif case == "missing_config":
        cfg = tmp_path / "missing.yaml"
    proc = cli("run", str(cfg), *args)
    assert_clean_failure(proc, *fragments)
    assert not out.exists()  # nothing half-written


def test_export_and_info(tmp_path):
    out = tmp_path / "m.pt"
    proc = cli("export", "--timm", "test_resnet", "--classes", "cat,dog", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    info = cli("info", str(out))
    meta = json.loads(info.stdout)
    assert meta["class_names"] == ["cat", "dog"] and meta["model_name"] == "test_resnet"
    bad = cli("export", "--timm", "no_such_net", "--num-classes", "2", "-o", str(tmp_path / "x.pt"))
    assert_clean_failure(bad, "no_such_net")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_sigterm_mid_run_exits_0_with_a_playable_video(bundle, media, tmp_path):
    from autotimm_stream.synthetic import write_clip

    long_clip = Path(write_clip(media / "long.mp4", frames=250, width=320, height=240, seed=5))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", str(long_clip), str(bundle), out)
    proc = subprocess.Popen(
        [*CLI, "run", str(cfg), "--set", "sources.0.realtime=true"], stderr=subprocess.PIPE, text=True
    )
    try:
        jsonl = out / "predictions.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (jsonl.exists() and jsonl.stat().st_size > 0):
            time.sleep(0.1)
        assert jsonl.exists() and jsonl.stat().st_size > 0, "the run never produced results"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in err and "Traceback" not in err
    rows = jsonl.read_text().splitlines()
    assert 0 < len(rows) < 250
    pts, _ = decode_pts(out / "annotated.mp4")
    assert len(pts) == len(rows)
    assert json.loads((out / "summary.json").read_text())["frames"] == len(rows)


@pytest.mark.slow
def test_demo_runs_from_nothing(tmp_path):
    out = tmp_path / "demo"
    proc = cli(
        "demo",
        "--out",
        str(out),
        "--frames",
        "50",
        "--set",
        f"sinks.zmq.endpoint=tcp://127.0.0.1:{free_port()}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "autotimm-stream listen tcp://127.0.0.1:" in proc.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 50
    assert len(decode_pts(out / "annotated.mp4")[0]) == 50
    # the demo shows real detections: replay the clip's scene for its ground truth boxes
    from autotimm_stream.app.demo import DEMO_SEED
    from autotimm_stream.synthetic import ShapeScene

    scene = ShapeScene(640, 360, seed=DEMO_SEED, dominant=False)
    found = wanted = correct = reported = 0
    for row in rows:
        truth = [(s.kind, s.box()) for s in scene.shapes]
        dets = row["detections"]
        reported += len(dets)
        wanted += len(truth)
        used: set[int] = set()
        for d in dets:
            hits = [
                i for i, (k, b) in enumerate(truth) if i not in used and k == d["label"] and iou(d["box"], b) >= 0.5
            ]
            if hits:
                used.add(hits[0])
                correct += 1
        found += len(used)
        scene.step()
    precision, recall = correct / max(1, reported), found / max(1, wanted)
    assert precision >= 0.75 and recall >= 0.75, f"precision {precision:.2f}, recall {recall:.2f} over 50 frames"


@pytest.mark.slow
def test_classifier_demo_still_names_the_shape(tmp_path):
    out = tmp_path / "demo"
    proc = cli(
        "demo",
        "--task",
        "classification",
        "--fast",
        "--out",
        str(out),
        "--frames",
        "30",
        "--set",
        "sinks.zmq.enabled=false",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    from autotimm_stream.app.demo import DEMO_SEED
    from autotimm_stream.synthetic import ShapeScene

    scene = ShapeScene(640, 360, seed=DEMO_SEED, dominant=True)
    truth = []
    for _ in range(30):
        truth.append(scene.labels()[0])
        scene.step()
    correct = sum(r["classes"][0]["label"] == t for r, t in zip(rows, truth))
    assert correct >= 27, f"{correct}/30 frames right"


@pytest.mark.slow
def test_segmentation_demo_paints_the_shapes(tmp_path):
    """The AutoTimm segmentor's demo: its masks (as published on ZMQ) against the scene's class map."""
    import zmq

    from autotimm_stream.app.demo import SEGMENTATION_DEMO_SEED
    from autotimm_stream.synthetic import SHAPES, ShapeScene

    frames = 40
    out = tmp_path / "demo"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)  # before the demo binds: zmq connects once it is there
    log = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [*CLI, "demo", "--task", "segmentation", "--fast", "--out", str(out), "--frames", str(frames)]
        + ["--set", f"sinks.zmq.endpoint={endpoint}", "--set", "sinks.zmq.wait_subscribers=1"]
        + ["--set", "sinks.zmq.wait_timeout_s=120"],
        stderr=log,
    )
    masks: dict[int, np.ndarray] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not sub.poll(1000):
                if proc.poll() is not None:
                    break
                continue
            parts = sub.recv_multipart()
            assert "invalid" not in checked(parts), checked(parts)
            topic, header, *payload = parts
            if topic.startswith(b"eos/"):
                break
            if topic == b"segmentation/demo":
                meta = json.loads(header)
                spec = meta["mask"]
                masks[meta["frame_index"]] = np.frombuffer(payload[0], dtype=spec["dtype"]).reshape(spec["shape"])
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close(0)
        log.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, err
    assert "demo_segmentor.pt" in err and "Traceback" not in err
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(frames)) and sorted(masks) == list(range(frames))
    pts, _ = decode_pts(out / "annotated.mp4")
    assert len(pts) == frames
    with av.open(str(out / "annotated.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (640, 360)

    # replay the clip's scene for its ground-truth class maps: 0 background, 1 + SHAPES.index(kind)
    names = ["background", *SHAPES]
    scene = ShapeScene(640, 360, seed=SEGMENTATION_DEMO_SEED, dominant=False)
    cm = np.zeros((4, 4), dtype=np.int64)
    for i, row in enumerate(rows):
        truth, mask = scene.render_mask(), masks[i]
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        cm += np.bincount(truth.ravel().astype(np.int64) * 4 + mask.ravel(), minlength=16).reshape(4, 4)
        # the JSONL's per-class pixel fractions describe the very mask that was published
        shares = np.bincount(mask.ravel(), minlength=4) / mask.size
        for f in row["class_fractions"]:
            assert f["label"] == names[f["class_id"]] and abs(f["fraction"] - shares[f["class_id"]]) < 1e-5
        scene.step()
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    report = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, iou))
    # measured with the shipped bundle on these 40 frames: mIoU 0.905 (background 0.994, circle 0.888,
    # square 0.865, triangle 0.872); over the whole 250-frame clip 0.894 (assets/demo_segmentor.json)
    assert iou.mean() >= 0.8, f"mIoU {iou.mean():.3f} ({report}) over {frames} frames"
    assert iou.min() >= 0.6, f"a class is barely found: {report}"


def test_zmq_address_in_use_is_a_clear_error(clip, bundle, tmp_path):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        out = tmp_path / "out"
        cfg = write_config(tmp_path / "c.yaml", str(clip), str(bundle), out)
        proc = cli("run", str(cfg), "--set", f"sinks.zmq.endpoint=tcp://127.0.0.1:{port}")
    finally:
        sock.close(0)
    assert_clean_failure(proc, "sinks.zmq.endpoint", f"cannot bind 'tcp://127.0.0.1:{port}'", "pick another port")
    assert not (out / "predictions.jsonl").exists()


def test_bundle_whose_metadata_lies_about_the_network(clip, tmp_path):
    from autotimm_stream.export.save import save_bundle
    from autotimm_stream.runtime.bundle import BundleMeta

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    traced = torch.jit.trace(net, torch.zeros(1, 3, 8, 8))
    meta = BundleMeta(task="classification", class_names=["a", "b"], input_size=(16, 16))  # wrong size
    bundle = tmp_path / "liar.pt"
    save_bundle(traced, meta, bundle)
    out = tmp_path / "out"
    proc = cli("run", str(write_config(tmp_path / "c.yaml", str(clip), str(bundle), out)))
    assert_clean_failure(proc, "fails on a [1, 3, 16, 16] input", "re-export")
    assert not (out / "predictions.jsonl").exists()


def test_listen_prints_what_a_running_engine_publishes(clip, bundle, tmp_path, endpoint):
    from autotimm_stream.app import build_pipeline
    from autotimm_stream.config import validate_config

    listener = subprocess.Popen(
        [*CLI, "listen", endpoint, "--json", "--validate", "--count", "51", "--timeout", "60"]
        + ["--topic", "classification/", "--topic", "status/", "--topic", "eos/"],  # no heartbeats
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cfg = validate_config(
            {
                "sources": [{"id": "cam", "uri": str(clip)}],
                "model": {"path": str(bundle)},
                "sinks": {"zmq": {"endpoint": endpoint, "wait_subscribers": 1, "wait_timeout_s": 30}},
                "output_dir": str(tmp_path),
            }
        )
        build_pipeline(cfg).run()
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    messages = [json.loads(line) for line in out.splitlines()]
    # state changes jump the results queue: "stopped" comes before the last results, "eos" last
    assert messages[-1]["topic"] == "eos/cam"
    status = [m["state"] for m in messages if m["topic"] == "status/cam"]
    assert status == ["running", "stopped"]
    results = [m for m in messages if m["topic"] == "classification/cam"]
    assert [m["frame_index"] for m in results] == list(range(48))
