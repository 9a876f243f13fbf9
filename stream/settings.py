"""Typed, frozen settings of the stream runtime: the only module that reads the environment.

Sources, highest priority first:

1. keyword arguments (``Settings(kafka={"bootstrap_servers": "..."})``, used by the CLI and tests);
2. environment variables with the prefix ``L2G_`` and ``__`` between nesting levels, e.g.
   ``L2G_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``L2G_INGEST__SAMPLE_FPS=1``;
3. a settings file (YAML, JSON or TOML) named by ``--config`` / :meth:`Settings.load` or by the
   environment variable ``L2G_CONFIG_FILE``; its keys mirror the nesting (``kafka: {bootstrap_servers: ...}``);
4. the defaults below.

Secrets (SASL and TLS key passwords) are :class:`~pydantic.SecretStr` and never printed by :meth:`Settings.as_dict`.
"""

from __future__ import annotations

import contextvars
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from l2g_core import IndexConfig, L2GError, Mode, RetrievalConfig
from l2g_core.config import RerankDtype
from plugins.presets import DEFAULT_EXTRACTOR
from stream.errors import ConfigurationError
from stream.redact import redact_secrets
from stream.settings_file import read_settings_file

__all__ = ["ENV_PREFIX", "ExtractorSettings", "HttpSettings", "IndexSettings", "IngestSettings", "KafkaSettings",
           "QuerySettings", "RuntimeSettings", "Settings", "StorageSettings", "TopicSettings", "UiSettings"]

ENV_PREFIX = "L2G_"
_CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG_FILE"
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("l2g_config_file", default=None)



class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    """Connection and client settings shared by every consumer and producer.

    Attributes:
        bootstrap_servers: comma-separated ``host:port`` list.
        client_id: prefix of the client ids (the worker id is appended).
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism, sasl_username, sasl_password: SASL credentials (password is secret).
        ssl_cafile, ssl_certfile, ssl_keyfile, ssl_password, ssl_check_hostname: TLS settings.
        session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms: group liveness. Tansu holds a
            JoinGroup for about half the session timeout; a member that dies without leaving is replaced
            after about ``max_poll_interval_ms``.
        request_timeout_ms: client request timeout.
        auto_offset_reset: where a partition without a committed offset starts.
        max_message_bytes: largest message produced or accepted; larger inputs go to the dead-letter topic.
            Keep it below the broker's ``message.max.bytes`` (about 1 MB by default).
        max_request_size: the producer's client-side request limit (must exceed ``max_message_bytes``).
        acks: producer acknowledgements.
        linger_ms: producer batching delay.
        metadata_max_age_ms: how often every client refreshes its topic metadata, so a topic recreated with
            another partition count is seen (consumer groups rebalance) within about this long.
        producer_recovery_s: bound on the producer's recovery: a send waits at most this long for a topic's
            metadata (clients never create topics) or for a replacement producer to connect, and a flush waits at
            most this long on a producer that delivers nothing before replacing it (twice per flush at most).
        consumer_extra, producer_extra: raw client options passed through unchanged (they cannot
            override the options above).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "l2g-stream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_message_bytes: int = Field(900_000, ge=1_024)
    max_request_size: int = Field(1_048_576, ge=1_024)
    acks: Literal["0", "1", "all"] = "all"
    linger_ms: int = Field(5, ge=0)
    metadata_max_age_ms: int = Field(10_000, ge=1_000)
    producer_recovery_s: float = Field(10.0, gt=0.0)
    consumer_extra: dict[str, Any] = Field(default_factory=dict)
    producer_extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.max_request_size < self.max_message_bytes + 4096:
            raise ValueError("max_request_size must exceed max_message_bytes by at least 4096 bytes of framing")
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL protocols need sasl_mechanism and sasl_username")
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_password is not None and self.sasl_password.get_secret_value()):
            # kafka-python accepts a missing password and fails later inside the handshake (PLAIN: TypeError;
            # SCRAM: its own check forgets to raise), which surfaces only as "Unable to bootstrap"
            raise ValueError("SASL protocols need sasl_password (PLAIN and SCRAM authenticate with it)")
        return self


class TopicSettings(_Group):
    """Topic names and (opt-out) creation.

    Attributes:
        video: video chunks, keyed by camera id.
        queries: query messages (every worker reads every query).
        candidates: stage-1 partials of every worker, keyed by query id; one worker of the merge group merges
            each query (see :mod:`stream.query`).
        results: query results, keyed by query id.
        dead_letters: messages that could not be processed, with the reason.
        create: create missing topics (idempotent), at start and whenever they disappear (a broker restarted
            empty); when false the worker reports missing topics (not ready) and waits for them.
        partitions, replication_factor: used when creating.
        check_interval_s: how often the worker checks that every topic exists (and its partition count).
    """

    video: str = "l2g.video"
    queries: str = "l2g.queries"
    candidates: str = "l2g.candidates"
    results: str = "l2g.results"
    dead_letters: str = "l2g.dead-letters"
    create: bool = True
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    check_interval_s: float = Field(1.0, gt=0.0)


class IngestSettings(_Group):
    """Video ingest: sampling, batching and load shedding.

    Attributes:
        enabled: run the ingest loop.
        group_id: consumer group shared by all workers (partitions are split between them).
        sample_fps: frames per second kept per camera; ``0`` keeps every decoded frame.
        min_sample_fps: floor of the sampling rate when shedding load.
        load_shed: lower the sampling rate when behind (never block the group into a rebalance).
        lag_high_messages: consumer lag (messages, summed over partitions) above which the rate is halved.
        lag_low_messages: lag below which the rate recovers towards ``sample_fps``.
        poll_budget_fraction: share of ``max_poll_interval_ms`` one poll's work may take before the rest of
            that poll is processed at ``min_sample_fps``.
        batch_size: frames per extractor batch.
        max_poll_records: chunks fetched per poll.
        poll_timeout_s: how long one poll waits for records.
        frame_max_side: decoded frames are resized so their longer side is at most this many pixels.
        decode_threads: PyAV decoder threads (0 = automatic), always with ``thread_type="AUTO"``.
        max_frames_per_chunk: a chunk decoding to more frames is cut there (guards memory).
        commit_interval_s: how often the index is snapshotted and offsets committed.
        max_future_s: a chunk whose event time runs more than this many seconds ahead of the worker's clock is
            dead-lettered (``time_out_of_range``): one bad clock must not move retention (``null``: no bound, for
            replays of simulated time).
    """

    enabled: bool = True
    group_id: str = "l2g-ingest"
    sample_fps: float = Field(2.0, ge=0.0)
    min_sample_fps: float = Field(0.2, gt=0.0)
    load_shed: bool = True
    lag_high_messages: int = Field(50, ge=1)
    lag_low_messages: int = Field(5, ge=0)
    poll_budget_fraction: float = Field(0.5, gt=0.0, le=0.9)
    batch_size: int = Field(8, ge=1)
    max_poll_records: int = Field(4, ge=1)
    poll_timeout_s: float = Field(0.2, gt=0.0)
    frame_max_side: int = Field(640, ge=32)
    decode_threads: int = Field(0, ge=0)
    max_frames_per_chunk: int = Field(3_000, ge=1)
    commit_interval_s: float = Field(10.0, gt=0.0)
    max_future_s: float | None = Field(300.0, gt=0.0)


class QuerySettings(_Group):
    """Query answering.

    Attributes:
        enabled: run the query loop.
        mode: retrieval mode used when a query names none.
        k: matches returned when a query names no ``k``.
        default_timeout_s: answer budget of a query without a deadline, or whose deadline had passed when it was
            read (a client clock running behind): such a query is answered within this budget, with a note.
        max_timeout_s: the longest budget a query may ask for (a later deadline is brought forward to it).
        deadline_margin_s: the search stops this long before the deadline to leave time to publish.
        image_max_side: query images are resized so their longer side is at most this (match the
            frame scale: ``ingest.frame_max_side``).
        max_image_pixels: larger images are rejected (decompression-bomb guard).
        poll_timeout_s: how long one poll waits for queries.
        merge_group_id: consumer group of the merge loops on the candidates topic (one merger per query).
        max_pending: queries being merged at once; the oldest is answered with what it has beyond this.
        verify_top: the first this many matches of an answer get a geometric proof (``Match.geometry``: the query's
            outline in the frame, RANSAC inliers); 0 turns it off. Added information: the ranking is the same.
        verify_min_inliers: a proof needs at least this many RANSAC inliers (fewer: ``no_geometry``).
        segment_gap_s: matches of one camera at most this many seconds apart form one segment of the answer
            (``QueryResult.segments``); ``null``: the larger of 2 s and three sampling intervals
            (``ingest.sample_fps``).
        partial_version: the newest ``candidate_partial`` version this worker writes, each smaller where it
            loses nothing: 3, re-rank descriptors as the index's int8 codes; 2, global descriptors as float16
            (an index of float16 globals); 1, neither (what the previous release reads). Lower it during a rolling
            upgrade from a release that reads older versions only, until every worker runs this one.
    """

    enabled: bool = True
    mode: Mode = "l2g"
    k: int = Field(10, ge=1, le=1_000)
    default_timeout_s: float = Field(5.0, gt=0.0)
    max_timeout_s: float = Field(60.0, gt=0.0)
    deadline_margin_s: float = Field(0.05, ge=0.0)
    image_max_side: int = Field(640, ge=32)
    max_image_pixels: int = Field(40_000_000, ge=1)
    poll_timeout_s: float = Field(0.1, gt=0.0)
    merge_group_id: str = "l2g-merge"
    max_pending: int = Field(1_000, ge=1)
    verify_top: int = Field(10, ge=0, le=1_000)
    verify_min_inliers: int = Field(8, ge=4)
    segment_gap_s: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    partial_version: int = Field(3, ge=1, le=3)


class IndexSettings(_Group):
    """Rolling index and snapshots (mapped onto ``l2g_core.IndexConfig``).

    Attributes:
        bucket_seconds, max_features_per_frame, index_kind: see ``IndexConfig``.
        segment_seconds: once compressed, one IVF-PQ index per camera and this span (``IndexConfig``); part of
            the snapshot tag, so a change rebuilds the partition from its topic.
        rerank_features, rerank_dtype: the features kept per frame for stage 2 and the geometric proof, and how
            they are stored (``IndexConfig``); a change applies to frames indexed from then on.
        retention_seconds: frames older than the newest event time of their partition minus this are evicted
            (``IndexConfig``). ``null`` keeps everything: ``null`` in a YAML or JSON file, and the string ``null``
            or ``none`` (any case) in the environment (``L2G_INDEX__RETENTION_SECONDS=null``) or in a TOML file;
            an empty value, zero, a negative number or ``inf`` is refused.
        snapshot_dir: where snapshots go; without it nothing survives a restart and offsets are never
            committed (a commit would claim frames that only live in memory).
        retrieval: options of ``l2g_core.RetrievalConfig`` (e.g. ``{"shortlist": 300}``).
        device: where the FAISS index lives (``IndexConfig.device``): ``auto`` (the GPU when faiss has GPU support
            and sees one), ``cpu`` or ``cuda`` (the worker refuses to start when faiss has no GPU support).
        gpu_id: the GPU of the index when it is on one (``IndexConfig.gpu_id``).
    """

    bucket_seconds: float = Field(60.0, gt=0.0)
    retention_seconds: float | None = Field(3600.0, gt=0.0, allow_inf_nan=False)
    max_features_per_frame: int = Field(IndexConfig.max_features_per_frame, ge=1)
    segment_seconds: float = Field(IndexConfig.segment_seconds, gt=0.0, allow_inf_nan=False)
    rerank_features: int = Field(IndexConfig.rerank_features, ge=1)
    rerank_dtype: RerankDtype = IndexConfig.rerank_dtype
    index_kind: Literal["auto", "flat", "ivfpq"] = "auto"
    snapshot_dir: Path | None = None
    retrieval: dict[str, Any] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_id: int = Field(0, ge=0)

    @field_validator("retention_seconds", mode="before")
    @classmethod
    def _retention_null(cls, value: Any) -> Any:
        """The strings ``null`` and ``none`` (the environment cannot carry a JSON null) mean None."""
        if isinstance(value, str) and value.strip().lower() in ("null", "none"):
            return None
        return value

    def retrieval_config(self) -> RetrievalConfig:
        """``retrieval`` as the validated ``l2g_core.RetrievalConfig``.

        Raises:
            ConfigurationError: unknown or invalid retrieval options.
        """
        try:
            return RetrievalConfig(**self.retrieval)
        except (L2GError, TypeError) as exc:
            raise ConfigurationError(f"invalid index.retrieval settings: {exc}") from exc


class ExtractorSettings(_Group):
    """Which feature extractor runs (``plugins.get_extractor(name, **options)``).

    Attributes:
        name: registry name or preset (``l2g-stream extractors`` lists them); default
            :data:`plugins.presets.DEFAULT_EXTRACTOR` (XFeat locals, EfficientNet-Lite0 global at 320 px).
        options: extractor options (override the preset's).
    """

    name: str = DEFAULT_EXTRACTOR
    options: dict[str, Any] = Field(default_factory=dict)


class HttpSettings(_Group):
    """The ``/metrics``, ``/healthz`` and ``/readyz`` endpoint.

    Attributes:
        enabled: serve it.
        host, port: listen address (port 0 picks a free port).
        liveness_timeout_s: ``/healthz`` fails when a loop has not made progress for this long.
        request_timeout_s: whole-request deadline: a connection must send its request line and headers and get its
            answer within this many seconds of being accepted, or it is closed (a client trickling its request
            holds no thread: one thread serves every connection).
        max_connections: connections open at once; a new one beyond it replaces the oldest one still sending
            its request (or is closed at once when every open one is being answered).
    """

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9400, ge=0, le=65535)
    liveness_timeout_s: float = Field(120.0, gt=0.0)
    request_timeout_s: float = Field(5.0, gt=0.0, le=300.0)
    max_connections: int = Field(128, ge=1, le=10_000)


class StorageSettings(_Group):
    """Claim-check references (payloads too large for a message).

    Attributes:
        allowed_ref_roots: directories that ``file://`` references may point into; empty rejects every
            reference (a worker must not read arbitrary files on request).
        max_ref_bytes: largest referenced payload read.
        blob_dir: where the publisher writes oversized segments (must be under an allowed root of the workers).
    """

    allowed_ref_roots: list[Path] = Field(default_factory=list)
    max_ref_bytes: int = Field(256 * 2**20, ge=1)
    blob_dir: Path | None = None


class UiSettings(_Group):
    """The web page of ``l2g-stream ui`` (a separate process that speaks Kafka like any client).

    Attributes:
        host, port: listen address (port 0 picks a free port; the bound address is printed at start).
        max_upload_bytes: largest query image accepted; a larger upload is refused and dead-lettered unread.
        session_ttl_s: a browser session unused this long is forgotten, with its queries and answers.
        max_queries_per_session: queries (with their images and answers) kept per session.
        cameras: camera ids offered on the page (any camera id can still be typed).
    """

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_upload_bytes: int = Field(8 * 2**20, ge=1_024)
    session_ttl_s: float = Field(3600.0, gt=0.0)
    max_queries_per_session: int = Field(50, ge=1)
    cameras: list[str] = Field(default_factory=list)


class RuntimeSettings(_Group):
    """Process-level settings.

    Attributes:
        worker_id: identity in results, dead letters and client ids (default: host name and pid).
        torch_threads, faiss_threads: thread pools set at worker start (0 leaves the library default).
        log_level: logging level of the entry point.
        progress: print progress lines on long work (publishing, waiting for ingest).
        progress_interval_s: a running worker logs one INFO line this often (frames indexed and fps over the
            interval, consumer lag in messages and seconds, sampling rate and load shedding, queries answered);
            0 turns it off.
    """

    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    torch_threads: int = Field(0, ge=0)
    faiss_threads: int = Field(0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress: bool = True
    progress_interval_s: float = Field(30.0, ge=0.0)


class _FileSource(PydanticBaseSettingsSource):
    """Settings from the file given to :meth:`Settings.load` or named by ``L2G_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _config_file.get()
        if path is None and os.environ.get(_CONFIG_FILE_ENV):
            path = Path(os.environ[_CONFIG_FILE_ENV])
        self._data = read_settings_file(path) if path is not None else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


_FREE_FORM = (("kafka", "consumer_extra"), ("kafka", "producer_extra"), ("extractor", "options"),
              ("index", "retrieval"))

class Settings(BaseSettings):
    """All settings of a worker, the demo and the CLI tools. See the module docstring for the sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    extractor: ExtractorSettings = Field(default_factory=ExtractorSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    ui: UiSettings = Field(default_factory=UiSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then the settings file, then defaults."""
        return init_settings, env_settings, _FileSource(settings_cls), file_secret_settings

    @field_validator("ingest")
    @classmethod
    def _ingest_rates(cls, value: IngestSettings) -> IngestSettings:
        if value.sample_fps and value.min_sample_fps > value.sample_fps:
            raise ValueError("ingest.min_sample_fps must not exceed ingest.sample_fps")
        if value.lag_low_messages >= value.lag_high_messages:
            raise ValueError("ingest.lag_low_messages must be below ingest.lag_high_messages")
        return value

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from ``overrides``, the environment, and ``config_file`` (or ``L2G_CONFIG_FILE``).

        Args:
            config_file: YAML, JSON or TOML file; ``None`` uses ``L2G_CONFIG_FILE`` when set.
            **overrides: top-level groups, e.g. ``kafka={"bootstrap_servers": "host:9092"}``.

        Returns:
            Validated, frozen settings.

        Raises:
            ConfigurationError: the file is unreadable or a value is invalid.
        """
        from pydantic import ValidationError

        token = _config_file.set(Path(config_file) if config_file is not None else None)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            # never echo input values (pydantic's message shows a prefix of each, e.g. of sasl_password), and
            # do not chain the ValidationError: a printed traceback would show them anyway
            lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                     for e in exc.errors(include_input=False, include_url=False)]
            raise ConfigurationError("invalid settings:\n" + "\n".join(lines)) from None
        finally:
            _config_file.reset(token)

    def with_overrides(self, **groups: dict[str, Any]) -> Settings:
        """A copy with some fields of some groups replaced, validated again.

        Example: ``settings.with_overrides(kafka={"bootstrap_servers": "h:9092"}, ingest={"sample_fps": 1})``.
        """
        data = self.model_dump()
        for group, values in groups.items():
            if group not in data:
                raise ConfigurationError(f"unknown settings group {group!r}")
            data[group] = {**data[group], **values}
        return type(self).model_validate(data)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view with secrets masked (for logs and ``l2g-stream worker --print-settings``).

        Besides the :class:`~pydantic.SecretStr` fields, values of the free-form option maps (``consumer_extra``,
        ``producer_extra``, ``extractor.options``, ``index.retrieval``) whose key names a secret are masked.
        """
        data = self.model_dump(mode="json")
        for group, name in _FREE_FORM:
            data[group][name] = redact_secrets(data[group][name])
        return data
