"""Faust's aiokafka transport with a configurable consumer ``fetch_max_wait_ms``.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its consumer. A broker
that only answers a waiting fetch when that time is up (Tansu does; MEASURED.md) then
adds ~1.5 s to every event, and even on Apache Kafka a lower bound caps the worst case
when ``fetch.min.bytes`` is not yet reached. We keep Faust's consumer as it is and only
set that one number from ``app.conf`` (the ``STREAMREC_FETCH_WAIT_MS`` setting).
"""
from __future__ import annotations

from faust.transport.drivers import aiokafka as _drv
from faust.transport.drivers import TRANSPORTS

SCHEME = "streamrec"


class ConsumerThread(_drv.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "streamrec_fetch_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by aiokafka when the fetcher starts
        return consumer


class Consumer(_drv.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(_drv.Transport):
    Consumer = Consumer


TRANSPORTS.data[SCHEME] = f"{__name__}:Transport"
