"""Client configuration shared by consumers, producers and the admin client."""

from __future__ import annotations

from typing import Any

from stream.errors import ConfigurationError
from stream.settings import KafkaSettings

__all__ = ["MaskedSecret", "common_config", "forbid_auto_create", "merge_extra"]


class MaskedSecret(str):
    """A secret handed to kafka-python: the real string, but masked in ``repr``.

    kafka-python uses the value as a plain string (``encode``, ``join``, ``ssl.load_cert_chain``) but
    ``KafkaAdminClient`` logs its whole configuration dict at DEBUG, which formats values with ``repr``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def common_config(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Connection and security options understood by every kafka-python client.

    Args:
        kafka: connection settings.
        client_id: the client id to report to the broker.

    Returns:
        Keyword arguments for ``KafkaConsumer``, ``KafkaProducer`` or ``KafkaAdminClient``.
    """
    conf: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()],
        "client_id": client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
        "metadata_max_age_ms": kafka.metadata_max_age_ms,
    }
    if kafka.security_protocol.startswith("SASL"):
        conf["sasl_mechanism"] = kafka.sasl_mechanism
        conf["sasl_plain_username"] = kafka.sasl_username
        password = kafka.sasl_password
        conf["sasl_plain_password"] = MaskedSecret(password.get_secret_value()) if password is not None else None
    if kafka.security_protocol.endswith("SSL"):
        conf["ssl_check_hostname"] = kafka.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(kafka, name)
            if value is not None:
                conf[name] = str(value)
        if kafka.ssl_password is not None:
            conf["ssl_password"] = MaskedSecret(kafka.ssl_password.get_secret_value())
    return conf


def merge_extra(core: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``core`` plus the pass-through ``extra`` options; ``extra`` cannot override a core option."""
    return {**{k: v for k, v in extra.items() if k not in core}, **core}


def forbid_auto_create(client: Any) -> None:
    """Make ``client`` (a ``KafkaConsumer`` or ``KafkaProducer``) ask for metadata without creating topics.

    kafka-python 3.0.12 accepts ``allow_auto_create_topics=False`` but never hands it to the cluster metadata its
    connection manager builds, so every metadata request naming a topic creates it; tansu then creates it with 4
    partitions whatever ``topics.partitions`` says (a restarted broker got its topics back from the worker's own
    consumers and producer). Topics are created by the admin path only (:mod:`stream.kafka.admin`).

    Raises:
        ConfigurationError: this kafka-python keeps its cluster metadata elsewhere (the workaround must be revised).
    """
    cluster = getattr(client, "_metadata", None) or getattr(client, "_cluster", None)  # producer / consumer
    config = getattr(cluster, "config", None)
    if not isinstance(config, dict) or "allow_auto_create_topics" not in config:
        raise ConfigurationError(f"cannot disable topic auto-creation on {type(client).__name__} of this "
                                 "kafka-python version")
    config["allow_auto_create_topics"] = False
