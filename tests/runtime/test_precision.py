"""model.precision: fp32, bf16 on CPUs with native bfloat16 (and CUDA), fp16 on CUDA.

The bf16 tests run the real bundles on this CPU and skip, saying why, on one without AVX512-BF16
or AMX. Outputs always come back in fp32, so post-processing and NMS run in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotimm_stream.config import validate_config
from autotimm_stream.errors import ConfigError
from autotimm_stream.postprocess import Postprocessor
from autotimm_stream.runtime import runner as runner_module
from autotimm_stream.runtime.runner import ModelRunner, cpu_has_bf16, resolve_precision
from autotimm_stream.synthetic import ShapeScene
from tests.helpers import CLI, read_jsonl, write_config

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def scenes(n: int, h: int = 240, w: int = 320) -> list[np.ndarray]:
    return [ShapeScene(w, h, seed=40 + i, dominant=False).render() for i in range(n)]


def run_both(bundle, frames):
    fp32, bf16 = ModelRunner(bundle), ModelRunner(bundle, precision="bf16")
    return fp32, bf16, fp32.forward(fp32.preprocess(frames)), bf16.forward(bf16.preprocess(frames))


@needs_bf16
def test_bf16_runner_runs_in_bf16_and_returns_fp32(bundle):
    fp32, bf16, ref, got = run_both(bundle, scenes(4))
    assert bf16.dtype == torch.bfloat16 and bf16.channels_last  # oneDNN's fast bf16 layout
    assert bf16.preprocess(scenes(1)).dtype == torch.bfloat16
    assert all(o.dtype == torch.float32 for o in got)
    torch.testing.assert_close(torch.softmax(got[0], 1), torch.softmax(ref[0], 1), atol=2e-2, rtol=0)


@needs_bf16
def test_bf16_detector_and_segmentor_stay_close_to_fp32(det_bundle, seg_bundle):
    frames = scenes(3)
    for bundle in (det_bundle, seg_bundle):
        _, bf16, ref, got = run_both(bundle, frames)
        for r, g in zip(ref, got):
            scale = float(r.abs().max())
            assert float((g - r).abs().max()) <= 0.05 * scale, f"{bundle.name}: bf16 off by more than 5 % of the scale"
    _, bf16, ref, got = run_both(seg_bundle, frames)
    post = Postprocessor(bf16.meta)
    hw = [f.shape[:2] for f in frames]
    agree = [float((a.mask == b.mask).mean()) for a, b in zip(post(ref, hw), post(got, hw))]
    assert min(agree) >= 0.95, agree


@needs_bf16
def test_bf16_through_the_cli(clip, bundle, tmp_path):
    import subprocess

    cfg = write_config(tmp_path / "c.yaml", str(clip), str(bundle), tmp_path / "out", "")
    cfg.write_text(cfg.read_text().replace(f"  path: {bundle}\n", f"  path: {bundle}\n  precision: bf16\n"))
    proc = subprocess.run([*CLI, "run", str(cfg), "--no-progress"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert rows and all(r["classes"] for r in rows)


def test_cpu_flags_decide_bf16(tmp_path):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert cpu_has_bf16(str(with_bf16)) is True
    assert cpu_has_bf16(str(without)) is False


def test_bf16_without_native_support_is_a_config_error(monkeypatch):
    monkeypatch.setattr(runner_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="native bfloat16"):
        resolve_precision("bf16", torch.device("cpu"))


def test_fp16_on_the_cpu_falls_back_to_fp32(caplog):
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float32
    assert "fp16 needs CUDA" in caplog.text


@pytest.mark.parametrize(
    "model, message",
    [
        ({"precision": "int4"}, "precision"),
        ({"precision": "bf16", "fp16": True}, "set only precision"),
    ],
)
def test_bad_precision_config(model, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"sources": [{"id": "a", "uri": "x.mp4"}], "model": {"path": "m.pt", **model}})


def test_the_fp16_switch_still_means_fp16():
    cfg = validate_config({"sources": [{"id": "a", "uri": "x.mp4"}], "model": {"path": "m.pt", "fp16": True}})
    assert cfg.model.fp16 and cfg.model.precision == "fp32"  # ModelRunner reads fp16: true as precision fp16
