"""``l2g-stream``: the command line of the service.

Commands::

    l2g-stream demo                       embedded broker + sample video + one worker + a query, in ~1 minute
    l2g-stream broker [--port 9092]       the embedded broker (tansu, in memory) in the foreground, topics created
    l2g-stream worker [--print-settings]  run a worker against any Kafka (settings: env L2G_*, --config file)
    l2g-stream publish PATH [--json]      publish a video file or folder as MPEG-TS chunks (one camera per file)
    l2g-stream query IMAGE [--json]       ask where/when IMAGE appears; prints the matches
    l2g-stream show QUERY_ID | --json F   contact sheet PNG of an answer: query, matched frames, outlines
    l2g-stream extractors [--json]        list the feature extractors, their sizes and option keys
    l2g-stream ui [--port 8080]           the web page: upload an image, see the answer live (stream.ui)
    l2g-stream dead-letters inspect|redrive   count and list dead letters; republish the originals they carry
    l2g-stream replay --camera X --since T    publish a camera's chunks again from an event time

Global options (before or after the command): ``--config FILE`` (YAML/JSON/TOML), ``--bootstrap HOST:PORT``,
``--log-level``, ``--version``. Bad input exits with status 2 and a one-line message; an unreachable broker or a
timeout with 1.

The package is split by job: :mod:`~stream.cli.args` (the parser), :mod:`~stream.cli.common` (settings, logging),
:mod:`~stream.cli.commands` (worker, broker, query, demo), :mod:`~stream.cli.publish`,
:mod:`~stream.cli.extractors`. :func:`main` applies the process settings (:func:`stream.runtime.configure_process`)
before anything loads torch or FAISS; no module of this package imports either at module level (nor anything
that does): each command imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from stream.cli.args import build_parser
from stream.cli.commands import cmd_broker, cmd_demo, cmd_query, cmd_worker
from stream.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, CliError
from stream.cli.deadletters import cmd_dead_letters
from stream.cli.extractors import cmd_extractors
from stream.cli.publish import cmd_publish
from stream.cli.replay import cmd_replay
from stream.cli.show import cmd_show
from stream.cli.ui import cmd_ui
from stream.errors import BadInputError, BrokerError, ConfigurationError, StreamError
from stream.formatting import format_result, format_time
from stream.runtime import configure_process

__all__ = ["COMMANDS", "CliError", "build_parser", "format_result", "format_time", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "dead-letters": cmd_dead_letters, "replay": cmd_replay,
    "demo": cmd_demo, "worker": cmd_worker, "broker": cmd_broker, "publish": cmd_publish, "query": cmd_query,
    "extractors": cmd_extractors, "ui": cmd_ui, "show": cmd_show,
}


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
