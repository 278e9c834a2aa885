"""The stream tests' shared worker: one per module, on its own topics, with the real catalogue."""
from __future__ import annotations

import pytest
from harness import fresh_topics, start_worker, stop_worker

from streams.replay import producer, publish_catalogue
from streams.settings import KafkaConfig


@pytest.fixture(scope="module")
def worker(broker, model_dir, mi_dataset, tmp_path_factory):
    """One worker on its own topics with the real Musical Instruments catalogue loaded."""
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    prod = producer(kafka)
    publish_catalogue(prod, topics, mi_dataset.items.values())
    prod.close()
    w = start_worker(kafka, topics, model_dir, tmp_path_factory.mktemp("worker"))
    yield w
    stop_worker(w)
