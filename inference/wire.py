"""What every streamrec process needs to talk to the cluster: topic names and connection settings.

The workers (``streams``), the trainer (``training``) and users' own clients speak the same
contract, so the names and the connection flags are declared once, here. Every command takes
``--broker`` (env ``STREAMREC_BROKER``, default the embedded broker on 127.0.0.1:9092) and the
SASL/TLS settings below, so the same CLI runs against the embedded Tansu broker and a production
Apache Kafka cluster.
"""
from __future__ import annotations

import argparse
import os
import ssl
import time
from dataclasses import dataclass, field

DEFAULT_BROKER = "127.0.0.1:9092"
DEFAULT_PREFIX = "streamrec."


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


@dataclass
class KafkaConfig:
    """How to reach the cluster. The password never appears in ``repr`` or logs."""

    bootstrap: str = DEFAULT_BROKER
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.security_protocol:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx

    def kafka_python(self) -> dict:
        """Keyword arguments for kafka-python clients (producer, consumer, admin)."""
        return self._client_kwargs()

    def aiokafka(self) -> dict:
        """Keyword arguments for aiokafka clients (the same names as kafka-python's)."""
        return self._client_kwargs()

    def _client_kwargs(self) -> dict:
        kw: dict = {"bootstrap_servers": self.servers, "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if "SSL" in self.security_protocol:
            kw["ssl_context"] = self.ssl_context()
        return kw

    def faust_credentials(self):
        """``broker_credentials`` for the Faust app, or None for plaintext."""
        import faust

        if self.sasl_mechanism:
            return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if "SSL" in self.security_protocol:
            return faust.SSLCredentials(self.ssl_context())
        return None


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    """The connection flags every command shares."""
    env = os.environ.get
    g = parser.add_argument_group("Kafka connection")
    g.add_argument("--broker", default=env("STREAMREC_BROKER", DEFAULT_BROKER),
                   help="bootstrap servers, comma-separated (env STREAMREC_BROKER; default %(default)s)")
    g.add_argument("--prefix", default=env("STREAMREC_PREFIX", DEFAULT_PREFIX),
                   help="topic name prefix (env STREAMREC_PREFIX; default %(default)s)")
    g.add_argument("--security-protocol", default=env("STREAMREC_SECURITY_PROTOCOL", "PLAINTEXT"),
                   choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
    g.add_argument("--sasl-mechanism", default=env("STREAMREC_SASL_MECHANISM"),
                   choices=[None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    g.add_argument("--sasl-username", default=env("STREAMREC_SASL_USERNAME"))
    g.add_argument("--ssl-cafile", default=env("STREAMREC_SSL_CAFILE"))
    g.add_argument("--ssl-certfile", default=env("STREAMREC_SSL_CERTFILE"))
    g.add_argument("--ssl-keyfile", default=env("STREAMREC_SSL_KEYFILE"))


def kafka_from_args(args: argparse.Namespace) -> KafkaConfig:
    """Build the connection; the SASL password comes only from STREAMREC_SASL_PASSWORD."""
    return KafkaConfig(
        bootstrap=args.broker,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password=os.environ.get("STREAMREC_SASL_PASSWORD"),
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def topic_partitions(consumer, topic: str, timeout_s: float = 30.0) -> list:
    """A kafka-python consumer's ``TopicPartition`` list for ``topic``, waiting up to
    ``timeout_s`` for its metadata (``RuntimeError`` with what to do if it never comes)."""
    from kafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions after {timeout_s:.0f} s: create the topics first "
                       "(`streamrec topics`)")

