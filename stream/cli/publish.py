"""``l2g-stream publish``: video files as MPEG-TS chunks, with a progress bar over every file (frames, ETA) and one
line (or JSON object) per file at the end, failed files included with what was sent before the failure."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.cli.common import EXIT_BAD_INPUT, CliError, check_reachable, load_settings, setup_logging

if TYPE_CHECKING:
    from stream.client import PublishReport

__all__ = ["cmd_publish", "estimated_frames"]


def estimated_frames(path: Path) -> int | None:
    """The frame count of a video file from its container (or duration x rate), without decoding; ``None`` when
    the container does not say."""
    import av

    try:
        with av.open(str(path)) as src:
            if not src.streams.video:
                return None
            vs = src.streams.video[0]
            if vs.frames:
                return int(vs.frames)
            rate = vs.average_rate or vs.guessed_rate
            if src.duration and rate:
                return int(src.duration / av.time_base * float(rate))
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


class _Progress:
    """A tqdm bar over the frames of every file (an ETA when the containers declare their lengths)."""

    def __init__(self, paths: list[Path], enabled: bool) -> None:
        from tqdm import tqdm

        counts = [estimated_frames(p) for p in paths] if enabled else []
        total = sum(c for c in counts if c) if counts and all(counts) else None
        self._bar: Any = tqdm(total=total, unit="frame", desc=f"publishing {len(paths)} file(s)", disable=not enabled,
                              file=sys.stderr, dynamic_ncols=True)
        self._seen: dict[str, int] = {}

    def __call__(self, report: PublishReport) -> None:
        key = report.path or report.camera_id
        self._bar.update(report.frames - self._seen.get(key, 0))
        self._seen[key] = report.frames
        self._bar.set_postfix_str(f"{report.camera_id}: {report.chunks} chunks, {report.bytes / 1e6:.1f} MB")

    def close(self) -> None:
        self._bar.close()


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a file or folder; exit status 2 when a file failed (the others were still published)."""
    from stream.client import publish_video_files, video_files

    settings = load_settings(args)
    setup_logging(settings.runtime.log_level if getattr(args, "log_level", None) else "WARNING")
    paths = video_files(args.path)
    if args.camera and len(paths) > 1:
        raise CliError("--camera names one camera; a folder publishes one camera per file")
    check_reachable(settings)
    if settings.topics.create:
        from stream.kafka import ensure_topics

        ensure_topics(settings)
    progress = _Progress(paths, enabled=settings.runtime.progress and not args.json)
    transcode = True if args.transcode else (False if args.remux else None)
    try:
        reports = publish_video_files(settings, paths, camera_id=args.camera, start_time=args.start_time,
                                      segment_seconds=args.segment_seconds, transcode=transcode,
                                      max_side=args.max_side, realtime=args.realtime, progress=progress,
                                      stop_on_error=args.stop_on_error)
    finally:
        progress.close()
    for r in reports:
        if args.json:
            print(json.dumps({**asdict(r), "topic": settings.topics.video}))
            continue
        refs = f", {r.references} as references" if r.references else ""
        sent = f"{r.chunks} chunks, {r.frames} frames, {r.bytes / 1e6:.2f} MB{refs} in {r.seconds:.1f} s"
        if r.error is None:
            print(f"published {r.camera_id}: {sent} to {settings.topics.video}")
        else:
            print(f"FAILED {r.camera_id} ({r.path}): {r.error}; sent before the failure: {sent}")
    failed = [r for r in reports if r.error is not None]
    skipped = len(paths) - len(reports)
    if failed and not args.json:
        rest = f", {skipped} not attempted (--stop-on-error)" if skipped else ""
        print(f"{len(reports) - len(failed)} of {len(paths)} files published, {len(failed)} failed{rest}",
              file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0
