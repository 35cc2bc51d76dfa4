"""Bad input is refused where it enters (config, bundle metadata, command line), naming what is wrong."""

from __future__ import annotations

import copy

import pytest

from autotimm_stream.cli import main
from autotimm_stream.config import load_config, validate_config, validate_source
from autotimm_stream.errors import ConfigError, ModelError
from autotimm_stream.runtime.bundle import BundleMeta

BASE = {"sources": [{"id": "cam1", "uri": "a.mp4"}], "model": {"path": "m.pt"}}
RTSP = {"id": "cam1", "type": "rtsp", "uri": "rtsp://h/x"}


def _with(path: str, value: object) -> dict:
    """BASE with ``a.b.c`` set to value (sections made as needed)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


# -- config: error paths -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "validate, data, message",
    [
        # keys spelled like a source type are keys, not the union's tag
        (validate_config, {**BASE, "sources": [{"id": "a", "uri": "x.mp4", "url": "y"}]}, "config: sources[0].url: unknown key"),
        (validate_config, {**BASE, "sources": [{"id": "a", "uri": "x.mp4", "folder": "y"}]}, "config: sources[0].folder: unknown key"),
        (validate_config, {**BASE, "sources": [{**RTSP, "camera": 1}]}, "config: sources[0].camera: unknown key"),
        (validate_config, {**BASE, "sources": [{**RTSP, "reconnect": {"rtsp": 1}}]}, "config: sources[0].reconnect.rtsp: unknown key"),
        (validate_config, {**BASE, "testsrc": 1}, "config: testsrc: unknown key"),
        (validate_source, {**RTSP, "url": "z"}, "source: url: unknown key"),
        (validate_source, {"id": "a", "uri": "x", "file": 1}, "source: file: unknown key"),
        (validate_source, {"id": "a", "type": "testsrc", "camera": 0}, "source: camera: unknown key"),
        # the tag itself still adds nothing
        (validate_config, {**BASE, "sources": ["x.mp4"]}, "config: sources[0]: Input should be a valid dictionary"),
        (validate_config, {**BASE, "sources": [{**RTSP, "uri": "http://h/x"}]}, "config: sources[0].uri: String should match"),
    ],
)  # fmt: skip
def test_config_error_names_the_key(validate, data, message):
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {**BASE, "sources": [{**RTSP, "reconnect": {"initial_delay_s": 5, "max_delay_s": 1}}]},
            "config: sources[0].reconnect: max_delay_s (1.0) must be >= initial_delay_s (5.0)",
        ),
        (
            _with("sinks.zmq", {"mode": "push", "wait_subscribers": 1}),
            "config: sinks.zmq: wait_subscribers applies to mode 'pub'; a PUSH socket waits for a peer by itself",
        ),
    ],
)
def test_section_checks_read_as_plain_messages(data, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert str(info.value) == expected  # no "Value error, " and no ", got dict"


# -- config: file names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("sinks.video.filename", ""),
        ("sinks.video.filename", "{source}/"),
        ("sinks.video.filename", "."),
        ("sinks.jsonl.filename", ""),
        ("sinks.jsonl.filename", "runs/"),
        ("sinks.jsonl.filename", "runs/.."),
    ],
)
def test_file_names_are_checked_when_the_config_is_read(field, value):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(field, value))
    message = str(info.value)
    assert message.startswith(f"config: {field}: expected a file name"), message
    assert message.endswith(f"got {value!r}"), message


@pytest.mark.parametrize(
    "field, value",
    [
        ("sinks.video.filename", "{source}/annotated.mp4"),
        ("sinks.video.filename", "{source}.mp4"),
        ("sinks.jsonl.filename", "runs/predictions.jsonl"),
    ],
)
def test_good_file_names_pass(field, value):
    cfg = validate_config(_with(field, value))
    section, name = field.split(".")[1:]
    assert getattr(getattr(cfg.sinks, section), name) == value


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder; expected a YAML file$"):
        load_config(tmp_path)
    (tmp_path / "run.yaml").write_text("model:\n  path: m.pt\n")
    with pytest.raises(ConfigError, match=r"is a folder; expected a YAML file such as .*run\.yaml"):
        load_config(tmp_path)


# -- config: model.device and float fields -------------------------------------------------------
GOOD_DEVICES = ["cpu", "auto", "cuda", "cuda:0", "cuda:7", "cuda:127", "cpu:0"]
BAD_DEVICES = ["gpu", "mps", "meta", "CUDA", "Cpu", " cpu", "cuda ", "", "cuda:", "cuda:-1", "cuda:01", "cuda:x"]


@pytest.mark.parametrize("device", BAD_DEVICES + ["cuda:128", "cuda:255"])
def test_model_device_is_checked_when_the_config_is_read(device):
    """Not only when the runner resolves it, after the sources and sinks were built."""
    with pytest.raises(ConfigError) as info:
        validate_config(_with("model.device", device))
    message = str(info.value)
    assert message.startswith("config: model.device: expected 'cpu', 'cuda', 'cuda:N'"), message
    assert message.endswith(f"got {device!r}"), message


@pytest.mark.parametrize("device", GOOD_DEVICES)
def test_good_devices_pass(device):
    assert validate_config(_with("model.device", device)).model.device == device


@pytest.mark.parametrize("device", GOOD_DEVICES + BAD_DEVICES + ["cuda:128", "cuda:256"])
def test_config_and_runner_agree_on_devices(device):
    """The config accepts a device exactly when the runner's resolve_device understands it (a
    missing GPU aside: that is a property of the machine, not of the config)."""
    from autotimm_stream.runtime.runner import resolve_device

    try:
        resolve_device(device)
        runner_accepts = True
    except ConfigError as exc:
        runner_accepts = "not available" in str(exc)
    assert runner_accepts == (device in GOOD_DEVICES)


@pytest.mark.parametrize(
    "field",
    [
        "sinks.zmq.heartbeat_s",
        "sinks.zmq.wait_timeout_s",
        "sinks.report.bucket_s",
        "sinks.snapshot.cooldown_s",
        "batching.max_wait_ms",
        "drain_timeout_s",
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "inf"])
def test_float_fields_must_be_finite(field, value):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(field, value))
    assert str(info.value).startswith(f"config: {field}: "), str(info.value)


@pytest.mark.parametrize(
    "field, too_big",
    [("sinks.zmq.heartbeat_s", 3601), ("sinks.zmq.wait_timeout_s", 3601), ("sinks.report.bucket_s", 3601)],
)
def test_unbounded_float_fields_got_an_upper_bound(field, too_big):
    with pytest.raises(ConfigError, match=rf"^config: {field}: Input should be less than or equal to 3600, got 3601$"):
        validate_config(_with(field, too_big))
    validate_config(_with(field, 3600))


def test_heartbeat_zero_still_means_none():
    assert validate_config(_with("sinks.zmq.heartbeat_s", 0)).sinks.zmq.heartbeat_s == 0


def test_an_infinite_heartbeat_from_yaml_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sources: [{id: c, uri: a.mp4}]\nmodel: {path: m.pt}\nsinks: {zmq: {heartbeat_s: .inf}}\n")
    with pytest.raises(ConfigError, match=r"sinks\.zmq\.heartbeat_s: Input should be a finite number, got inf$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"sinks\.zmq\.wait_timeout_s: Input should be a finite number, got inf$"):
        load_config(path, ["sinks.zmq.heartbeat_s=1", "sinks.zmq.wait_timeout_s=.inf"])


# -- bundle metadata -------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [0, -2, 2.5, True])
def test_bundle_top_k_must_be_positive(top_k):
    with pytest.raises(ModelError, match=rf"top_k must be a whole number >= 1 .*got {top_k!r}; re-export"):
        BundleMeta(task="classification", class_names=["a", "b"], input_size=(8, 8), top_k=top_k)


def test_bundle_metadata_error_names_the_file():
    meta = BundleMeta(task="classification", class_names=["a", "b"], input_size=(8, 8))
    text = meta.to_json().replace('"top_k": 2', '"top_k": 0').replace('"top_k": 5', '"top_k": 0')
    with pytest.raises(ModelError, match=r"^model bundle 'm\.pt': bundle top_k must be a whole number >= 1"):
        BundleMeta.from_json(text, where="model bundle 'm.pt'")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 0}, "--top-k must be 1 or more"),
        ({"image_size": 0}, r"image_size \(--image-size\): expected a whole number of pixels >= 1, got 0; pass None"),
    ],
)
def test_export_timm_refuses_bad_sizes(tmp_path, kwargs, message):
    from autotimm_stream.export.timm import export_timm

    with pytest.raises(ConfigError, match=message):
        export_timm("test_resnet", tmp_path / "m.pt", ["a", "b"], **kwargs)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("image_size", [0, -1, True, 2.5])
def test_export_checkpoint_refuses_bad_sizes(tmp_path, image_size):
    """Only None means the checkpoint's own size; 0 is refused, not read as 'default'."""
    from autotimm_stream.export.checkpoint import export_checkpoint

    with pytest.raises(ConfigError) as info:
        export_checkpoint(tmp_path / "any.ckpt", tmp_path / "m.pt", image_size=image_size)
    assert str(info.value).startswith(
        f"image_size (--image-size): expected a whole number of pixels >= 1, got {image_size!r}; pass None"
    ), str(info.value)
    assert not (tmp_path / "m.pt").exists()


# -- command line ----------------------------------------------------------------------------------
def _usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and not captured.out, captured.err
    assert lines[0].startswith("autotimm-stream: error: ")
    return lines[0]


@pytest.mark.parametrize("frames, got", [("0", "0"), ("-3", "-3"), ("x", "'x'")])
def test_demo_frames_must_be_positive(capsys, tmp_path, frames, got):
    out = tmp_path / "out"
    line = _usage_error(capsys, "demo", "--fast", "--no-progress", "--frames", frames, "--out", str(out))
    assert f"argument --frames: expected a whole number >= 1, got {got}" in line
    assert "demo --help" in line
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--top-k", "-2"), ("--image-size", "0")])
def test_export_sizes_must_be_positive(capsys, tmp_path, option, value):
    out = tmp_path / "m.pt"
    line = _usage_error(capsys, "export", "--timm", "test_resnet", "--num-classes", "3", option, value, "-o", str(out))
    assert f"argument {option}: expected a whole number >= 1, got {value}" in line
    assert not out.exists()


def test_run_on_a_folder_says_so(capsys, tmp_path):
    assert main(["run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; expected a YAML file" in err and "not found" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["listen", "--count", "0"], "argument --count: expected a whole number >= 1, got 0"),
        (["listen", "--count", "-2"], "argument --count: expected a whole number >= 1, got -2"),
        (["listen", "--timeout", "0"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got 0"),
        (["listen", "--timeout", "-1"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got -1"),
        (["listen", "--timeout", "inf"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got inf"),
        (["listen", "--timeout", "nan"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got nan"),
        (["listen", "--timeout", "soon"], "argument --timeout: expected a number of seconds > 0, got 'soon'"),
        (["control", "list", "--timeout", "0"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got 0"),
        (["control", "list", "--timeout", "-1"], "argument --timeout: expected a number of seconds > 0 and <= 86400, got -1"),
    ],
    ids=["count-0", "count-neg", "timeout-0", "timeout-neg", "timeout-inf", "timeout-nan", "timeout-word",
         "control-timeout-0", "control-timeout-neg"],
)  # fmt: skip
def test_listen_and_control_waits_must_be_positive(capsys, argv, expected):
    """0 gave up at once (listen --count 0: at once with nothing), a negative control timeout waited
    forever, inf crashed. Parsed only, never run: the old parser let them through to a command that
    could hang."""
    from autotimm_stream.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and not captured.out, captured.err
    assert lines[0].startswith("autotimm-stream: error: ") and expected in lines[0], lines[0]
    assert f"{argv[0]} --help" in lines[0]


def test_listen_help_says_what_count_and_timeout_default_to(capsys):
    with pytest.raises(SystemExit):
        main(["listen", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit after this many messages (default: never)" in text
    assert "exit after this many quiet seconds (default: 30)" in text
