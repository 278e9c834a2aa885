"""Topic names (declared once) and their explicit creation.

Topics are created up front with the partition counts and cleanup policies the workers
expect: a producer that auto-creates a topic gets the broker's default partition count,
which breaks co-partitioning of the input topics with the user table.
"""
from __future__ import annotations

import logging
import time

from inference.wire import KafkaConfig, Topics  # noqa: F401 - Topics re-exported

log = logging.getLogger("streamrec.topics")


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
