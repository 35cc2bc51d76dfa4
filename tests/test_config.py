from pathlib import Path

import pytest

from autotimm_stream.config import apply_overrides, load_config, validate_config
from autotimm_stream.errors import ConfigError

BASE = {"sources": [{"id": "cam1", "uri": "a.mp4"}], "model": {"path": "m.pt"}}


def test_defaults():
    cfg = validate_config(BASE)
    s = cfg.sources[0]
    assert (s.type, s.policy, s.buffer_size) == ("file", "block", 32)
    assert cfg.batching.max_batch == 8 and cfg.batching.max_wait_ms == 10
    assert cfg.sinks.zmq.endpoint == "tcp://127.0.0.1:5555"  # loopback by default


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sources": [{"id": "cam1", "uri": "a.mp4", "polcy": "block"}]}, r"sources\[0\]\.polcy: unknown key"),
        (
            {"sources": [{"id": "cam1", "uri": "a.mp4", "policy": "newest"}]},
            r"sources\[0\]\.policy: .*'block' or 'latest'.*got 'newest'",
        ),
        ({"sources": [{"id": "bad id", "uri": "a.mp4"}]}, r"sources\[0\]\.id: .*pattern"),
        ({"sources": [{"id": "..", "uri": "a.mp4"}]}, r"sources\[0\]\.id: .*pattern"),  # ids name files: never a path
        ({"sources": [{"id": "cam1"}]}, r"sources\[0\]\.uri: required field is missing"),
        ({"sources": []}, r"sources: at least one source is needed \(or control.enabled"),
        ({"batching": {"max_batch": "eight"}}, r"batching\.max_batch: .*valid integer.*got 'eight'"),
        ({"batching": {"max_batch": 0}}, r"batching\.max_batch: .*greater than or equal to 1, got 0"),
        ({"model": {}}, r"model\.path: required field is missing"),
        ({"sinks": {"zmq": {"endpoint": "127.0.0.1:5555"}}}, r"sinks\.zmq\.endpoint: .*pattern"),
        ({"sinks": {"video": {"preset": "warp"}}}, r"sinks\.video\.preset"),
        ({"extra": 1}, r"extra: unknown key"),
        (
            {"sources": [{"id": "a", "uri": "x"}, {"id": "a", "uri": "y"}]},
            r"source ids must be unique; repeated: \['a'\]",
        ),
    ],
)
def test_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({**BASE, **override})


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping with sources/model/..., got list"):
        validate_config([1, 2])


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources: [\n  - id: a\n   uri: b", r"not valid YAML at line \d+, column \d+"),
        ("", "is empty"),
    ],
)
def test_bad_yaml_files(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found; expected a YAML file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sources:\n  - id: a\n    uri: x.mp4\nmodel:\n  path: m.pt\n")
    cfg = load_config(p, ["batching.max_batch=4", "sources.0.uri=y.mp4", "sinks.zmq.enabled=false"])
    assert cfg.batching.max_batch == 4 and cfg.sources[0].uri == "y.mp4" and cfg.sinks.zmq.enabled is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("batching.max_batch", "expected KEY=VALUE"),
        ("sources.3.uri=x", "sources has 1 items; '3' is not an index"),
        ("model.path.x=1", "model.path is a value, not a section"),
    ],
)
def test_bad_overrides(override, message):
    import copy

    with pytest.raises(ConfigError, match=message):
        apply_overrides(copy.deepcopy(BASE), [override])


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")), ids=str)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.sources and cfg.model.path
