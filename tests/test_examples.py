"""The examples work: each short one runs as a real script on the bundled demo model, and the
training scripts (too long to run here) still start and parse their command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .helpers import CLI, free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TRAINING = ["train_demo_classifier.py", "train_demo_detector.py", "train_demo_segmentor.py"]
SHORT = ["run_pipeline.py", "custom_sink.py", "add_source.py", "subscribe.py"]


def run_example(name: str, *args: str, timeout: float = 120) -> str:
    """Run ``examples/<name>`` from the repository root as a user would; its stdout (exit status 0 checked)."""
    proc = subprocess.run(
        [sys.executable, f"examples/{name}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_pipeline_prints_the_typed_statistics_of_a_real_run(tmp_path):
    out = run_example("run_pipeline.py", "--out", str(tmp_path), "--frames", "30")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 30 and summary["sources"]["cam1"]["frames_out"] == 30
    assert summary["sources"]["cam1"]["state"] == "stopped" and summary["error"] is None
    records = jsonl(tmp_path / "predictions.jsonl")
    assert [r["frame_index"] for r in records] == list(range(30))
    printed = re.search(r"frames: 30 in ([0-9.]+) s", out)
    assert printed and abs(float(printed.group(1)) - summary["elapsed_s"]) <= 0.006  # 2 decimals vs 3
    assert "cam1: 30 decoded, 30 results, state stopped" in out
    found = Counter(d["label"] for r in records for d in r["detections"])
    assert sum(found.values()) > 0  # the demo detector finds the clip's shapes
    assert "objects: " + ", ".join(f"{k} {n}" for k, n in found.most_common()) in out


def test_custom_sink_counts_what_the_jsonl_sink_wrote_and_alerts(tmp_path):
    out = run_example("custom_sink.py", "--out", str(tmp_path), "--alert", "square", "--min-score", "0.5")
    records = jsonl(tmp_path / "predictions.jsonl")  # the configured sink, beside the custom one
    assert len(records) == 50
    seen = [{d["label"] for d in r["detections"] if d["score"] >= 0.5} for r in records]
    counts = Counter(d["label"] for r in records for d in r["detections"] if d["score"] >= 0.5)
    assert counts, "the demo detector found nothing to count"
    assert f"class_counter: 50 frames, objects: {', '.join(f'{k} {n}' for k, n in counts.most_common())}" in out
    # an alert each time a square comes into view after a frame without one, and no other class
    appeared = [i for i, labels in enumerate(seen) if "square" in labels and (i == 0 or "square" not in seen[i - 1])]
    assert len(appeared) > 1, "expected squares to come and go in the clip"
    alerts = [int(m) for m in re.findall(r"^ALERT cam1 #(\d+) t=[\d.]+s: square appeared$", out, re.M)]
    assert alerts == appeared and out.count("ALERT") == len(alerts)
    assert "cam1: end of stream after 50 frames (end)" in out


def test_add_source_adds_and_removes_sources_of_a_running_pipeline(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = run_example("add_source.py", "--endpoint", endpoint, "--frames", "5", "--out", str(tmp_path))
    assert "add: {'ok': True, 'id': 'cam2'}" in out
    assert "list: [('clip', 'stopped'), ('cam2', 'running')]" in out
    assert "remove: {'ok': True, 'id': 'cam2', 'stopped': True}" in out
    assert re.search(r"^clip: 25 results, 0 dropped, state stopped, removed False$", out, re.M)
    live = re.search(r"^cam2: (\d+) results, \d+ dropped, state stopped, removed True$", out, re.M)
    assert live and int(live[1]) >= 5
    per_source = Counter(r["source_id"] for r in jsonl(tmp_path / "predictions.jsonl"))
    assert per_source == {"clip": 25, "cam2": int(live[1])}
    assert f"total: {25 + int(live[1])} results, drained True" in out


def test_subscribe_prints_what_a_running_demo_publishes(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = subprocess.Popen(
        [sys.executable, "examples/subscribe.py", endpoint, "--count", "30", "--timeout", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        demo = subprocess.run(
            [*CLI, "demo", "--fast", "--frames", "30", "--out", str(tmp_path), "--no-progress"]
            + ["--set", f"sinks.zmq.endpoint={endpoint}", "--set", "sinks.zmq.wait_subscribers=1"]
            + ["--set", "sinks.zmq.wait_timeout_s=30", "--set", "sinks.video.enabled=false"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        out, err = sub.communicate(timeout=30)
    finally:
        sub.kill()
        sub.wait(5)
    assert sub.returncode == 0, err[-3000:]
    lines = re.findall(r"^detection/demo #(\d+) t=[\d.]+s (\d+) objects .*latency=\d+ms$", out, re.M)
    # every frame, in order, with as many objects as the engine wrote for it
    expected = [(str(r["frame_index"]), str(len(r["detections"]))) for r in jsonl(tmp_path / "predictions.jsonl")]
    assert lines == expected and len(lines) == 30
    assert out.rstrip().endswith("30 results")


@pytest.mark.parametrize("script", TRAINING)
def test_training_script_parses_its_command_line(script):
    proc = subprocess.run(
        [sys.executable, f"examples/training/{script}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"usage: {script} ") and "--steps" in proc.stdout
    assert f"python examples/training/{script}" in (EXAMPLES / "training" / script).read_text()


@pytest.mark.parametrize("name", SHORT)
def test_short_example_says_what_it_shows_and_how_to_run_it(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"\nRun: python examples/{name}" in text
    assert "def main() -> int:" in text and len(text.splitlines()) <= 90


def test_example_paths_named_by_the_package_exist():
    named = {
        m for f in (ROOT / "autotimm_stream").rglob("*.py") for m in re.findall(r"examples/[\w/]+\.py", f.read_text())
    }
    assert "examples/training/train_demo_detector.py" in named
    assert sorted(p for p in named if not (ROOT / p).is_file()) == []
