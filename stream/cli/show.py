"""``l2g-stream show``: write the contact sheet of an answer (:mod:`stream.show`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stream.cli.common import CliError, check_reachable, load_settings, setup_logging

__all__ = ["add_show_parser", "cmd_show"]


def add_show_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
                    ) -> None:
    """The ``show`` subcommand's options."""
    from stream.cli.argtypes import positive_float, positive_int

    show = sub.add_parser(
        "show", parents=[common], help="draw an answer: query, matched frames and outlines as a PNG",
        description="Fetch an answer's matched frames back from Kafka and write a contact sheet PNG: the query "
                    "image, the top matches labelled with camera, time, score and geometric proof, the query's "
                    "outline drawn, grouped by time segment. The answer is read from the results topic by query "
                    "id, or from a file saved with 'l2g-stream query --json'.")
    show.add_argument("query_id", nargs="?", default=None, help="the query's id (read from the results topic)")
    show.add_argument("--json", dest="result_file", type=Path, default=None,
                      help="a result saved with 'l2g-stream query --json' instead of a query id")
    show.add_argument("--image", type=Path, default=None,
                      help="the query image (default: read from the queries topic by query id)")
    show.add_argument("--out", "-o", type=Path, default=None, help="PNG to write (default: <query id>.png)")
    show.add_argument("--top", type=positive_int, default=8, help="matches drawn")
    show.add_argument("--timeout", type=positive_float, default=30.0,
                      help="seconds to look for the result, the query and each chunk")
    show.add_argument("--report", action="store_true", help="print what was drawn as JSON")


def cmd_show(args: argparse.Namespace) -> int:
    """Write the sheet; prints its path (1 when no matched frame could be fetched)."""
    from stream.kafka import KafkaSource
    from stream.show import find_query_image, find_result, load_result_file, show_result

    if (args.query_id is None) == (args.result_file is None):
        raise CliError("give a query id or --json RESULT_FILE (one of them)")
    settings = load_settings(args)
    setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    image = None
    if args.image is not None:
        try:
            image = args.image.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.image}: {exc.strerror}") from exc
    result = load_result_file(args.result_file) if args.result_file is not None else None
    check_reachable(settings)
    source = KafkaSource(settings.kafka, client_id=f"{settings.kafka.client_id}-show", group_id=None,
                         fetch_max_wait_ms=20)
    try:
        if result is None:
            result = find_result(settings, args.query_id, source=source, timeout_s=args.timeout)
        if image is None:
            image = find_query_image(settings, result.query_id, source=source, timeout_s=args.timeout)
        report = show_result(settings, result, source=source, query_image=image, top=args.top,
                             timeout_s=args.timeout)
    finally:
        source.close()
    out = args.out or Path(f"{result.query_id}.png")
    report.sheet.write_png(str(out))
    if args.report:
        print(json.dumps({"path": str(out), "query_id": result.query_id, "frames_shown": report.frames_shown,
                          "frames_missing": report.frames_missing, "width": report.sheet.image.shape[1],
                          "height": report.sheet.image.shape[0]}, indent=2))
    else:
        for line in report.frames_missing:
            print(f"not drawn: {line}")
        print(f"wrote {out} ({report.frames_shown} frames, {len(result.segments)} segments)")
    return 0 if report.frames_shown or not result.matches else 1
