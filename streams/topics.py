"""Topic names (declared once) and their explicit creation.

Topics are created up front with the partition counts and cleanup policies the workers
expect: a producer that auto-creates a topic gets the broker's default partition count,
which breaks co-partitioning of the input topics with the user table.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .settings import DEFAULT_PREFIX, KafkaConfig

log = logging.getLogger("streamrec.topics")


@dataclass(frozen=True)
class Topics:
    """Every topic of the public contract, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def clicks(self) -> str:  # key user id, JSON event
        return self.prefix + "clicks"

    @property
    def reviews(self) -> str:  # key user id, JSON event with text and/or rating
        return self.prefix + "reviews"

    @property
    def items(self) -> str:  # compacted, key item id, JSON item or null (delete)
        return self.prefix + "items"

    @property
    def recommendations(self) -> str:  # key user id, JSON Top-N record
        return self.prefix + "recommendations"

    @property
    def dead_letters(self) -> str:  # key as received, JSON reject record
        return self.prefix + "dead-letters"

    @property
    def control(self) -> str:  # model versions and retrain requests
        return self.prefix + "control"

    @property
    def rekeyed(self) -> str:  # internal: unkeyed events re-published keyed by user id
        return self.prefix + "events-rekeyed"

    def event_topics(self) -> list[str]:
        """The co-partitioned topics the user-state agent reads."""
        return [self.clicks, self.reviews, self.rekeyed]

    def specs(self, partitions: int) -> dict[str, tuple[int, dict[str, str]]]:
        """name -> (partitions, configs) for every topic streamrec needs."""
        compact = {"cleanup.policy": "compact"}
        return {
            self.clicks: (partitions, {}),
            self.reviews: (partitions, {}),
            self.rekeyed: (partitions, {}),
            self.items: (1, compact),
            self.recommendations: (partitions, {}),
            self.dead_letters: (1, {}),
            self.control: (1, {}),
        }


def ensure_topics(kafka: KafkaConfig, topics: Topics, partitions: int = 6, replication: int = 1,
                  timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics; return the names created. Existing ones are left as they are,
    but a partition count that differs from ``partitions`` on an event topic is an error."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="streamrec-admin", request_timeout_ms=int(timeout_s * 1000),
                             **kafka.kafka_python())
    try:
        specs = topics.specs(partitions)
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=n, replication_factor=replication, topic_configs=cfg)
            for name, (n, cfg) in specs.items() if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile: fine
        deadline = time.monotonic() + timeout_s
        while True:  # metadata can lag a creation for a moment
            meta = {t.get("name", t.get("topic")): len(t["partitions"]) for t in admin.describe_topics(list(specs))}
            if all(meta.get(name) for name in specs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for name in topics.event_topics():
            if meta.get(name) and meta[name] != partitions:
                raise RuntimeError(
                    f"topic {name} has {meta[name]} partitions but the workers expect {partitions}: "
                    f"run the workers with --partitions {meta[name]} or recreate the topic"
                )
        if missing:
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        admin.close()
