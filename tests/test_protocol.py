"""Wire protocol v1: the shipped JSON Schema, mask encodings, the client, PUSH, CURVE, heartbeats and slow subscribers.

Every engine here is real (generated H.264 clips, real bundles) and every socket a real ZeroMQ
socket on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from autotimm_stream.app import build_pipeline
from autotimm_stream.client import EosMessage, HeartbeatMessage, ResultMessage, StatusMessage, Subscriber, parse_message
from autotimm_stream.config import ZmqConfig, validate_config
from autotimm_stream.errors import ConfigError, SinkError
from autotimm_stream.messages import SourceState, StatusEvent
from autotimm_stream.protocol import ProtocolError, decode_mask, encode_mask, schema, validate
from autotimm_stream.sinks import ZmqSink
from autotimm_stream.sinks.base import SinkContext, SinkRunner
from tests.helpers import checked, free_port, read_jsonl, run, wait_for


def engine_config(source: Path, bundle: Path, out: Path, endpoint: str, zmq_over: dict | None = None, **source_over):
    data = {
        "sources": [{"id": "cam", "uri": str(source), "buffer_size": 4, **source_over}],
        "model": {"path": str(bundle)},
        "batching": {"max_batch": 4, "max_wait_ms": 5},
        "sinks": {"zmq": {"endpoint": endpoint, **(zmq_over or {})}, "video": {"enabled": False}},
        "output_dir": str(out),
    }
    return validate_config(data)


class Collector:
    """Receives typed messages on a thread until ``eos/cam`` (bounded wait)."""

    def __init__(self, sub: Subscriber):
        self.sub = sub
        self.messages: list = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._main, name="collector")
        self.thread.start()

    def _main(self) -> None:
        try:
            for msg in self.sub.messages(idle_timeout_s=20, until_eos={"cam"}):
                self.messages.append(msg)
        except ProtocolError as exc:  # a thread cannot fail the test: keep it for the assertion
            self.errors.append(str(exc))

    def join(self) -> list:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the subscriber never saw eos/cam"
        assert self.errors == []
        return self.messages


# -- the schema and the mask codecs -----------------------------------------------------------------
def test_shipped_schema_is_a_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert {"result", "status", "heartbeat", "eos", "detection", "segmentation"} <= set(schema()["$defs"])


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("shape", [(240, 320), (1, 1), (37, 53), (720, 1280)])
def test_masks_round_trip_exactly(encoding, shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.integers(0, 255, size=shape, dtype=np.uint8)
    mask[: shape[0] // 2] = 0  # large runs, as real class maps have
    spec, payload = encode_mask(mask, encoding)
    assert spec == {"encoding": encoding, "dtype": "uint8", "shape": list(shape), "frame": 2}
    back = decode_mask(json.loads(json.dumps(spec)), bytes(payload))
    assert back.dtype == np.uint8 and np.array_equal(back, mask)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_models_with_more_than_256_classes_send_uint16_masks(encoding):
    """The post-processor gives int64 ids above 256 classes: they travel as uint16, exactly."""
    mask = np.arange(37 * 53, dtype=np.int64).reshape(37, 53) % 300
    spec, payload = encode_mask(mask, encoding)
    assert spec["dtype"] == "uint16"
    back = decode_mask(spec, bytes(payload))
    assert back.dtype == np.uint16 and np.array_equal(back, mask)
    header = _result_header(width=53, height=37, mask=spec)
    assert validate(b"segmentation/cam", json.dumps(header), [bytes(payload)])["mask"]["dtype"] == "uint16"
    with pytest.raises(ProtocolError, match=r"\[0, 65535\]"):
        encode_mask(mask - 1, encoding)


def test_png_masks_are_much_smaller_for_class_maps():
    mask = np.zeros((720, 1280), dtype=np.uint8)
    mask[100:400, 200:700] = 3
    _, raw = encode_mask(mask, "raw")
    _, png = encode_mask(mask, "png")
    assert len(png) * 20 < len(raw)


def _result_header(**over):
    header = {
        "schema": 1,
        "source_id": "cam",
        "frame_index": 0,
        "pts": 0.0,
        "capture_ns": 1_700_000_000_000_000_000,
        "publish_ns": 1_700_000_000_010_000_000,
        "latency_ms": 10.0,
        "width": 4,
        "height": 2,
        "flags": [],
        "task": "segmentation",
        "model": "m",
        "model_version": "0123456789ab",
        "batch_size": 1,
        "timings_ms": dict.fromkeys(("decode", "queue", "preprocess", "wait", "infer", "post", "publish"), 1.0),
        "class_fractions": [{"class_id": 0, "label": "bg", "fraction": 1.0}],
        "mask": {"encoding": "raw", "dtype": "uint8", "shape": [2, 4], "frame": 2},
    }
    header.update(over)
    return header


@pytest.mark.parametrize(
    "topic, header, payload, error",
    [
        (b"segmentation/cam", _result_header(), [bytes(8)], None),
        (b"segmentation/cam", _result_header(schema=2), [bytes(8)], "schema"),
        (b"segmentation/cam2", _result_header(), [bytes(8)], "topic names source"),
        (b"detection/cam", _result_header(), [bytes(8)], "task: .detection. was expected"),
        (b"nonsense/cam", _result_header(), [bytes(8)], "expected '<kind>/<source_id>'"),
        (b"segmentation/cam", _result_header(), [bytes(7)], "needs 8 bytes"),
        (b"segmentation/cam", _result_header(), [], "no part 2"),
        (b"segmentation/cam", {k: v for k, v in _result_header().items() if k != "pts"}, [bytes(8)], "'pts'"),
        (b"segmentation/cam", _result_header(frame_index=-1), [bytes(8)], "frame_index"),
        (b"segmentation/cam", _result_header(flags=["blurry"]), [bytes(8)], "flags/0"),
        (b"segmentation/cam", b"{not json", [], "not JSON"),
        (b"eos/cam", {"schema": 1, "source_id": "cam", "frames": 3, "reason": "end"}, [], None),
        (b"eos/cam", {"schema": 1, "source_id": "cam", "frames": 3, "reason": "bored"}, [], "reason"),
    ],
)
def test_validate_says_what_is_wrong(topic, header, payload, error):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if error is None:
        assert validate(topic, raw, payload)["source_id"] == "cam"
        parse_message([topic, raw, *payload], check=True)
    else:
        with pytest.raises(ProtocolError, match=error):
            validate(topic, raw, payload)


def test_client_refuses_a_newer_schema_with_advice():
    with pytest.raises(ProtocolError, match="upgrade autotimm-stream"):
        parse_message([b"eos/cam", json.dumps({"schema": 2, "source_id": "cam"}).encode()])


_EOS = {"schema": 1, "source_id": "cam", "frames": 3, "reason": "end"}


@pytest.mark.parametrize(
    "parts, error",
    [
        # true and 1.0 equal 1 in Python, but neither is the integer schema 1
        ([b"eos/cam", json.dumps({**_EOS, "schema": True}).encode()], "expected .*'schema'.* integer 1, got true"),
        ([b"eos/cam", json.dumps({**_EOS, "schema": 1.0}).encode()], "expected .*'schema'.* integer 1, got 1.0"),
        ([b"eos/cam", json.dumps({**_EOS, "schema": "1"}).encode()], 'expected .*integer 1, got "1"'),
        ([b"eos/cam", json.dumps({k: v for k, v in _EOS.items() if k != "schema"}).encode()], "got null"),
        ([b"eos/cam", b"[1]"], "expected the header to be a JSON object, got list"),
        # the header announces a mask that never came: not a result without a mask
        ([b"segmentation/cam", json.dumps(_result_header()).encode()], "announces a mask.*got 2 parts"),
    ],
)
def test_client_refuses_what_schema_1_does_not_allow(parts, error):
    with pytest.raises(ProtocolError, match=error):
        parse_message(parts)


def test_client_decodes_a_mask_that_came_with_its_header():
    msg = parse_message([b"segmentation/cam", json.dumps(_result_header()).encode(), bytes(range(8))])
    assert isinstance(msg, ResultMessage)
    assert msg.mask is not None and msg.mask.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_wait_subscribers_counts_clients_that_share_a_prefix(endpoint, caplog):
    """Two clients with the default prefix "" are two subscriptions: open() returns once both are in,
    not after its timeout (libzmq passes on a repeated prefix only with XPUB_VERBOSE)."""
    sink = ZmqSink(ZmqConfig(endpoint=endpoint, wait_subscribers=2, wait_timeout_s=10.0))
    opener = threading.Thread(target=sink.open, name="opener")
    started = time.monotonic()
    opener.start()
    subs = [Subscriber(endpoint), Subscriber(endpoint)]  # they reconnect until the sink has bound
    try:
        opener.join(15)
        assert not opener.is_alive()
        assert time.monotonic() - started < 5.0, "open() waited for its timeout: two clients counted as one"
        assert "starting anyway" not in caplog.text
        sink.status(StatusEvent("cam", SourceState.RUNNING, None, "ok"))
        for sub in subs:  # both get what is published once open() returns
            got = sub.recv(5.0)
            assert isinstance(got, StatusMessage) and got.state == "running"
    finally:
        for sub in subs:
            sub.close()
        opener.join(15)
        sink.close()


def test_subscriptions_of_clients_that_come_and_go_are_not_left_queued(endpoint):
    sink = ZmqSink(ZmqConfig(endpoint=endpoint))
    sink.open()
    subs = [Subscriber(endpoint, topics=(f"status/cam{k}",)) for k in range(20)]  # a new prefix each
    try:
        for k, sub in enumerate(subs):  # a message received proves the sink has this subscription

            def got(k=k, sub=sub):
                sink.status(StatusEvent(f"cam{k}", SourceState.RUNNING, None, "ok"))
                return sub.recv(0.05) is not None

            wait_for(got, 10.0, f"subscriber {k} to be connected")
        assert sink._sock is not None and sink._sock.poll(0, zmq.POLLIN)  # 20 queued for the sink
        sink.tick()
        assert not sink._sock.poll(0, zmq.POLLIN)
    finally:
        for sub in subs:
            sub.close()
        sink.close()


# -- a real engine, read with the client ----------------------------------------------------------
@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_client_gets_typed_segmentation_results_with_exact_masks(clip, seg_bundle, tmp_path, endpoint, encoding):
    with Subscriber(endpoint, check=True) as sub:
        got = Collector(sub)
        cfg = engine_config(clip, seg_bundle, tmp_path, endpoint, {"wait_subscribers": 1, "mask_encoding": encoding})
        run(cfg)
        messages = got.join()
    results = [m for m in messages if isinstance(m, ResultMessage)]
    assert [m.frame_index for m in results] == list(range(48))
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    for m, row in zip(results, rows):
        assert m.task == "segmentation" and m.mask.shape == (240, 320) and m.mask.dtype == np.uint8
        assert m.header["mask"]["encoding"] == encoding
        # the decoded mask is exactly the class map the JSONL's fractions describe
        shares = np.bincount(m.mask.ravel(), minlength=256) / m.mask.size
        for c in row["class_fractions"]:
            assert shares[c["class_id"]] == pytest.approx(c["fraction"], abs=1e-6)
        assert m.class_fractions == {c["label"]: c["fraction"] for c in row["class_fractions"]}
        assert len(m.header["model_version"]) == 12
    assert [m.state for m in messages if isinstance(m, StatusMessage)] == ["running", "stopped"]
    assert isinstance(messages[-1], EosMessage) and messages[-1].frames == 48


@pytest.mark.slow
def test_png_and_raw_masks_are_identical_through_the_engine(clip, seg_bundle, tmp_path):
    masks = {}
    for encoding in ("raw", "png"):
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        with Subscriber(endpoint, topics=["segmentation/", "eos/"]) as sub:
            got = Collector(sub)
            run(
                engine_config(
                    clip, seg_bundle, tmp_path / encoding, endpoint, {"wait_subscribers": 1, "mask_encoding": encoding}
                )
            )
            masks[encoding] = [m.mask for m in got.join() if isinstance(m, ResultMessage)]
    assert len(masks["raw"]) == 48 and all(np.array_equal(a, b) for a, b in zip(masks["raw"], masks["png"]))


def test_heartbeats_report_each_live_source(bundle, tmp_path, endpoint):
    data = {
        "sources": [{"id": "cam", "type": "testsrc", "width": 160, "height": 120, "fps": 10}],
        "model": {"path": str(bundle)},
        "sinks": {"zmq": {"endpoint": endpoint, "heartbeat_s": 0.2}, "video": {"enabled": False}},
        "output_dir": str(tmp_path),
    }
    pipeline = build_pipeline(validate_config(data))
    beats: list[HeartbeatMessage] = []
    with Subscriber(endpoint, topics=["heartbeat/"], check=True) as sub:
        runner = threading.Thread(target=pipeline.run, name="engine")
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sum(b.frames_out > 0 for b in beats) < 3:
                msg = sub.recv(timeout_s=5)
                assert msg is not None, "no heartbeat within 5 s"
                beats.append(msg)
        finally:
            pipeline.stop()
            runner.join(15)
    assert not runner.is_alive() and pipeline.error is None
    running = [b for b in beats if b.frames_out > 0]
    assert len(running) >= 3 and all(b.source_id == "cam" and b.kind == "heartbeat" for b in beats)
    assert running[-1].state == "running" and running[-1].fps > 0
    assert running[-1].last_frame_index is not None and running[-1].header["uptime_s"] > 0
    assert [b.frames_out for b in beats] == sorted(b.frames_out for b in beats)


# -- delivery: slow subscribers, PUSH, CURVE -------------------------------------------------------
def test_a_subscriber_that_never_reads_costs_nothing_and_holds_bounded_memory(clip, seg_bundle, tmp_path, endpoint):
    """Big masks (75 KB each), a tiny high-water mark and a subscriber that never reads: the engine
    still infers and writes every frame, and what it could not send is counted, not queued."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 2)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        summary = run(engine_config(clip, seg_bundle, tmp_path, endpoint, {"wait_subscribers": 1, "hwm": 2}))
    finally:
        sub.close(0)
    assert summary["frames"] == 48 and len(read_jsonl(tmp_path / "predictions.jsonl")) == 48
    stats = summary["sinks"]["zmq"]
    # every message was either sent or counted as dropped; the queue toward the reader stayed
    # small (socket buffers plus two high-water marks), so most of them were dropped
    assert stats["dropped"] > 0 and stats["sent"] + stats["dropped"] >= 48 + 3
    assert stats["sent"] < 40


def test_push_mode_waits_for_a_late_puller_and_loses_nothing(clip, bundle, tmp_path, endpoint):
    cfg = engine_config(clip, bundle, tmp_path, endpoint, {"mode": "push", "hwm": 4})
    pipeline = build_pipeline(cfg)
    runner = threading.Thread(target=pipeline.run, name="engine")
    runner.start()
    try:
        # no peer yet: the engine holds its results back instead of losing them
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pipeline.stats(detail=False).frames < 8:
            time.sleep(0.05)
        assert pipeline.stats(detail=False).frames >= 8
        with Subscriber(endpoint, mode="pull", check=True) as pull:
            got = Collector(pull)
            messages = got.join()
        runner.join(30)
    finally:
        pipeline.stop()
        runner.join(15)
    results = [m.frame_index for m in messages if isinstance(m, ResultMessage)]
    assert results == list(range(48))
    summary = pipeline.summary()
    assert summary["sinks"]["zmq"]["mode"] == "push" and summary["sinks"]["zmq"]["dropped"] == 0


def test_push_mode_without_a_peer_still_stops(clip, bundle, tmp_path, endpoint):
    cfg = engine_config(clip, bundle, tmp_path, endpoint, {"mode": "push", "hwm": 2})
    pipeline = build_pipeline(cfg)
    runner = threading.Thread(target=pipeline.run, name="engine")
    runner.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pipeline.stats(detail=False).frames < 4:
        time.sleep(0.05)
    pipeline.stop()
    runner.join(cfg.drain_timeout_s + 10)
    assert not runner.is_alive(), "a PUSH socket with no peer must not hold the engine after stop"
    assert pipeline.summary()["sinks"]["zmq"]["sent"] == 0


def test_a_state_change_stuck_on_a_peerless_push_socket_does_not_hold_the_stop(endpoint):
    """The sink thread blocks sending a status event (PUSH waits for a peer) while its queue fills;
    ``finish`` must still end once the pipeline's give-up check fires (it sets ``halt``)."""
    halt = threading.Event()
    sink = ZmqSink(ZmqConfig(endpoint=endpoint, mode="push", hwm=1))
    sink.bind(SinkContext(abort=halt))  # as the pipeline does: its abort event frees a blocked send
    runner = SinkRunner(sink, halt, capacity=2)
    sink.open()
    runner.start()
    runner.notify(StatusEvent("cam", SourceState.STOPPED, SourceState.RUNNING, "stop requested"))
    # once the sink thread has taken the event it is inside the status send, waiting for a peer
    wait_for(lambda: not runner._events, 5, "the sink thread to take the status event")
    assert runner.submit([]) and runner.submit([])  # the queue is full, the sink takes nothing
    asked = []

    def give_up() -> bool:  # what Shutdown.delivery_stuck does once drain + grace have passed
        asked.append(time.monotonic())
        if len(asked) >= 3:
            halt.set()
        return halt.is_set()

    closer = threading.Thread(target=runner.finish, args=(give_up,), name="closer")
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "finish() kept waiting on a sink that takes nothing"
    assert runner.join(5)
    assert len(asked) >= 3 and runner.error is None
    assert sink.sent == 0 and sink.dropped >= 1  # the state change was dropped, and counted


def test_push_mode_refuses_wait_subscribers(clip, bundle, tmp_path, endpoint):
    with pytest.raises(ConfigError, match="sinks.zmq.*wait_subscribers applies to mode 'pub'"):
        engine_config(clip, bundle, tmp_path, endpoint, {"mode": "push", "wait_subscribers": 1})
    with pytest.raises(ValueError, match="wait_subscribers applies to mode 'pub'"):
        ZmqConfig(endpoint=endpoint, mode="push", wait_subscribers=1)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    import subprocess
    import sys

    folder = tmp_path / "keys"
    cmd = [sys.executable, "-m", "autotimm_stream", "keygen", str(folder), "server", "client", "stranger"]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    (folder / "clients").mkdir()
    (folder / "client.key").rename(folder / "clients" / "client.key")
    assert oct((folder / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    return folder


def test_curve_admits_only_known_clients(clip, bundle, tmp_path, endpoint, keys):
    zmq_over = {
        "wait_subscribers": 1,
        "wait_timeout_s": 20,
        "curve": {"secret_key": str(keys / "server.key_secret"), "clients_dir": str(keys / "clients")},
    }
    stranger = Subscriber(
        endpoint, curve_server_key=str(keys / "server.key"), curve_client_key=str(keys / "stranger.key_secret")
    )
    plain = Subscriber(endpoint)
    try:
        with Subscriber(
            endpoint,
            curve_server_key=str(keys / "server.key"),
            curve_client_key=str(keys / "client.key_secret"),
        ) as known:
            got = Collector(known)
            run(engine_config(clip, bundle, tmp_path, endpoint, zmq_over))
            messages = got.join()
        assert [m.frame_index for m in messages if isinstance(m, ResultMessage)] == list(range(48))
        # the engine is gone, so nothing can still be on its way to the other two
        assert stranger.recv(timeout_s=0.5) is None and plain.recv(timeout_s=0.5) is None
    finally:
        stranger.close()
        plain.close()


def test_curve_key_errors_are_clear(clip, bundle, tmp_path, endpoint, keys):
    bad = [
        ({"secret_key": str(keys / "missing.key_secret")}, "cannot read"),
        ({"secret_key": str(keys / "server.key")}, "holds only a public key"),
        ({"secret_key": str(keys / "server.key_secret"), "clients_dir": str(keys / "nope")}, "is not a folder"),
        ({"clients_dir": str(keys / "clients")}, "needs sinks.zmq.curve.secret_key"),
    ]
    for curve, message in bad:
        with pytest.raises(SinkError, match=message):
            build_pipeline(engine_config(clip, bundle, tmp_path, endpoint, {"curve": curve}))


def test_every_message_of_a_detection_run_follows_the_schema(clip, det_bundle, tmp_path, endpoint):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    received: list[list[bytes]] = []
    try:
        run(engine_config(clip, det_bundle, tmp_path, endpoint, {"wait_subscribers": 1}))
        while sub.poll(5000):
            received.append(sub.recv_multipart())
            if received[-1][0] == b"eos/cam":
                break
    finally:
        sub.close(0)
    headers = [checked(parts) for parts in received]
    assert [h for h in headers if "invalid" in h] == []
    assert sum(p[0] == b"detection/cam" for p in received) == 48
