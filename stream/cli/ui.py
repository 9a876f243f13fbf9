"""``l2g-stream ui``: serve the web page (:mod:`stream.ui`) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

from stream.cli.common import check_reachable, load_settings, setup_logging

__all__ = ["add_ui_parser", "cmd_ui"]


def add_ui_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The ``ui`` subcommand's options."""
    from stream.cli.argtypes import port_arg

    ui = sub.add_parser("ui", parents=[common], help="serve the web page (upload an image, see the answer live)",
                        description="Serve the query page: a separate process that speaks Kafka like any client "
                                    "(settings: the ui group, env L2G_UI__*, and these flags).")
    ui.add_argument("--host", default=None, help="listen address (default: ui.host, 127.0.0.1)")
    ui.add_argument("--port", type=port_arg, default=None, help="TCP port, 0 for a free one (default: ui.port, 8080)")


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the page until SIGTERM or Ctrl-C; prints ``l2g-stream ui on http://HOST:PORT`` once it listens."""
    from stream.ui.server import UiServer

    groups: dict[str, dict[str, Any]] = {}
    if args.host is not None:
        groups.setdefault("ui", {})["host"] = args.host
    if args.port is not None:
        groups.setdefault("ui", {})["port"] = args.port
    settings = load_settings(args, **groups)
    setup_logging(settings.runtime.log_level)
    check_reachable(settings)
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with UiServer(settings) as server:
            print(f"l2g-stream ui on {server.url} (Kafka {settings.kafka.bootstrap_servers}); Ctrl-C stops it",
                  flush=True)
            stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
