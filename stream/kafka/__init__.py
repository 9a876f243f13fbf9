"""Thin kafka-python adapters implementing :mod:`stream.ports` (the only modules that import a Kafka client)."""

from stream.kafka.admin import KafkaTopicAdmin, ensure_topics
from stream.kafka.consumer import KafkaSource
from stream.kafka.producer import KafkaSink

__all__ = ["KafkaSink", "KafkaSource", "KafkaTopicAdmin", "ensure_topics"]
