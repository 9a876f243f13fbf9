"""``l2g-stream``: the command line of the service.

Commands::

    l2g-stream demo                       embedded broker + sample video + one worker + a query, in ~1 minute
    l2g-stream worker [--print-settings]  run a worker against any Kafka (settings: env L2G_*, --config file)
    l2g-stream publish PATH               publish a video file or folder as MPEG-TS chunks (one camera per file)
    l2g-stream query IMAGE                ask where/when IMAGE appears; prints the matches
    l2g-stream extractors                 list the feature extractors

Global options (before or after the command): ``--config FILE`` (YAML/JSON/TOML), ``--bootstrap HOST:PORT``,
``--log-level``. Bad input exits with status 2 and a one-line message; an unreachable broker or a timeout with 1.

:func:`main` applies the process settings (:func:`stream.runtime.configure_process`) before anything loads torch or
FAISS; this module therefore imports neither at module level (nor anything that does): each command imports what it
needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2g_core import MODES
from stream.errors import BadInputError, BrokerError, ConfigurationError, StreamError
from stream.formatting import format_result, format_time
from stream.runtime import configure_process

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = ["build_parser", "format_result", "format_time", "main"]

LOG = logging.getLogger("l2g-stream")
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class CliError(StreamError):
    """A user error with a message meant for the terminal (exit status 2)."""


def _time_arg(text: str) -> float:
    """Unix seconds, an ISO 8601 time (UTC when no zone), or ``now`` / ``now-10m`` / ``-90s`` (relative)."""
    t = text.strip()
    if t.startswith(("now", "-")):
        rest = t[3:] if t.startswith("now") else t
        if not rest:
            return time.time()
        units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
        try:
            value = float(rest[:-1]) * units[rest[-1]] if rest[-1] in units else float(rest)
        except (ValueError, IndexError) as exc:
            raise argparse.ArgumentTypeError(f"bad relative time {text!r} (e.g. now-10m, -90s)") from exc
        return time.time() + value
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad time {text!r}: Unix seconds, ISO 8601 or now-10m") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``l2g-stream``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="settings file (YAML, JSON or TOML); env L2G_* and flags override it")
    common.add_argument("--bootstrap", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(prog="l2g-stream", parents=[common],
                                     description="Find where and when a query image appears in surveillance video.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="self-contained demo: broker, video, worker, query")
    demo.add_argument("--extractor", default=None, help="extractor (default: the settings', xfeat)")
    demo.add_argument("--seconds", type=_positive_float, default=12.0, help="seconds of synthetic video per camera")
    demo.add_argument("--cameras", type=_positive_int, default=2, help="synthetic cameras")
    demo.add_argument("--video", type=Path, default=None,
                      help="also publish this clip as a camera and query a crop of it (default: a clip from "
                           "../shared/data/video when present)")
    demo.add_argument("--no-clip", action="store_true", help="synthetic cameras only")
    demo.add_argument("--mode", choices=MODES, default=None)
    demo.add_argument("--k", type=_positive_int, default=5)

    worker = sub.add_parser("worker", parents=[common], help="run a worker (ingest + queries + merge)")
    worker.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    worker.add_argument("--worker-id", default=None)
    worker.add_argument("--extractor", default=None)
    worker.add_argument("--snapshot-dir", type=Path, default=None)
    worker.add_argument("--http-port", type=int, default=None)

    pub = sub.add_parser("publish", parents=[common], help="publish a video file or folder as chunks")
    pub.add_argument("path", type=Path, help="video file, or folder of video files (one camera per file)")
    pub.add_argument("--camera", default=None, help="camera id (default: the file name without suffix)")
    pub.add_argument("--segment-seconds", type=_positive_float, default=2.0)
    pub.add_argument("--start-time", type=_time_arg, default=None,
                     help="event time of the first frame (Unix, ISO 8601 or now-10m; default: now)")
    enc = pub.add_mutually_exclusive_group()
    enc.add_argument("--transcode", action="store_true", help="always re-encode to H.264")
    enc.add_argument("--remux", action="store_true", help="never re-encode (fails for codecs MPEG-TS cannot hold)")
    pub.add_argument("--max-side", type=_positive_int, default=None, help="resize when transcoding")
    pub.add_argument("--realtime", action="store_true", help="pace chunks at the video's real time")

    query = sub.add_parser("query", parents=[common], help="ask where/when an image appears")
    query.add_argument("image", type=Path, help="JPEG or PNG")
    query.add_argument("--camera", action="append", default=None, help="only this camera (repeatable)")
    query.add_argument("--since", type=_time_arg, default=None, help="from this time (Unix, ISO 8601, now-10m)")
    query.add_argument("--until", type=_time_arg, default=None)
    query.add_argument("--k", type=_positive_int, default=None)
    query.add_argument("--mode", choices=MODES, default=None)
    query.add_argument("--timeout", type=_positive_float, default=None, help="answer budget in seconds")
    query.add_argument("--json", action="store_true", help="print the result as JSON")

    sub.add_parser("extractors", parents=[common], help="list the feature extractors and presets")
    return parser


def _settings(args: argparse.Namespace, **groups: dict[str, Any]) -> Settings:
    from stream.settings import Settings

    overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in groups.items()}
    if getattr(args, "bootstrap", None):
        overrides.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    if getattr(args, "log_level", None):
        overrides.setdefault("runtime", {})["log_level"] = args.log_level
    return Settings.load(getattr(args, "config", None), **overrides)


def _check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Fail fast (instead of the client's 30 s bootstrap timeout) when no bootstrap server accepts a connection."""
    import socket

    servers = [s.strip() for s in settings.kafka.bootstrap_servers.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s).close()
            return
        except (OSError, ValueError):
            continue
    raise BrokerError(f"no Kafka bootstrap server reachable at {settings.kafka.bootstrap_servers} "
                      "(set --bootstrap, L2G_KAFKA__BOOTSTRAP_SERVERS or kafka.bootstrap_servers in --config)")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, getattr(logging, level)))


# ---------------------------------------------------------------------------------------------------- commands
def cmd_extractors(args: argparse.Namespace) -> int:
    from plugins import PRESETS, available, extractor_class

    print(f"{'name':<18} {'local':>5} {'global':>6}  status")
    for name in available():
        try:
            cls = extractor_class(name)
            print(f"{name:<18} {cls.local_dim:>5} {cls.global_dim:>6}  ok")
        except Exception as exc:  # a built-in whose module is missing or broken
            print(f"{name:<18} {'?':>5} {'?':>6}  unavailable: {type(exc).__name__}: {exc}"[:160])
    print("\npresets:")
    for name, preset in sorted(PRESETS.items()):
        print(f"  {name:<16} -> {preset.extractor} {preset.options}  {preset.description}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    groups: dict[str, dict[str, Any]] = {}
    if args.worker_id:
        groups["runtime"] = {"worker_id": args.worker_id}
    if args.extractor:
        groups["extractor"] = {"name": args.extractor}
    if args.snapshot_dir:
        groups["index"] = {"snapshot_dir": str(args.snapshot_dir)}
    if args.http_port is not None:
        groups["http"] = {"port": args.http_port}
    settings = _settings(args, **groups)
    if args.print_settings:
        print(json.dumps(settings.as_dict(), indent=2, sort_keys=True, default=str))
        return 0
    _setup_logging(settings.runtime.log_level)
    from stream.worker import Worker

    worker = Worker(settings)
    return worker.run()


def cmd_publish(args: argparse.Namespace) -> int:
    from stream.client import PublishReport, publish_video_files, video_files

    settings = _settings(args)
    _setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    paths = video_files(args.path)
    if args.camera and len(paths) > 1:
        raise CliError("--camera names one camera; a folder publishes one camera per file")
    _check_reachable(settings)
    if settings.topics.create:
        from stream.kafka import ensure_topics

        ensure_topics(settings)
    last = [0.0]

    def progress(r: PublishReport) -> None:
        now = time.monotonic()
        if settings.runtime.progress and now - last[0] > 1.0:
            last[0] = now
            print(f"  {r.camera_id}: {r.chunks} chunks, {r.frames} frames, {r.bytes / 1e6:.1f} MB ...", flush=True)

    transcode = True if args.transcode else (False if args.remux else None)
    reports = publish_video_files(settings, paths, camera_id=args.camera, start_time=args.start_time,
                                  segment_seconds=args.segment_seconds, transcode=transcode, max_side=args.max_side,
                                  realtime=args.realtime, progress=progress)
    for r in reports:
        refs = f", {r.references} as references" if r.references else ""
        print(f"published {r.camera_id}: {r.chunks} chunks, {r.frames} frames, {r.bytes / 1e6:.2f} MB{refs} "
              f"in {r.seconds:.1f} s to {settings.topics.video}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from stream.client import QueryClient
    from stream.decode import decode_image

    settings = _settings(args)
    _setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.image}: {exc.strerror}") from exc
    decode_image(image, max_side=settings.query.image_max_side, max_pixels=settings.query.max_image_pixels)
    timeout = args.timeout or settings.query.default_timeout_s
    _check_reachable(settings)
    with QueryClient(settings) as client:
        result = client.ask(image, timeout_s=timeout, k=args.k, mode=args.mode, cameras=args.camera,
                            time_from=args.since, time_to=args.until)
    print(result.model_dump_json(indent=2) if args.json else format_result(result))
    return 0 if result.status != "error" else EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args, _settings(args))


COMMANDS = {"demo": cmd_demo, "worker": cmd_worker, "publish": cmd_publish, "query": cmd_query,
            "extractors": cmd_extractors}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``l2g-stream``; returns the exit status (0 ok, 1 failure, 2 bad input, 130 interrupted)."""
    configure_process()  # first: before any command imports torch or FAISS
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, BadInputError, ConfigurationError, FileNotFoundError, ValueError) as exc:
        print(f"l2g-stream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (BrokerError, StreamError, OSError) as exc:
        print(f"l2g-stream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
