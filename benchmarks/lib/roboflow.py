"""The same TorchScript bundle through Roboflow's ``InferencePipeline``, for comparison with the engine.

Roboflow's open-source ``inference`` package is installed into a venv of its own (created on the
first run, reused afterwards; a stamp file records what was installed), together with the torch
version this repository runs, so the very same bundle file loads there. A worker
(``roboflow_worker.py`` beside this file, a standalone script run by path with that venv's python)
drives the bundle through ``InferencePipeline.init_with_custom_logic``: Roboflow's cv2 video source
decodes the file without pacing (``max_fps=None``) and without dropping
(``BufferFillingStrategy.WAIT`` + ``BufferConsumptionStrategy.LAZY``), and the custom
``on_video_frame`` does what the engine does per frame: the engine's preprocessing, forward on the
frozen TorchScript module, softmax top-K, and a JSON line per frame.

Roboflow batches only across sources: one file gives ``on_video_frame`` one frame at a time.
``RoboflowPlan.batch = B`` opens the clip B times (B sources, B x the frames), so every call gets B
frames.

:func:`compare` runs it (and, with ``with_engine``, the engine on the same clip and bundle right
after, for paired ratios); :func:`roboflow_cell` is the suite's ``roboflow`` section. If the package
cannot be installed or imported, the result JSON is ``{"skipped": "<reason>; see <log>"}`` and
:class:`Skipped` is raised.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import REPO, Skipped, median_index, write_json
from .cpumeter import core_count
from .inputs import clip_frames as count_frames

_logger = logging.getLogger("benchmarks.roboflow")

WORKER = Path(__file__).resolve().parent / "roboflow_worker.py"  # run by path with the venv's python
DEFAULT_VENV = REPO / "bench_out" / "venv-roboflow"
STAMP = "autotimm-stream-bench.json"
STAMP_VERSION = 1
# The Roboflow packages tried in order; the first that installs and imports is used. 1.8.3 is the
# release this benchmark was written against (InferencePipeline lives in `streamvision` there,
# re-exported as `inference.InferencePipeline`).
DEFAULT_PACKAGES = ("inference==1.8.3", "inference-cpu==1.8.3")
IMPORT_CHECK = (
    "import importlib.metadata as md, os, warnings\n"
    "os.environ.setdefault('DISABLE_VERSION_CHECK', 'True')\n"
    "warnings.simplefilter('ignore')\n"
    "from inference import InferencePipeline\n"
    "assert callable(getattr(InferencePipeline, 'init_with_custom_logic', None)), 'no init_with_custom_logic'\n"
    "import torch, cv2\n"
    "print('VERSIONS', md.version('inference'), torch.__version__, cv2.__version__)\n"
)


# -- subprocesses ----------------------------------------------------------------------------------
def run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, bool]:
    """Run ``cmd`` with its output appended to ``log_path``; kill its whole process group after ``timeout``.

    Returns (exit code, timed out).
    """
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
        try:
            return proc.wait(timeout=max(1.0, timeout)), False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.write(f"\n!!! killed after {timeout:.0f} s\n")
            return -1, True
        except BaseException:  # Ctrl-C: do not leave pip running
            _kill_group(proc)
            raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])


# -- the venv --------------------------------------------------------------------------------------
def torch_requirements() -> list[str]:
    """torch (and torchvision, when this environment has it) pinned to this environment's versions."""
    reqs = []
    for name in ("torch", "torchvision"):
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            continue
        reqs.append(f"{name}=={version.split('+', 1)[0]}")
    return reqs


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def import_check(py: Path, log_path: Path, timeout: float) -> dict[str, str] | None:
    """Versions (inference, torch, opencv) if ``from inference import InferencePipeline`` works in ``py``."""
    try:
        out = subprocess.run(
            [str(py), "-c", IMPORT_CHECK],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (subprocess.TimeoutExpired, OSError) as exc:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\nimport check failed: {exc}\n")
        return None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {py} -c <import check> -> {out.returncode}\n{out.stdout}{out.stderr[-4000:]}\n")
    for line in out.stdout.splitlines():
        if line.startswith("VERSIONS ") and out.returncode == 0:
            inference, torch_v, cv2_v = line.split()[1:4]
            return {"inference": inference, "torch": torch_v, "opencv": cv2_v}
    return None


def ensure_venv(venv: Path, packages: list[str], timeout: float, log_path: Path) -> tuple[dict[str, Any] | None, str]:
    """The Roboflow venv, created or reused. Returns (stamp, "") or (None, why it is unusable)."""
    py = venv_python(venv)
    stamp_path = venv / STAMP
    extra = torch_requirements()
    deadline = time.monotonic() + timeout
    if stamp_path.is_file() and py.exists():
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = {}
        if (
            stamp.get("stamp_version") == STAMP_VERSION
            and stamp.get("torch_requirements") == extra
            and stamp.get("package") in packages
        ):
            _logger.info("venv: reusing %s (%s)", venv, stamp.get("package"))
            versions = import_check(py, log_path, min(300.0, timeout))
            if versions:
                stamp["versions"] = versions
                stamp["reused"] = True
                return stamp, ""
            _logger.warning("venv: %s no longer imports inference; reinstalling (log %s)", venv, log_path)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        _logger.info("venv: creating %s", venv)
        rc, timed_out = run_logged([sys.executable, "-m", "venv", str(venv)], log_path, deadline - time.monotonic())
        if rc != 0:
            return None, "could not create the venv" + (" (timed out)" if timed_out else f" (exit {rc})")
    stamp_path.unlink(missing_ok=True)
    reasons = []
    for package in packages:
        left = deadline - time.monotonic()
        if left < 30:
            reasons.append(f"{package}: no time left of the {timeout:.0f} s install budget")
            break
        _logger.info(
            "venv: pip install %s %s (a few minutes and several GB the first time; log %s)",
            package,
            " ".join(extra),
            log_path,
        )
        t0 = time.perf_counter()
        rc, timed_out = run_logged(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", package, *extra],
            log_path,
            left,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        )
        install_s = time.perf_counter() - t0
        if rc != 0:
            why = f"timed out after {left:.0f} s" if timed_out else f"pip exit {rc}: {_tail(log_path, 2)}"
            reasons.append(f"{package}: {why}")
            _logger.warning("venv: %s did not install (%s)", package, why)
            continue
        versions = import_check(py, log_path, min(300.0, max(30.0, deadline - time.monotonic())))
        if not versions:
            reasons.append(f"{package}: installed, but `from inference import InferencePipeline` fails")
            _logger.warning("venv: %s installed but does not import", package)
            continue
        stamp = {
            "stamp_version": STAMP_VERSION,
            "package": package,
            "torch_requirements": extra,
            "versions": versions,
            "install_s": round(install_s, 1),
            "python": sys.version.split()[0],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        stamp_path.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
        stamp["reused"] = False
        return stamp, ""
    return None, "; ".join(reasons) or "nothing to install"


def dir_size_gb(path: Path) -> float | None:
    """Disk used by ``path`` (du), in GB; None when du is missing or slow."""
    if not shutil.which("du"):
        return None
    try:
        out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, timeout=120)
        return round(int(out.stdout.split()[0]) / 1024 / 1024, 2)
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None


# -- the engine, for a paired ratio ----------------------------------------------------------------
def run_engine(clip: Path, bundle: Path, batch: int, out_dir: Path, threads: int) -> dict[str, Any]:
    """The engine on the same clip and bundle, configured as the suite's engine figure."""
    import torch

    from . import throughput

    cfg = throughput.engine_config(clip, bundle, batch, out_dir, video=False)
    cfg["sinks"]["report"] = {"enabled": False}
    torch.set_num_threads(threads)
    summary, _ = throughput.run_engine(cfg)
    cpu = summary["cpu"]
    return {
        "fps": summary["fps"],
        "frames": summary["frames"],
        "elapsed_s": summary["elapsed_s"],
        "batch": batch,
        "batch_size_mean": summary.get("batch_size_mean"),
        "drops": summary.get("drops"),
        "cpu": cpu,
    }


# -- the comparison --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoboflowPlan:
    """How :func:`compare` runs (the suite uses the defaults, with ``frames`` = the clip's)."""

    frames: int = 0  # stop after this many frames of the clip (0: all)
    batch: int = 1  # Roboflow batches across sources only: the clip opened this many times
    repeat: int = 1  # rounds (Roboflow, then the engine with ``with_engine``); medians
    with_engine: bool = False  # the engine on the same clip and bundle right after each Roboflow round
    engine_batch: int = 8  # its max_batch
    threads: int = 0  # torch threads in the worker (0: the core count)
    no_optimize: bool = False  # plain torch.jit.load (no freeze/optimize_for_inference)
    venv: Path = DEFAULT_VENV
    packages: tuple[str, ...] = DEFAULT_PACKAGES  # tried in order
    timeout: float = 900  # seconds for the benchmark run itself
    install_timeout: float = 1800  # seconds for creating the venv


def compare(clip: Path, bundle: Path, out: Path, json_path: Path, plan: RoboflowPlan) -> dict[str, Any]:
    """Roboflow on ``clip`` with ``bundle`` (and the engine, with ``plan.with_engine``); the result
    document, also written to ``json_path``. Raises :class:`Skipped` when Roboflow cannot be set up,
    RuntimeError when its worker fails (both written to ``json_path`` too)."""
    if min(plan.batch, plan.engine_batch, plan.repeat) < 1 or plan.frames < 0:
        raise ValueError(f"batch, engine_batch and repeat must be >= 1 and frames >= 0: {plan}")
    out.mkdir(parents=True, exist_ok=True)
    venv = Path(plan.venv).absolute()
    install_log = out / "roboflow-install.log"
    threads = plan.threads or core_count()

    for what, path in (("clip", clip), ("bundle", bundle)):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
    clip_frames = count_frames(clip)
    if clip_frames == 0:
        raise RuntimeError(f"{clip} decodes to no frames")

    t0 = time.perf_counter()
    stamp, why = ensure_venv(venv, list(plan.packages), plan.install_timeout, install_log)
    setup_s = time.perf_counter() - t0
    if stamp is None:
        reason = f"Roboflow inference could not be set up in {venv}: {why}; see {install_log}"
        write_json({"skipped": reason, "install_log": str(install_log)}, json_path)
        raise Skipped(reason)
    venv_gb = None if stamp.get("reused") else dir_size_gb(venv)
    if venv_gb is not None:
        stamp["venv_gb"] = venv_gb
        (venv / STAMP).write_text(json.dumps({k: v for k, v in stamp.items() if k != "reused"}, indent=1))

    run_dir = out / "roboflow"
    run_dir.mkdir(parents=True, exist_ok=True)
    worker_log = run_dir / "worker.log"
    worker_log.write_text("", encoding="utf-8")
    cap = plan.frames
    runs: list[dict[str, Any]] = []
    engine_runs: list[dict[str, Any]] = []
    for i in range(plan.repeat):
        if plan.repeat > 1:
            _logger.info("round %d/%d", i + 1, plan.repeat)
        result, failure = run_worker(plan, venv, clip, bundle, clip_frames, cap, threads, run_dir, worker_log)
        if result is None:
            write_json({"error": failure, "worker_log": str(worker_log)}, json_path)
            raise RuntimeError(f"{failure}; full log: {worker_log}")
        _logger.info("roboflow: %.2f fps (%d frames, %s dropped)", result["fps"], result["frames"], result["dropped"])
        runs.append(result)
        if plan.with_engine:
            _logger.info("engine: the same clip and bundle, max_batch %d", plan.engine_batch)
            engine_runs.append(run_engine(clip, bundle, plan.engine_batch, out / "roboflow_engine", threads))
            _logger.info("engine: %.2f fps", engine_runs[-1]["fps"])

    mid = median_index([r["fps"] for r in runs])
    result = runs[mid]
    expected = result["expected_frames"]
    dropped = result["dropped"]
    notes = [
        "Roboflow's video source decodes with cv2.VideoCapture (BGR, converted to RGB in on_video_frame); "
        "the engine decodes with PyAV",
        "preprocessing, forward (frozen + optimize_for_inference TorchScript"
        + (", here disabled by no_optimize" if plan.no_optimize else "")
        + ") and softmax top-K are the engine's own operations; each prediction is serialised to one JSON line "
        "in a JSONL file (the engine also publishes on ZMQ)",
        "max_fps=None, BufferFillingStrategy.WAIT, BufferConsumptionStrategy.LAZY: no pacing, no drops",
        "fps = frames / (last prediction - pipeline.start()); model load, warm-up and `import inference` excluded",
    ]
    if plan.batch == 1:
        notes.append(
            "batch 1: InferencePipeline batches across sources only, so one file reaches on_video_frame one frame at a time"
        )
    else:
        notes.append(
            f"batch {plan.batch}: the clip opened as {plan.batch} sources (each decoded separately); "
            f"frames counts all of them (batch_collection_timeout=None)"
        )
    if plan.repeat > 1:
        notes.append(f"{plan.repeat} rounds: fps is the median round's; every round is in details.rounds")
    for r in runs:
        if r["dropped"]:
            notes.append(f"NOT all frames were processed in a round: {r['frames']} of {r['expected_frames']}")
            _logger.warning("roboflow processed %d of %d frames", r["frames"], r["expected_frames"])
        if r.get("frame_id_gaps"):
            notes.append(f"{r['frame_id_gaps']} frame ids missing or repeated in a round")
    busy = max((r.get("cpu") or {}).get("others_cores", 0.0) for r in runs)
    if busy > 0.3:
        notes.append(f"the machine was busy: other processes used up to {busy} cores during the Roboflow runs")
    cpu = result.get("cpu") or {}

    doc: dict[str, Any] = {
        "fps": result["fps"],
        "frames": result["frames"],
        "wall_s": result["wall_s"],
        "inference_version": result["versions"].get("inference"),
        "torch_version": result["versions"].get("torch"),
        "batch": plan.batch,
        "dropped": dropped,
        "torch_threads": result["torch_threads"],
        "notes": notes,
        "details": {
            **{k: v for k, v in result.items() if k not in ("fps", "frames", "wall_s", "dropped", "error")},
            "fps_runs": [r["fps"] for r in runs],
            "rounds": runs,
            "clip": str(clip),
            "clip_frames": clip_frames,
            "bundle": str(bundle),
            "venv": str(venv),
            "venv_package": stamp.get("package"),
            "venv_reused": stamp.get("reused"),
            "venv_setup_s": round(setup_s, 1),
            "venv_install_s": stamp.get("install_s"),
            "venv_gb": stamp.get("venv_gb"),
            "install_log": str(install_log),
            "worker_log": str(worker_log),
            "predictions": str(run_dir / "predictions.jsonl"),
            "loadavg_end": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        },
    }
    if expected != (clip_frames if not cap else min(cap, clip_frames)) * plan.batch:
        notes.append(f"expected frames {expected} disagree with the clip's {clip_frames}")

    if engine_runs:
        if cap and any(e["frames"] > cap for e in engine_runs):
            notes.append("with_engine runs the whole clip: frames does not cap it")
        e_mid = median_index([e["fps"] for e in engine_runs])
        ratios = [round(e["fps"] / r["fps"], 3) if r["fps"] else None for e, r in zip(engine_runs, runs, strict=True)]
        doc["engine"] = {**engine_runs[e_mid], "fps_runs": [e["fps"] for e in engine_runs], "runs": engine_runs}
        doc["engine_over_roboflow"] = round(engine_runs[e_mid]["fps"] / result["fps"], 3) if result["fps"] else None
        doc["engine_over_roboflow_runs"] = ratios

    write_json(doc, json_path)
    _logger.info(
        f"roboflow inference {doc['inference_version']} (torch {doc['torch_version']}, {doc['torch_threads']} threads): "
        f"{doc['fps']:.2f} fps, {doc['frames']} frames in {doc['wall_s']:.2f} s, batch {plan.batch}, "
        f"dropped {dropped}" + (f"  (rounds: {doc['details']['fps_runs']})" if plan.repeat > 1 else "")
    )
    if cpu:
        _logger.info(f"cores busy: this {cpu.get('own_cores')} / others {cpu.get('others_cores')}")
    if "engine" in doc:
        e = doc["engine"]
        _logger.info(
            f"engine: {e['fps']:.2f} fps ({e['frames']} frames, max_batch {e['batch']}, mean batch "
            f"{e['batch_size_mean']}, cores busy: this {e['cpu']['own_cores']} / others {e['cpu']['others_cores']}); "
            f"engine / roboflow = {doc['engine_over_roboflow']}"
            + (f"  (per round: {doc['engine_over_roboflow_runs']})" if plan.repeat > 1 else "")
        )
    _logger.info(f"written: {json_path}")
    return doc


def run_worker(
    plan: RoboflowPlan,
    venv: Path,
    clip: Path,
    bundle: Path,
    clip_frames: int,
    cap: int,
    threads: int,
    run_dir: Path,
    worker_log: Path,
) -> tuple[dict[str, Any] | None, str]:
    """One Roboflow run in the venv: (the worker's result, "") or (None, what went wrong)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [
            str(venv_python(venv)),
            str(WORKER),
            "--clip",
            str(clip.absolute()),
            "--bundle",
            str(bundle.absolute()),
            "--result",
            str(result_path),
            "--jsonl",
            str((run_dir / "predictions.jsonl").absolute()),
            "--sources",
            str(plan.batch),
            "--frames",
            str(cap),
            "--expected",
            str(clip_frames),
            "--threads",
            str(threads),
            "--deadline-s",
            str(max(10.0, plan.timeout - 120)),  # leaves the worker time for imports and its own report
        ]
        if plan.no_optimize:
            cmd.append("--no-optimize")
        _logger.info(
            "roboflow: running the worker (%d source(s), %d torch threads; log %s)", plan.batch, threads, worker_log
        )
        rc, timed_out = run_logged(cmd, worker_log, plan.timeout, env={**os.environ, "PYTHONNOUSERSITE": "1"})
        result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else None
    if result is None or rc != 0:
        why = f"timed out after {plan.timeout:.0f} s" if timed_out else f"exit {rc}"
        reason = (result or {}).get("error") or _tail(worker_log, 3)
        return None, f"the Roboflow worker failed ({why}): {reason}"
    return result, ""


def roboflow_cell(clip: dict[str, Any], bundle: Path, out: Path, run_s: float, install_s: float) -> dict[str, Any]:
    """The suite's ``roboflow`` section on one clip (``clip``: the suite's clip entry): :func:`compare`
    with the clip's frames, results in ``out/roboflow_<key>.json``.

    It creates Roboflow's venv on its first run (``bench_out/venv-roboflow``, reused afterwards):
    ``install_s`` bounds that, ``run_s`` the benchmark itself. Every subprocess (pip, the worker) runs
    in its own session and is killed as a group on a timeout, the suite's deadline or Ctrl-C.
    """
    key = clip["key"]
    js = out / f"roboflow_{key}.json"
    js.unlink(missing_ok=True)
    plan = RoboflowPlan(frames=clip["frames"], timeout=round(run_s), install_timeout=round(install_s))
    try:
        data = compare(Path(clip["path"]), bundle, out / key, js, plan)
    except Skipped as exc:
        raise Skipped(f"roboflow: {exc}") from None
    if not isinstance(data.get("fps"), int | float):
        raise RuntimeError(f"roboflow gave no fps ({js})")
    return {**data, "json": str(js)}
