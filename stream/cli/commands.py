"""``l2g-stream worker``, ``broker``, ``query`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from stream.cli.common import EXIT_FAILURE, CliError, check_reachable, load_settings, setup_logging
from stream.errors import BrokerError
from stream.formatting import format_result

__all__ = ["cmd_broker", "cmd_demo", "cmd_query", "cmd_worker"]

LOG = logging.getLogger("l2g-stream")


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT, or print its settings (``--print-settings``); both check the free-form
    option maps first (:func:`stream.settings_check.check_settings`)."""
    from stream.settings_check import check_settings

    groups: dict[str, dict[str, Any]] = {}
    if args.worker_id:
        groups["runtime"] = {"worker_id": args.worker_id}
    if args.extractor:
        groups["extractor"] = {"name": args.extractor}
    if args.snapshot_dir:
        groups["index"] = {"snapshot_dir": str(args.snapshot_dir)}
    if args.http_port is not None:
        groups["http"] = {"port": args.http_port}
    settings = load_settings(args, **groups)
    check_settings(settings)
    if args.print_settings:
        print(json.dumps(settings.as_dict(), indent=2, sort_keys=True, default=str))
        return 0
    setup_logging(settings.runtime.log_level)
    if settings.index.snapshot_dir is None:
        LOG.warning("no index.snapshot_dir (--snapshot-dir, L2G_INDEX__SNAPSHOT_DIR): the index lives in memory "
                    "only, offsets are never committed, and a restart re-reads the video topic from the start")
    from stream.worker import Worker

    return Worker(settings).run()


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded tansu broker in the foreground, create the topics, and stop it on SIGINT/SIGTERM."""
    from stream.broker import EmbeddedBroker, free_port

    settings = load_settings(args)
    setup_logging(settings.runtime.log_level)
    port = args.port or free_port(args.host)
    if not _port_free(args.host, port):
        raise BrokerError(f"port {port} on {args.host} is already in use (another broker?); "
                          "choose another with --port, or 0 for a free one")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with EmbeddedBroker(port, host=args.host) as broker:
            if not args.no_topics:
                from stream.kafka import ensure_topics

                created = ensure_topics(settings.with_overrides(kafka={"bootstrap_servers": broker.bootstrap}))
                print(f"topics created: {', '.join(created) or 'none (all existed)'}", flush=True)
            print(f"tansu broker on {broker.bootstrap} (in memory: everything is lost when it stops); "
                  f"Ctrl-C stops it.\nin another shell:\n  export L2G_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}\n"
                  "  l2g-stream worker --snapshot-dir /tmp/l2g-snapshots\n  l2g-stream publish video.mp4\n"
                  "  l2g-stream query crop.jpg", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    raise BrokerError(f"the broker on {broker.bootstrap} exited")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("broker stopped", file=sys.stderr)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Ask one query and print the result (a table, or JSON with ``--json``); 1 when the result is an error."""
    from stream.client import QueryClient
    from stream.decode import decode_image

    settings = load_settings(args)
    setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.image}: {exc.strerror}") from exc
    decode_image(image, max_side=settings.query.image_max_side, max_pixels=settings.query.max_image_pixels)
    timeout = args.timeout or settings.query.default_timeout_s
    check_reachable(settings)
    with QueryClient(settings) as client:
        result = client.ask(image, timeout_s=timeout, k=args.k, mode=args.mode, cameras=args.camera,
                            time_from=args.since, time_to=args.until)
    print(result.model_dump_json(indent=2) if args.json else format_result(result))
    return 0 if result.status != "error" else EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    """The self-contained demo (:mod:`stream.demo`)."""
    from stream.demo import run_demo

    return run_demo(args, load_settings(args))
