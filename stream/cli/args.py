"""The argument parser of ``l2g-stream`` (no command runs here); its argument types live in
:mod:`stream.cli.argtypes` (re-exported here).

Every option's help ends with its default (``(default: 5)``), or says where the default comes from (``(default:
query.k from the settings)``) when the settings supply it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from l2g_core import MODES
from stream.cli.argtypes import port_arg, positive_float, positive_int, time_arg

__all__ = ["build_parser", "port_arg", "positive_float", "positive_int", "time_arg", "version"]


def version() -> str:
    """The installed ``l2g-stream`` version (``unknown`` when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("l2g-stream")
    except PackageNotFoundError:
        return "unknown"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="settings file (YAML, JSON or TOML); env L2G_* and flags override it "
                             "(default: L2G_CONFIG_FILE, else none)")
    common.add_argument("--bootstrap", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help="Kafka bootstrap servers (default: kafka.bootstrap_servers from the settings)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: runtime.log_level for worker and broker, WARNING otherwise)")
    return common


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    worker = sub.add_parser("worker", parents=[common], help="run a worker (ingest + queries + merge)",
                            description="Run a worker against any Kafka: it ingests video chunks, answers stage 1 "
                                        "of every query for its partitions and merges some queries. Settings come "
                                        "from env L2G_*, --config and these flags (flags win).")
    worker.add_argument("--print-settings", action="store_true",
                        help="print the effective settings as JSON (secrets masked), check them, and exit")
    worker.add_argument("--worker-id", default=None,
                        help="identity in results, dead letters and client ids (default: runtime.worker_id, "
                             "else host name and pid)")
    worker.add_argument("--extractor", default=None,
                        help="extractor or preset name, see `l2g-stream extractors` (default: "
                             f"{_default('extractor', 'name')})")
    worker.add_argument("--snapshot-dir", type=Path, default=None,
                        help="where index snapshots go; without one nothing survives a restart and offsets are "
                             "never committed (default: index.snapshot_dir, none)")
    worker.add_argument("--http-port", type=port_arg, default=None,
                        help="port of /healthz, /readyz and /metrics, 0 for a free one "
                             f"(default: {_default('http', 'port')})")


def _default(group: str, name: str) -> str:
    """``group.name (default value)`` of the settings model, for help texts."""
    from stream.settings import Settings

    model = Settings.model_fields[group].annotation
    assert isinstance(model, type) and hasattr(model, "model_fields")
    return f"{group}.{name}, {model.model_fields[name].default}"


def _add_dead_letters(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                      common: argparse.ArgumentParser) -> None:
    """``dead-letters inspect|redrive`` (:mod:`stream.cli.deadletters`)."""
    dl = sub.add_parser("dead-letters", parents=[common], help="inspect the dead-letter topic, redrive letters",
                        description="Read the dead-letter topic (topics.dead_letters) from the beginning, outside any "
                                    "consumer group. inspect lists and counts the letters; redrive republishes the "
                                    "originals that letters carry to the topic they came from.")
    dl_sub = dl.add_subparsers(dest="action", required=True, metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--reason", action="append", default=None,
                         help="only letters with this reason, repeatable (default: every reason)")
    filters.add_argument("--stage", action="append", default=None, choices=["ingest", "query", "merge"],
                         help="only letters of this stage, repeatable (default: every stage)")
    filters.add_argument("--since", type=time_arg, default=None,
                         help="only letters written at or after this time (Unix, ISO 8601, now-1h; default: all)")
    filters.add_argument("--until", type=time_arg, default=None, help="only letters written up to this time")
    filters.add_argument("--json", action="store_true", help="JSON output (one letter per line for inspect)")
    inspect = dl_sub.add_parser("inspect", parents=[common, filters], help="list and count dead letters")
    inspect.add_argument("--tail", type=int, default=20, metavar="N",
                         help="letters listed: the last N that match, 0 for counts only, -1 for all "
                              "(default: %(default)s)")
    redrive = dl_sub.add_parser("redrive", parents=[common, filters],
                                help="republish the originals carried by dead letters to their source topic")
    redrive.add_argument("--dry-run", action="store_true", help="say what would be sent, send nothing")
    redrive.add_argument("--all", action="store_true",
                         help="redrive every letter that matches (needed when no --reason is given)")


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """``replay`` (:mod:`stream.cli.replay`)."""
    rp = sub.add_parser("replay", parents=[common], help="publish a camera's video again from a time",
                        description="Read the video topic back from --since (ListOffsets by timestamp, then by the "
                                    "chunks' event time) and publish that camera's chunks again, by default to the "
                                    "video topic: frames the workers still hold are skipped, missing ones indexed. "
                                    "No consumer group is touched; only chunks the topic still retains are found.")
    rp.add_argument("--camera", required=True, help="camera id (the chunks' key)")
    rp.add_argument("--since", type=time_arg, required=True,
                    help="event time to replay from (Unix, ISO 8601 (UTC when no zone) or now-1h)")
    rp.add_argument("--until", type=time_arg, default=None, help="event time to stop at (default: the end)")
    rp.add_argument("--to", default=None, metavar="TOPIC",
                    help="publish to this existing topic instead (default: topics.video, the topic read)")
    rp.add_argument("--dry-run", action="store_true", help="count what would be sent, send nothing")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``l2g-stream``."""
    common = _common()
    parser = argparse.ArgumentParser(prog="l2g-stream", parents=[common],
                                     description="Find where and when a query image appears in surveillance video.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="self-contained demo: broker, video, worker, query")
    demo.add_argument("--extractor", default=None, help=f"extractor (default: {_default('extractor', 'name')})")
    demo.add_argument("--seconds", type=positive_float, default=12.0,
                      help="seconds of synthetic video per camera (default: %(default)s)")
    demo.add_argument("--cameras", type=positive_int, default=2, help="synthetic cameras (default: %(default)s)")
    demo.add_argument("--video", type=Path, default=None,
                      help="also publish this clip as a camera and query a crop of it (default: a clip from "
                           "../shared/data/video when present)")
    demo.add_argument("--no-clip", action="store_true", help="synthetic cameras only")
    demo.add_argument("--mode", choices=MODES, default=None,
                      help=f"retrieval mode (default: {_default('query', 'mode')})")
    demo.add_argument("--k", type=positive_int, default=5, help="matches shown (default: %(default)s)")
    demo.add_argument("--sheet", type=Path, default=None,
                      help="where to write the answer's contact sheet PNG (default: l2g-demo-sheet.png in the "
                           "system's temporary folder)")

    _add_worker(sub, common)

    broker = sub.add_parser("broker", parents=[common], help="run the embedded Kafka broker (tansu) until Ctrl-C",
                            description="Run the embedded tansu broker (in memory: topics and data are lost when it "
                                        "stops) on a loopback port and create the topics, so that workers, publish "
                                        "and query can be started by hand against it.")
    broker.add_argument("--port", type=port_arg, default=9092, help="TCP port, 0 for a free one (default: %(default)s)")
    broker.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    broker.add_argument("--no-topics", action="store_true", help="do not create the topics (default: create them "
                                                                 "with topics.partitions partitions)")

    pub = sub.add_parser("publish", parents=[common], help="publish a video file or folder as chunks")
    pub.add_argument("path", type=Path, help="video file, or folder of video files (one camera per file)")
    pub.add_argument("--camera", default=None, help="camera id (default: the file name without suffix)")
    pub.add_argument("--segment-seconds", type=positive_float, default=2.0,
                     help="target chunk duration in seconds (default: %(default)s)")
    pub.add_argument("--start-time", type=time_arg, default=None,
                     help="event time of the first frame (Unix, ISO 8601 or now-10m; default: now)")
    enc = pub.add_mutually_exclusive_group()
    enc.add_argument("--transcode", action="store_true", help="always re-encode to H.264 (default: re-mux H.264 "
                                                              "and HEVC, transcode the rest)")
    enc.add_argument("--remux", action="store_true", help="never re-encode (fails for codecs MPEG-TS cannot hold)")
    pub.add_argument("--max-side", type=positive_int, default=None, help="resize when transcoding (default: keep)")
    pub.add_argument("--realtime", action="store_true", help="pace chunks at the video's real time")
    pub.add_argument("--stop-on-error", action="store_true",
                     help="stop at the first file that fails (default: report it and go on with the next)")
    pub.add_argument("--json", action="store_true", help="print one JSON report per file (and no progress bar)")

    query = sub.add_parser("query", parents=[common], help="ask where/when an image appears")
    query.add_argument("image", type=Path, help="JPEG or PNG")
    query.add_argument("--camera", action="append", default=None,
                       help="only this camera, repeatable (default: every camera)")
    query.add_argument("--since", type=time_arg, default=None,
                       help="from this time (Unix, ISO 8601, now-10m; default: no lower bound)")
    query.add_argument("--until", type=time_arg, default=None, help="up to this time (default: no upper bound)")
    query.add_argument("--k", type=positive_int, default=None,
                       help=f"matches returned (default: {_default('query', 'k')})")
    query.add_argument("--mode", choices=MODES, default=None,
                       help=f"retrieval mode (default: {_default('query', 'mode')})")
    query.add_argument("--timeout", type=positive_float, default=None,
                       help=f"answer budget in seconds (default: {_default('query', 'default_timeout_s')})")
    query.add_argument("--json", action="store_true", help="print the result as JSON")

    ext = sub.add_parser("extractors", parents=[common], help="list the feature extractors and presets")
    ext.add_argument("--json", action="store_true", help="print the list as JSON")

    from stream.cli.show import add_show_parser
    from stream.cli.ui import add_ui_parser

    add_show_parser(sub, common)
    add_ui_parser(sub, common)
    _add_dead_letters(sub, common)
    _add_replay(sub, common)
    return parser
