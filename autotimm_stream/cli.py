"""Command line: ``autotimm-stream run | demo | export | info | listen | keygen | control``.

A thin shell over :mod:`autotimm_stream.app` (and :mod:`autotimm_stream.export` for bundles). User errors print one line and exit 2; a first
Ctrl-C or SIGTERM stops gracefully (exit 0), a second one stops without draining.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import ConfigError, StreamError
from .net import DEFAULT_CONTROL_ENDPOINT, DEFAULT_ENDPOINT
from .tasks import Task

if TYPE_CHECKING:
    from .config import RunConfig
    from .pipeline import Pipeline
    from .sinks import Sink
    from .stats import PipelineStats

__all__ = ["main"]

_logger = logging.getLogger("autotimm_stream")
EXIT_USAGE = 2
EXIT_FAILED = 1


def _fail(message: str) -> int:
    print(f"autotimm-stream: error: {message}", file=sys.stderr)
    return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line like every other user error (not a usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"autotimm-stream: error: {message} (see: {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a bad one is a usage error, exit 2, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


_MAX_WAIT_S = 86_400.0  # a day: longer than anyone waits for a quiet stream


def _positive_seconds(text: str) -> float:
    """An argparse type: seconds, finite, > 0 and at most a day (0 would give up at once, a negative
    one poll as 0 or forever, inf overflow the poll's milliseconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0 < value <= _MAX_WAIT_S:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 and <= {_MAX_WAIT_S:g}, got {text}")
    return value


# -- run ----------------------------------------------------------------------------------------
def _progress(pipeline: Pipeline, enabled: bool) -> Any:
    """A tqdm bar over the file sources' frame count (fps, ETA, drops); None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    counts = [s.info.frames for s in pipeline.sources if s.info is not None]
    total = sum(c for c in counts if c) if counts and all(counts) else None
    bar = tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
    shown = 0

    def tick(p: Pipeline) -> None:
        nonlocal shown
        stats = p.stats(detail=False)
        bar.update(stats.frames - shown)
        shown = stats.frames
        bar.set_postfix(drops=stats.drops, refresh=False)
        if stats.done:
            bar.close()

    return tick


def _print_summary(stats: PipelineStats, sinks: list[Sink], path: str | None) -> None:
    err = sys.stderr
    print(
        f"\n{stats.frames} frames in {stats.elapsed_s:.2f} s = {stats.fps:.1f} fps "
        f"(mean batch {round(stats.batch_size_mean, 2)}), {stats.drops} dropped",
        file=err,
    )
    print("  stage       mean ms   p50 ms   p95 ms   (batch stages: per-frame share)", file=err)
    for name, st in stats.all_stages.items():
        print(f"  {name:<10} {st.mean:>8.2f} {st.p50:>8.2f} {st.p95:>8.2f}", file=err)
    for sid, s in stats.sources.items():
        drops = ", ".join(f"{k}={v}" for k, v in s.drops.items()) or "none"
        print(f"  source {sid}: {s.frames_out}/{s.frames_decoded} frames out, drops: {drops}", file=err)
    for sink in sinks:
        for line in sink.summary_lines():
            print(f"  {line}", file=err)
    if path:
        print(f"  summary: {path}", file=err)


def _install_signals(pipeline: Pipeline) -> None:
    hits = {"n": 0}

    def handler(signum: int, _frame: Any) -> None:
        hits["n"] += 1
        if hits["n"] == 1:
            print(f"\n{signal.Signals(signum).name}: stopping (again to stop without draining)", file=sys.stderr)
            pipeline.stop()
        else:
            pipeline.kill()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def run_config(cfg: RunConfig, progress: bool | None = None, on_started: Any = None) -> int:
    """Run a validated config to the end (or a signal); returns the exit code."""
    from .app import build_pipeline, write_report, write_summary

    pipeline = build_pipeline(cfg)
    _install_signals(pipeline)
    if progress is None:
        progress = sys.stderr.isatty()
    if on_started:
        on_started(pipeline)
    stats = pipeline.run(on_tick=_progress(pipeline, progress))
    if write_report(pipeline, stats, cfg.output_dir):
        stats = pipeline.stats()  # the run has ended: only the report sink's path is new
    path = write_summary(stats, cfg.output_dir)
    _print_summary(stats, pipeline.sinks, path)
    if pipeline.error is not None:
        err = pipeline.error
        if isinstance(err, StreamError):
            return _fail(str(err))
        print(f"autotimm-stream: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.set)
    return run_config(cfg, progress=False if args.no_progress else None)


# -- demo ---------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .app.demo import demo_config

    cfg = demo_config(args.out, args.set, frames=args.frames, realtime=not args.fast, task=args.task)
    endpoint = cfg.sinks.zmq.endpoint if cfg.sinks.zmq.enabled else None

    clip = getattr(cfg.sources[0], "uri", cfg.sources[0].id)  # the demo's one source is a generated file

    def started(_p: Any) -> None:
        print(f"demo: annotating {clip} with {os.path.basename(cfg.model.path)}", file=sys.stderr)
        if endpoint:
            print(
                f"demo: publishing on {endpoint}; subscribe from another terminal with\n"
                f"        autotimm-stream listen {endpoint}\n"
                f"      (or: python examples/subscribe.py {endpoint})",
                file=sys.stderr,
            )

    code = run_config(cfg, progress=False if args.no_progress else None, on_started=started)
    sinks = cfg.sinks
    made = [os.path.join(cfg.output_dir, c.filename) for c in (sinks.video, sinks.jsonl) if c.enabled]
    if code == 0 and made:
        print(f"demo: done; open {' and '.join(made)}", file=sys.stderr)
    return code


# -- export / info / listen ---------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.timm):
        raise ConfigError("export needs a CHECKPOINT (an AutoTimm .ckpt) or --timm NAME, not both and not neither")
    if args.checkpoint:
        from .export.checkpoint import export_checkpoint

        meta = export_checkpoint(
            args.checkpoint,
            args.output,
            image_size=args.image_size,
            classes=args.classes,
            fmt=args.format,
            quantize=args.quantize,
            top_k=args.top_k,
            device=args.device,
        )
        note = f"from {meta.origin.get('class')} (sha256 {meta.origin.get('sha256', '')[:12]})"
        if meta.quantization:
            note += f"; {meta.quantization.get('mode')}: {meta.quantization.get('summary', '')}"
    else:
        from .export.timm import export_timm, parse_classes

        if args.quantize:
            raise ConfigError("--quantize applies to checkpoint exports; train the model with AutoTimm first")
        names = parse_classes(args.classes, args.num_classes)
        meta = export_timm(
            args.timm,
            args.output,
            names,
            task=args.task,
            image_size=args.image_size,
            top_k=args.top_k,
            fmt=args.format,
            device=args.device,
        )
        note = "weights are random (pretrained=False) unless you trained them"
    print(
        f"wrote {args.output} ({args.format}): {meta.model_name}, {meta.task}/{meta.head}, {meta.num_classes} classes, "
        f"input {meta.input_size[1]}x{meta.input_size[0]} ({meta.resize}, {meta.interpolation}); {note}",
        file=sys.stderr,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .runtime.load import read_meta

    meta = read_meta(args.bundle)
    print(meta.to_json())
    return 0


def _summary_line(header: dict[str, Any]) -> str:
    """The gist of a result message: top classes, objects, or the largest mask classes."""
    if "detections" in header:
        dets = header["detections"]
        shown = ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets[:4])
        return f"{len(dets)} objects" + (f": {shown}" if shown else "")
    if "class_fractions" in header:
        ranked = sorted(header["class_fractions"], key=lambda c: -c["fraction"])[:3]
        return ", ".join(f"{c['label']} {c['fraction'] * 100:.1f}%" for c in ranked)
    return ", ".join(f"{c['label']} {c['score']:.2f}" for c in header.get("classes", [])[:3])


def _listen_line(msg: Any) -> str:
    from .client import EosMessage, HeartbeatMessage, ResultMessage, StatusMessage

    if isinstance(msg, ResultMessage):
        line = f"{msg.topic} #{msg.frame_index} {_summary_line(msg.header)}".rstrip()
        if msg.mask is not None:
            line += f" (mask {msg.mask.shape[1]}x{msg.mask.shape[0]})"
        return line + f" [{msg.latency_ms:.0f} ms]"
    if isinstance(msg, StatusMessage):
        return f"{msg.topic} {msg.state}" + (f" ({msg.reason})" if msg.reason else "")
    if isinstance(msg, HeartbeatMessage):
        return f"{msg.topic} {msg.state} {msg.fps:.1f} fps, {msg.frames_out} frames, {msg.drops} dropped"
    if isinstance(msg, EosMessage):
        return f"{msg.topic} {msg.frames} frames ({msg.reason})"
    return msg.topic


def cmd_listen(args: argparse.Namespace) -> int:
    from .client import Subscriber

    received = 0
    with Subscriber(
        args.endpoint,
        args.topic or [""],
        mode="pull" if args.pull else "sub",
        check=args.validate,
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    ) as sub:
        try:
            while args.count is None or received < args.count:
                msg = sub.recv(args.timeout)
                if msg is None:
                    print(f"listen: nothing received for {args.timeout:g} s on {args.endpoint}", file=sys.stderr)
                    return EXIT_FAILED if received == 0 else 0
                received += 1
                if args.json:
                    print(json.dumps({"topic": msg.topic, **msg.header}), flush=True)
                else:
                    print(_listen_line(msg), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    import zmq.auth

    os.makedirs(args.folder, exist_ok=True)
    made = []
    for name in args.names:
        if os.path.exists(os.path.join(args.folder, f"{name}.key_secret")) and not args.force:
            raise ConfigError(f"{os.path.join(args.folder, name)}.key_secret exists; pass --force to replace it")
        old = os.umask(0o077)  # the secret key is never readable by others, not even for a moment
        try:
            public, secret = zmq.auth.create_certificates(args.folder, name)
        finally:
            os.umask(old)
        os.chmod(public, 0o644)
        made.append(f"{public} (public), {secret} (secret, keep private)")
    print("wrote " + "; ".join(made), file=sys.stderr)
    return 0


# -- control ------------------------------------------------------------------------------------
def cmd_control(args: argparse.Namespace) -> int:
    from .app.control import request

    if args.action == "add":
        if not args.arg:
            return _fail("control add needs a source: a JSON object or a YAML/JSON file, like a config's sources[i]")
        text = args.arg
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        import yaml

        try:
            source = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            return _fail(f"control add: the source is not valid JSON/YAML ({str(exc).splitlines()[0]})")
        payload: dict[str, Any] = {"op": "add", "source": source}
    elif args.action == "remove":
        if not args.arg:
            return _fail("control remove needs the id of a running source")
        payload = {"op": "remove", "id": args.arg}
    else:
        payload = {"op": args.action}
    try:
        reply = request(args.endpoint, payload, timeout_s=args.timeout)
    except TimeoutError as exc:
        print(f"autotimm-stream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(reply, indent=1))
    return 0 if reply.get("ok") else EXIT_FAILED


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="autotimm-stream", description="Real-time video inference for AutoTimm models.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a YAML config")
    r.add_argument("config", help="YAML config (see configs/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="annotate a generated clip with the bundled model")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--frames", type=_positive_int, default=250, help="length of the generated clip in frames")
    d.add_argument("--fast", action="store_true", help="as fast as the machine allows, not at the clip's speed")
    d.add_argument(
        "--task",
        choices=(Task.DETECTION.value, Task.SEGMENTATION.value, Task.CLASSIFICATION.value),
        default=Task.DETECTION.value,
        help="the AutoTimm shape detector (default), the AutoTimm shape segmentor (masks, on another scene) "
        "or the first milestone's classifier",
    )
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("export", help="build a model bundle from an AutoTimm checkpoint (or a timm model name)")
    e.add_argument("checkpoint", nargs="?", help="AutoTimm/Lightning .ckpt file (needs the autotimm extra)")
    e.add_argument("--timm", metavar="NAME", help="instead of a checkpoint: a timm model name (pretrained=False)")
    e.add_argument("-o", "--output", required=True, help="bundle file to write")
    e.add_argument("--classes", help="class names: 'a,b,c' or a file with one per line (default class_0..)")
    e.add_argument("--num-classes", type=int, help="--timm: number of classes when no names are given")
    e.add_argument(
        "--task",
        choices=(Task.CLASSIFICATION.value, Task.MULTILABEL.value),
        default=Task.CLASSIFICATION.value,
        help="--timm only",
    )
    e.add_argument("--image-size", type=_positive_int, help="input size (default: the checkpoint's, else the task's)")
    e.add_argument("--format", choices=("torchscript", "export", "onnx", "aoti"), default="torchscript")
    e.add_argument("--device", default="cpu", help="--format aoti: compile for this device (cpu or cuda)")
    e.add_argument(
        "--quantize", choices=("int8",), help="dynamic int8 quantization for the CPU (reports accuracy change)"
    )
    e.add_argument(
        "--top-k", type=_positive_int, default=5, help="classification: classes listed per result (default: 5)"
    )
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="print a bundle's metadata")
    i.add_argument("bundle")
    i.set_defaults(func=cmd_info)

    sub_l = sub.add_parser("listen", help="print results published on ZeroMQ")
    sub_l.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT)
    sub_l.add_argument("--topic", action="append", help="topic prefix to subscribe to (repeatable)")
    sub_l.add_argument("--json", action="store_true", help="one JSON object per line")
    sub_l.add_argument("--count", type=_positive_int, help="exit after this many messages (default: never)")
    sub_l.add_argument(
        "--timeout", type=_positive_seconds, default=30.0, help="exit after this many quiet seconds (default: 30)"
    )
    sub_l.add_argument("--validate", action="store_true", help="check every message against the JSON Schema")
    sub_l.add_argument("--pull", action="store_true", help="connect a PULL socket (engine in sinks.zmq.mode push)")
    sub_l.add_argument("--curve-server-key", metavar="FILE", help="CURVE: the engine's public key file")
    sub_l.add_argument("--curve-client-key", metavar="FILE", help="CURVE: this client's secret key file")
    sub_l.set_defaults(func=cmd_listen)

    k = sub.add_parser("keygen", help="make CURVE key pairs for an encrypted ZeroMQ publisher and its clients")
    k.add_argument("folder", help="where to write NAME.key (public) and NAME.key_secret (secret)")
    k.add_argument("names", nargs="*", default=["server", "client"], help="key pair names (default: server client)")
    k.add_argument("--force", action="store_true", help="replace existing key files")
    k.set_defaults(func=cmd_keygen)

    c = sub.add_parser("control", help="add, remove or list the sources of a running engine")
    c.add_argument("action", choices=("list", "add", "remove", "stats", "stop"))
    c.add_argument("arg", nargs="?", help="add: source as JSON/YAML text or a file; remove: source id")
    c.add_argument("--endpoint", default=DEFAULT_CONTROL_ENDPOINT, help="the engine's control.endpoint")
    c.add_argument("--timeout", type=_positive_seconds, default=10.0, help="seconds to wait for the reply")
    c.set_defaults(func=cmd_control)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except StreamError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
