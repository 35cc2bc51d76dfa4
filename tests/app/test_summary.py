"""The run summary and the control channel keep the keys they had before the statistics were typed.

``tests/data/summary_keys.json`` was recorded from the untyped code (main at 9a91c81) on the same
scenario: a file, a live source removed and added again under its id (so ``replaced`` is filled),
every sink enabled. Keys, their order and the JSON types of their values must match.
"""

from __future__ import annotations

import json
from pathlib import Path

from autotimm_stream.app import build_pipeline, build_source, write_report
from autotimm_stream.app.control import ControlServer
from autotimm_stream.config import validate_config, validate_source
from tests.helpers import wait_for

KEYS = Path(__file__).parents[1] / "data" / "summary_keys.json"


def tree(x: object) -> object:
    """The shape of a JSON document: keys in order, values replaced by their type's name."""
    if isinstance(x, dict):
        return {k: tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [tree(x[0])] if x else []
    return type(x).__name__


def test_summary_list_and_stats_keep_their_keys(clip, bundle, tmp_path):
    cfg = validate_config(
        {
            "sources": [{"id": "clip", "uri": str(clip)}],
            "model": {"path": str(bundle)},
            "output_dir": str(tmp_path / "run"),
            "control": {"enabled": True, "endpoint": "tcp://127.0.0.1:0"},
            "metrics": {"enabled": True, "port": 0},
            "sinks": {
                "zmq": {"endpoint": "tcp://127.0.0.1:0"},
                "snapshot": {"enabled": True, "classes": ["circle"], "min_score": 0.0},
            },
        }
    )
    p = build_pipeline(cfg)
    control = next(s for s in p.services if isinstance(s, ControlServer))

    def out(sid: str) -> int:
        s = p.stats(detail=False).sources.get(sid)
        return 0 if s is None else s.frames_out

    def cam():
        return build_source(validate_source({"id": "cam", "type": "testsrc", "width": 64, "height": 48}), p.bell)

    p.start()
    try:
        wait_for(lambda: out("clip") >= 48, 30, "the file's results")
        p.add_source(cam())
        wait_for(lambda: out("cam") >= 5, 30, "the test pattern's results")
        p.remove_source("cam")
        wait_for(lambda: "cam" in p.retired, 30, "cam to be retired")
        p.add_source(cam())
        wait_for(lambda: out("cam") >= 5, 30, "the second cam's results")
        listed = control.handle(b'{"op": "list"}')
        stats = control.handle(b'{"op": "stats"}')
        p.stop()
        assert p.wait(30)
    finally:
        p.close()
    assert p.error is None, p.error
    assert write_report(p, p.stats(), cfg.output_dir)
    summary = p.stats().to_json()
    expected = json.loads(KEYS.read_text())
    for got, want in ((summary, "summary"), (listed, "list"), (stats, "stats")):
        assert json.dumps(tree(got), indent=1) == json.dumps(expected[want], indent=1)  # keys, order, types
    assert summary["replaced"]["cam"]["sessions"] == 1 and summary["sinks"]["report"]["path"]
