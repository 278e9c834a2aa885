"""Prometheus metrics of one worker, served as text at ``/metrics`` on its web port."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters a user alerts on; one registry per worker so tests can start several."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter("streamrec_events_total", "Accepted events processed, by type", ["type"], registry=r)
        self.dead_letters = Counter("streamrec_dead_letters_total", "Records sent to the dead-letter topic, by reason",
                                    ["reason"], registry=r)
        self.duplicates = Counter("streamrec_duplicates_total",
                                  "Deliveries dropped as already seen: an event id already in the user's state, or "
                                  "a rejected record whose dead letter was already written", registry=r)
        self.rekeyed = Counter("streamrec_rekeyed_total", "Unkeyed events re-published keyed by user id", registry=r)
        self.published = Counter("streamrec_recommendations_total", "Recommendation records published", registry=r)
        self.coalesced = Counter("streamrec_coalesced_total",
                                 "Events whose list was folded into a later one by --min-interval-ms", registry=r)
        self.latency = Histogram("streamrec_latency_seconds", "Event timestamp to recommendation published",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("streamrec_encoder_batch_size", "Texts per encoder call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.catalogue = Gauge("streamrec_catalogue_items", "Items in this worker's index", registry=r)
        self.catalogue_updates = Counter("streamrec_catalogue_updates_total", "Catalogue records applied, by op",
                                         ["op"], registry=r)
        self.model = Gauge("streamrec_model_info", "The model version in use (value 1)",
                           ["version", "variant", "provider"], registry=r)
        self.model_swaps = Counter("streamrec_model_swaps_total", "Model versions switched to while running",
                                   registry=r)
        self.retrain_requests = Counter("streamrec_retrain_requests_total",
                                        "Retrain requests sent to the control topic", registry=r)
        self.rereads = Counter("streamrec_rereads_total",
                               "Input partitions read again from their processed offset by the stall guard "
                               "(streams/transport.py; 0 in a healthy run)", ["topic"], registry=r)

    def set_model(self, version: str, variant: str, provider: str) -> None:
        self.model.clear()
        self.model.labels(version=version, variant=variant, provider=provider).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
