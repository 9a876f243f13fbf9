"""``l2g-stream dead-letters inspect|redrive``: look at the dead-letter topic and republish what was fixed
(:mod:`stream.redrive` says what can be redriven; the options are in :mod:`stream.cli.args`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from stream.cli.common import CliError, check_reachable, load_settings, setup_logging
from stream.formatting import format_time

if TYPE_CHECKING:
    from stream.redrive import Letter

__all__ = ["cmd_dead_letters"]


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Run ``inspect`` or ``redrive``; 0 when done (a redrive that skipped letters too: they are listed)."""
    from stream.redrive import LetterFilter, read_letters, redrive, summary
    from stream.scan import open_reader, scan

    settings = load_settings(args)
    setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    if args.action == "redrive" and not args.reason and not args.all:
        raise CliError("redrive needs --reason REASON (see `dead-letters inspect`) or --all")
    check_reachable(settings)
    wanted = LetterFilter(reasons=tuple(args.reason or ()), stages=tuple(args.stage or ()), since=args.since,
                          until=args.until)
    topic = settings.topics.dead_letters
    source = open_reader(settings, "dead-letters")
    try:
        letters = [lt for lt in read_letters(scan(source, topic)) if wanted.matches(lt)]
    finally:
        source.close()
    if args.action == "inspect":
        return _inspect(args, topic, letters, summary(letters))
    sink = None
    if not args.dry_run:
        from stream.kafka import KafkaSink

        sink = KafkaSink(settings.kafka, client_id=f"{settings.kafka.client_id}-redrive")
    try:
        report = redrive(letters, sink, dry_run=args.dry_run)
    finally:
        if sink is not None:
            sink.close()
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        verb = "would send" if report.dry_run else "sent"
        targets = ", ".join(f"{n} to {t}" for t, n in report.as_dict()["to"].items()) or "nothing"
        print(f"{verb} {targets}; {len(report.skipped)} letters cannot be redriven")
        for position, why in report.skipped:
            print(f"  {position}: {why}")
    return 0


def _inspect(args: argparse.Namespace, topic: str, letters: list[Letter], counts: dict[str, Any]) -> int:
    shown = letters if args.tail < 0 else letters[len(letters) - args.tail:] if args.tail else []
    if args.json:
        for item in shown:
            print(json.dumps(item.as_dict(), sort_keys=True))
        print(json.dumps({"summary": counts}, sort_keys=True))
        return 0
    for item in shown:
        lt = item.letter
        if lt is None:
            print(f"{item.position}  (not a dead letter: {item.problem})")
            continue
        carried = "value carried" if lt.original_value is not None else f"value not carried ({lt.original_size} B)"
        print(f"{format_time(lt.failed_at)}  {lt.stage}/{lt.reason}  {lt.original_topic}[{lt.original_partition}]"
              f"@{lt.original_offset}  {carried}  by {lt.worker_id or '?'}\n    {lt.error_message[:200]}")
    print(f"{counts['letters']} dead letters in {topic} match ({counts['redrivable']} redrivable), at "
          f"{format_time(time.time())}:")
    for reason, n in counts["by_reason"].items():
        print(f"  {n:6d}  {reason}")
    return 0
