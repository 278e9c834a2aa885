"""``streamrec``: one command for every part.

The CLI is the one place that names ``training`` and ``evaluation``; it imports a
command's module only when that command runs, so ``streamrec worker`` never loads the
trainer and library code keeps the streams -> inference <- training direction.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .settings import add_kafka_args, default_model_dir, default_state_dir, kafka_from_args


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_replication_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replication-factor", type=int, default=int(os.environ.get("STREAMREC_REPLICATION_FACTOR", "1")),
                   help="replicas of each topic streamrec creates, changelogs included (env "
                        "STREAMREC_REPLICATION_FACTOR; default %(default)s; 3 on a three-broker cluster)")


def add_worker_args(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--model", type=Path, default=default_model_dir(),
                   help="exported encoder directory (env STREAMREC_MODEL_DIR; default %(default)s)")
    p.add_argument("--variant", default=env("STREAMREC_VARIANT", "auto"), choices=["auto", "fp32", "int8", "fp16"])
    p.add_argument("--device", default=env("STREAMREC_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    p.add_argument("--app-id", default=env("STREAMREC_APP_ID", "streamrec"),
                   help="consumer group and table namespace; workers with the same id share the load")
    p.add_argument("--partitions", type=int, default=int(env("STREAMREC_PARTITIONS", "6")))
    add_replication_arg(p)
    p.add_argument("--state-dir", type=Path, default=default_state_dir())
    p.add_argument("--store", default=env("STREAMREC_STORE", "auto"), choices=["auto", "rocksdb", "memory"])
    p.add_argument("--web-host", default=env("STREAMREC_WEB_HOST", "127.0.0.1"))
    p.add_argument("--web-port", type=int, default=int(env("STREAMREC_WEB_PORT", "6066")))
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--repeats", action="store_true", default=env("STREAMREC_REPEATS", "") in ("1", "true", "yes"),
                   help="lists may hold items the user already interacted with (repeat-consumption domains: "
                        "groceries, music; env STREAMREC_REPEATS=1); default: never")
    p.add_argument("--half-life-days", type=float, default=30.0)
    p.add_argument("--unknown-items", default="dead-letter", choices=["dead-letter", "accept"])
    p.add_argument("--min-interval-ms", type=float, default=0.0,
                   help="publish at most one list per user per interval (0: after every event)")
    p.add_argument("--registry", type=Path, default=Path(env("STREAMREC_REGISTRY")) if env("STREAMREC_REGISTRY") else None,
                   help="model registry shared with `streamrec train` (env STREAMREC_REGISTRY): published versions "
                        "are hot-swapped in; without it the worker serves the encoder alone (v0)")
    p.add_argument("--retrain-every-events", type=int, default=int(env("STREAMREC_RETRAIN_EVERY_EVENTS", "0")),
                   help="ask the trainer for a new version after N accepted events on this worker (0: never)")
    p.add_argument("--retrain-interval-s", type=float, default=float(env("STREAMREC_RETRAIN_INTERVAL_S", "0")),
                   help="... or after this many seconds with at least one accepted event (0: never)")
    p.add_argument("--explain", action="store_true",
                   help="include score parts and contributing history items in output records")
    p.add_argument("--explore-share", type=float, default=0.0,
                   help="share of each list's slots given to exploration (0..1; default 0: off)")
    p.add_argument("--explore-policy", default="thompson", choices=["thompson", "epsilon"],
                   help="exploration policy: Thompson sampling or epsilon-greedy (default %(default)s)")
    p.add_argument("--explore-epsilon", type=float, default=0.1,
                   help="epsilon policy: chance an exploration slot takes a random candidate (default %(default)s)")
    p.add_argument("--text-weight", type=float, default=0.5,
                   help="API: share of a text request when blended with a user's vector (0..1, default %(default)s)")
    p.add_argument("--session-timeout", type=float, default=float(env("STREAMREC_SESSION_TIMEOUT", "10")),
                   help="consumer-group session timeout, seconds (a group join takes about half of it on Tansu)")
    p.add_argument("--heartbeat", type=float, default=float(env("STREAMREC_HEARTBEAT", "3")))
    p.add_argument("--shutdown-timeout", type=float, default=float(env("STREAMREC_SHUTDOWN_TIMEOUT", "20")),
                   help="SIGTERM/Ctrl-C end the worker within this many seconds even if the broker is unreachable "
                        "(what was not committed is delivered again on restart; default %(default)s)")
    p.add_argument("--fetch-wait-ms", type=int, default=int(env("STREAMREC_FETCH_WAIT_MS", "10")))
    p.add_argument("--producer-batch-bytes", type=int, default=None,
                   help="producer batch.size; 1 = one record per batch (see README: Tansu and changelog recovery)")
    p.add_argument("--chunk-size", type=int, default=int(env("STREAMREC_CHUNK_SIZE", "64")),
                   help="events taken per chunk (encoded and ranked together): larger = more throughput, "
                        "higher worst-case latency (default %(default)s)")
    p.add_argument("--chunk-wait-ms", type=float, default=float(env("STREAMREC_CHUNK_WAIT_MS", "5")),
                   help="how long a chunk waits to fill up (default %(default)s)")
    p.add_argument("--batch-max", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--loglevel", default=env("STREAMREC_LOGLEVEL", "info"),
                   choices=["debug", "info", "warn", "error"])


def worker_config(args: argparse.Namespace):
    from inference.explore import ExploreConfig
    from inference.recommender import RecommenderConfig
    from inference.user import UpdateConfig

    from .app import WorkerConfig
    from .topics import Topics

    if not 0.0 <= args.text_weight <= 1.0:
        raise ValueError(f"--text-weight must be within 0..1, not {args.text_weight}")
    return WorkerConfig(
        kafka=kafka_from_args(args), topics=Topics(args.prefix), app_id=args.app_id, partitions=args.partitions,
        model_dir=args.model, variant=args.variant, device=args.device, max_tokens=args.max_tokens,
        state_dir=args.state_dir, store=args.store, web_host=args.web_host, web_port=args.web_port,
        recommender=RecommenderConfig(top_n=args.top_n, repeats=args.repeats, update=UpdateConfig(half_life_s=args.half_life_days * 86400),
                                      text_weight=args.text_weight,
                                      explore=ExploreConfig(share=args.explore_share, policy=args.explore_policy,
                                                            epsilon=args.explore_epsilon)),
        unknown_items=args.unknown_items, min_interval_ms=args.min_interval_ms, explain=args.explain,
        session_timeout_s=args.session_timeout, heartbeat_s=args.heartbeat, fetch_wait_ms=args.fetch_wait_ms,
        shutdown_timeout_s=args.shutdown_timeout,
        batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms, loglevel=args.loglevel,
        chunk_size=args.chunk_size, chunk_wait_s=args.chunk_wait_ms / 1000.0,
        producer_batch_bytes=args.producer_batch_bytes, registry=args.registry.expanduser() if args.registry else None,
        retrain_every_events=args.retrain_every_events, retrain_interval_s=args.retrain_interval_s,
        replication_factor=args.replication_factor,
    )


def cmd_worker(args) -> int:
    from .app import run_worker
    from .topics import ensure_topics

    try:
        cfg = worker_config(args)
    except ValueError as exc:  # e.g. --explore-share outside 0..1
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (cfg.model_dir / "manifest.json").is_file():
        print(f"error: no exported encoder at {cfg.model_dir}: run `streamrec export-onnx --out {cfg.model_dir}` "
              "or pass --model DIR", file=sys.stderr)
        return 2
    ensure_topics(cfg.kafka, cfg.topics, cfg.partitions, replication=cfg.replication_factor)
    run_worker(cfg)
    return 0


def cmd_broker(args) -> int:
    import signal
    import time

    from .broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    # Explicitly, not Python's default: a process started in the background by a
    # non-interactive shell inherits SIGINT *ignored*, and Ctrl-C / kill -INT would do nothing.
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
        print(f"embedded broker (Tansu, in-memory) on {broker.bootstrap}: Ctrl-C stops it and drops its topics",
              flush=True)
        while not stop and broker.proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_topics(args) -> int:
    from .topics import Topics, ensure_topics

    created = ensure_topics(kafka_from_args(args), Topics(args.prefix), args.partitions,
                            replication=args.replication_factor)
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def cmd_replay(args) -> int:
    from inference.datasets import load_dataset

    from .replay import producer, publish_catalogue, replay_events
    from .topics import Topics, ensure_topics

    kafka, topics = kafka_from_args(args), Topics(args.prefix)
    ds = load_dataset(args.dataset, items=args.items, limit=args.limit)
    ensure_topics(kafka, topics, args.partitions)
    prod = producer(kafka)
    try:
        if not args.no_catalogue:
            n = publish_catalogue(prod, topics, ds.items.values())
            print(f"catalogue: {n} items -> {topics.items}")
        if not args.catalogue_only:
            stats = replay_events(prod, topics, ds.events, rate=args.rate, speedup=args.speedup)
            print(f"replayed {stats.events} events in {stats.seconds:.1f}s ({stats.rate:.0f}/s): {stats.by_topic}")
    finally:
        prod.close()
    return 0


def cmd_tail(args) -> int:
    from .tail import format_record, read_topic
    from .topics import Topics

    topics = Topics(args.prefix)
    topic = topics.dead_letters if args.dead_letters else topics.recommendations
    n = 0
    try:
        for key, value, _ in read_topic(kafka_from_args(args), topic, from_beginning=args.from_beginning,
                                        timeout_s=args.timeout):
            if args.user and value.get("user_id") != args.user:
                continue
            if args.json or args.dead_letters:
                import json

                print(json.dumps(value, ensure_ascii=False), flush=True)
            else:
                print(format_record(value), flush=True)
            n += 1
            if args.max and n >= args.max:
                break
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    module, _, func = module.partition(":")
    return int(getattr(importlib.import_module(module), func or "main")(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a stream worker (Faust)")
    add_kafka_args(p)
    add_worker_args(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) until Ctrl-C")
    p.add_argument("--port", type=int, default=int(os.environ.get("STREAMREC_BROKER_PORT", "9092")))
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the topics streamrec uses (idempotent)")
    add_kafka_args(p)
    p.add_argument("--partitions", type=int, default=int(os.environ.get("STREAMREC_PARTITIONS", "6")))
    add_replication_arg(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("replay", help="stream a dataset (name or path) into the topics in event-time order")
    add_kafka_args(p)
    p.add_argument("--dataset", default="musical_instruments",
                   help="musical_instruments | magazine_subscriptions | movielens | a path to your files")
    p.add_argument("--items", type=Path, default=None, help="item catalogue file for your own data")
    p.add_argument("--limit", type=int, default=None, help="only the first N events")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    p.add_argument("--speedup", type=float, default=None, help="x real time of the data's own clock")
    p.add_argument("--partitions", type=int, default=int(os.environ.get("STREAMREC_PARTITIONS", "6")))
    p.add_argument("--no-catalogue", action="store_true")
    p.add_argument("--catalogue-only", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("tail", help="print recommendation records as they arrive")
    add_kafka_args(p)
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--user", default=None)
    p.add_argument("--json", action="store_true", help="print whole records as JSON lines")
    p.add_argument("--dead-letters", action="store_true", help="tail the dead-letter topic instead")
    p.add_argument("--max", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("demo", help="broker + topics + worker + replay of the shipped data, live lists, totals")
    from .demo import add_demo_args

    add_demo_args(p)
    p.set_defaults(func=cmd_demo)

    for name, (module, helptext) in DELEGATED.items():
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.set_defaults(module=module)
    return parser


#: Commands run by another package's ``main(argv)``, imported by name only when called, so this
#: module (and so ``streams``) imports neither ``training`` nor ``evaluation``.
DELEGATED = {
    "export-onnx": ("training.export", "export a Hugging Face encoder to ONNX (fp32, int8, fp16)"),
    "bench": ("evaluation.bench", "benchmarks: encoder | scoring | pipeline"),
    "evaluate": ("evaluation.evaluate", "prequential and leave-last-out evaluation against baselines"),
    "train": ("training.service", "the trainer: retrain on request (or --once), publish better versions"),
    "models": ("training.service:models_main", "list the model registry's versions and their metrics"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if argv and argv[0] in DELEGATED:
        _setup_logging(os.environ.get("STREAMREC_LOGLEVEL", "info"))
        if argv[0] == "bench" and len(argv) > 1 and argv[1] == "pipeline":
            return _delegate("evaluation.pipeline", argv[2:])
        return _delegate(DELEGATED[argv[0]][0], argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "loglevel", "info"))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
