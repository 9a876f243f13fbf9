"""Dead letters for operators: read them back from the dead-letter topic, count them, and republish the originals
they carry to the topic they came from (``l2g-stream dead-letters inspect|redrive``).

What can be redriven: a dead letter carries its original value when that was at most 64 KiB (and half of
``kafka.max_message_bytes``), with the original key and headers. That covers every query, every video chunk that
travels by claim-check reference (``ref``: the payload itself stays in storage) and small inline chunks. A letter
without the value (an inline chunk larger than that, or a letter over the message limit) cannot be redriven from
the letter: the original may still be read at ``original_topic[partition]@offset`` while the topic retains it, and
published again with ``l2g-stream publish`` from its source file. Redriving stage ``merge`` letters (stage-1
partials) is refused: a partial is only meaningful within its query's deadline.

A redriven message keeps its key, value and headers and gains the header ``l2g-redriven-from`` =
``<dead-letter topic>/<partition>/<offset>`` (so a letter redriven twice shows up twice under the same origin).
Redriving is safe to repeat for video (frames already indexed are skipped by key); a redriven query is answered
again, late.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stream.envelope import decode_message
from stream.errors import BadInputError
from stream.messages import DeadLetter
from stream.ports import MessageSink, Record

__all__ = ["REDRIVE_HEADER", "Letter", "LetterFilter", "RedriveReport", "read_letters", "redrive", "summary"]

REDRIVE_HEADER = "l2g-redriven-from"
_NOT_REDRIVEN_STAGES = ("merge",)


@dataclass(frozen=True)
class Letter:
    """One dead letter and where it was read.

    Attributes:
        position: ``<topic>/<partition>/<offset>`` of the letter in the dead-letter topic.
        letter: the decoded letter, or None when the record is not a dead letter.
        problem: why the record could not be decoded (None when it was).
    """

    position: str
    letter: DeadLetter | None
    problem: str | None = None

    @property
    def redrivable(self) -> bool:
        """The letter carries the original value, and its stage may be redriven."""
        return self.letter is not None and self.letter.original_value is not None \
            and self.letter.stage not in _NOT_REDRIVEN_STAGES

    def why_not(self) -> str | None:
        """Why the letter cannot be redriven (None when it can)."""
        if self.letter is None:
            return f"not a dead letter: {self.problem}"
        if self.letter.stage in _NOT_REDRIVEN_STAGES:
            return f"stage {self.letter.stage!r} (a stage-1 partial) is only meaningful before its query's deadline"
        if self.letter.original_value is None:
            return (f"the original value ({self.letter.original_size} bytes) is not carried; it may still be at "
                    f"{self.letter.original_topic}[{self.letter.original_partition}]@{self.letter.original_offset}")
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (the original value's size, not its bytes)."""
        out: dict[str, Any] = {"position": self.position, "redrivable": self.redrivable}
        if self.letter is None:
            out["problem"] = self.problem
            return out
        data = self.letter.model_dump(mode="json", exclude={"original_value", "original_key"})
        data["original_key"] = (self.letter.original_key or b"").decode("utf-8", "replace") or None
        data["value_carried"] = self.letter.original_value is not None
        return {**out, **data}


@dataclass(frozen=True)
class LetterFilter:
    """Which letters a command looks at (an empty field matches every letter).

    Attributes:
        reasons, stages: the letter's ``reason`` / ``stage`` is one of these.
        since, until: ``failed_at`` within (Unix seconds, inclusive).
    """

    reasons: Collection[str] = ()
    stages: Collection[str] = ()
    since: float | None = None
    until: float | None = None

    def matches(self, item: Letter) -> bool:
        """Whether ``item`` passes (records that are not dead letters pass only an empty filter)."""
        lt = item.letter
        if lt is None:
            return not (self.reasons or self.stages or self.since is not None or self.until is not None)
        in_time = (self.since is None or lt.failed_at >= self.since) and \
            (self.until is None or lt.failed_at <= self.until)
        return (not self.reasons or lt.reason in self.reasons) and (not self.stages or lt.stage in self.stages) \
            and in_time


def read_letters(records: Iterable[Record]) -> Iterator[Letter]:
    """Decode dead-letter records (a record that is not one is kept, with the problem)."""
    for rec in records:
        position = f"{rec.topic}/{rec.partition}/{rec.offset}"
        try:
            yield Letter(position, decode_message(rec.value, rec.headers, DeadLetter))
        except BadInputError as exc:
            yield Letter(position, None, str(exc))


def summary(letters: Iterable[Letter]) -> dict[str, Any]:
    """Counts: total, redrivable, and per ``stage/reason``."""
    items = list(letters)
    by = Counter(f"{i.letter.stage}/{i.letter.reason}" if i.letter else "undecodable" for i in items)
    return {"letters": len(items), "redrivable": sum(i.redrivable for i in items),
            "by_reason": dict(sorted(by.items(), key=lambda kv: (-kv[1], kv[0])))}


@dataclass
class RedriveReport:
    """What a redrive did (or, with ``dry_run``, would do).

    Attributes:
        sent: positions of the letters whose original was republished, with the topic it went to.
        skipped: positions of the letters that cannot be redriven, with why.
        dry_run: nothing was sent.
    """

    sent: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {"dry_run": self.dry_run, "sent": len(self.sent), "skipped": len(self.skipped),
                "to": dict(Counter(t for _, t in self.sent)),
                "skipped_letters": [{"position": p, "why": w} for p, w in self.skipped]}


def redrive(letters: Iterable[Letter], sink: MessageSink | None, *, dry_run: bool = False) -> RedriveReport:
    """Republish the original of every redrivable letter to its ``original_topic`` (``sink`` may be None with
    ``dry_run``); flushes before returning.

    Raises:
        BrokerError: a send or the flush failed (what was sent before is in the log, not in a report).
    """
    report = RedriveReport(dry_run=dry_run)
    for item in letters:
        why = item.why_not()
        if why is not None or item.letter is None:
            report.skipped.append((item.position, why or "not a dead letter"))
            continue
        lt = item.letter
        if not dry_run:
            assert sink is not None
            headers = [(k, v.encode()) for k, v in lt.original_headers.items() if k != REDRIVE_HEADER]
            sink.send(lt.original_topic, lt.original_value or b"", key=lt.original_key,
                      headers=[*headers, (REDRIVE_HEADER, item.position.encode())])
        report.sent.append((item.position, lt.original_topic))
    if not dry_run and sink is not None and report.sent:
        sink.flush()
    return report
