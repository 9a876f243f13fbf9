"""``l2g-stream replay --camera X --since T``: publish a camera's chunks again from a point in event time
(:mod:`stream.replay` says how and why it republishes rather than resetting offsets; the options are in
:mod:`stream.cli.args`)."""

from __future__ import annotations

import argparse
import json

from stream.cli.common import CliError, check_reachable, load_settings, setup_logging
from stream.formatting import format_time

__all__ = ["cmd_replay"]


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay; 0 when done (also when nothing matched: the report says so), 1 when the broker fails."""
    from stream.replay import replay_camera

    settings = load_settings(args)
    setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    if args.until is not None and args.until < args.since:
        raise CliError("--until is before --since")
    check_reachable(settings)
    sink = None
    if not args.dry_run:
        from stream.kafka import KafkaSink

        sink = KafkaSink(settings.kafka, client_id=f"{settings.kafka.client_id}-replay")
    try:
        report = replay_camera(settings, args.camera, args.since, args.until, to=args.to, dry_run=args.dry_run,
                               sink=sink)
    finally:
        if sink is not None:
            sink.close()
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
        return 0
    span = (f" ({format_time(report.first_time)} .. {format_time(report.last_time)})"
            if report.first_time is not None and report.last_time is not None else "")
    verb = "would publish" if report.dry_run else "published"
    print(f"camera {report.camera!r} from {format_time(report.since)}: {report.matched} chunks found{span}, "
          f"{verb} {report.matched if report.dry_run else report.sent} to {report.to}; {report.scanned} records "
          f"read ({report.lookup})")
    return 0
