"""What the ``l2g-stream`` commands share: the user-error type, settings from flags, logging, the reachability
check."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from stream.errors import BrokerError, StreamError

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "QUIET_LOGGERS", "CliError", "check_reachable", "load_settings",
           "setup_logging"]

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
QUIET_LOGGERS = ("kafka", "faiss.loader")
"""Loggers held at WARNING unless the level asked for is DEBUG: their INFO lines are start-up chatter
(``faiss.loader`` prints eight lines on every start, kafka-python one per connection)."""


class CliError(StreamError):
    """A user error with a message meant for the terminal (exit status 2)."""


def load_settings(args: argparse.Namespace, **groups: dict[str, Any]) -> Settings:
    """The settings: ``--config`` file, env ``L2G_*``, then ``groups`` and the common flags on top."""
    from stream.settings import Settings

    overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in groups.items()}
    if getattr(args, "bootstrap", None):
        overrides.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    if getattr(args, "log_level", None):
        overrides.setdefault("runtime", {})["log_level"] = args.log_level
    return Settings.load(getattr(args, "config", None), **overrides)


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Fail fast (instead of the client's 30 s bootstrap timeout) when no bootstrap server accepts a connection.

    Raises:
        BrokerError: none does.
    """
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


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``; the :data:`QUIET_LOGGERS` at WARNING or above unless ``level`` is DEBUG."""
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    quiet = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, getattr(logging, level))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
