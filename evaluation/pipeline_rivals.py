"""What the pipeline bench measures streamrec against: a Faust pass-through agent (the ceiling),
a hand-written kafka-python consumer with torch eager (naive), and the encoder alone."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .pipeline_load import ENCODER_JSON

if TYPE_CHECKING:
    pass

log = logging.getLogger("streamrec.bench")


# --------------------------------------------------------------------------------------------
# the ceiling: a Faust agent that forwards each event unchanged


def run_ceiling(argv: list[str]) -> int:
    """``python -m evaluation.pipeline _ceiling ...``: a pass-through Faust worker (blocking)."""
    p = argparse.ArgumentParser(prog="evaluation.pipeline _ceiling")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--session-timeout", type=float, default=3.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--fetch-wait-ms", type=int, default=10)
    args = p.parse_args(argv)

    import gc

    import faust

    from streams import transport
    from streams.app import faust_worker
    from streams.topics import Topics

    topics = Topics(args.prefix)
    app = faust.App(
        args.app_id,
        broker=[f"{transport.SCHEME}://{s.strip()}" for s in args.broker.split(",")],
        store="memory://",
        datadir=str(args.state_dir / args.app_id),
        topic_partitions=args.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=args.session_timeout,
        broker_heartbeat_interval=args.heartbeat,
        broker_commit_interval=1.0,
        web_enabled=False,
        producer_linger=0.0,
        stream_wait_empty=False,
    )
    app.streamrec_fetch_wait_ms = args.fetch_wait_ms
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    source = app.topic(topics.clicks, partitions=args.partitions, **raw)
    sink = app.topic(topics.recommendations, partitions=args.partitions, **raw)

    @app.agent(source, name="forward")
    async def forward(stream):
        gc.collect()  # the worker's own start-up treatment (streams.app._settle_heap)
        gc.freeze()
        async for event in stream.events():
            await sink.send(key=event.key, value=event.value)

    faust_worker(app, "warn").execute_from_commandline()  # the worker's own set-up (no debug-level root logger)
    return 0


# --------------------------------------------------------------------------------------------
# naive: what a user would write without streamrec


def run_naive(argv: list[str]) -> int:
    """``python -m evaluation.pipeline _naive ...``: kafka-python loop, torch eager per review, numpy scoring."""
    p = argparse.ArgumentParser(prog="evaluation.pipeline _naive")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--hf-model", type=Path, required=True)
    p.add_argument("--catalogue", type=Path, required=True, help=".npz with ids and unit vectors")
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--fetch-wait-ms", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from transformers import AutoModel, AutoTokenizer

    from streams.topics import Topics

    topics = Topics(args.prefix)
    servers = [s.strip() for s in args.broker.split(",")]
    tokenizer = AutoTokenizer.from_pretrained(str(args.hf_model))
    model = AutoModel.from_pretrained(str(args.hf_model)).eval()
    cat = np.load(args.catalogue)
    ids, items = [str(i) for i in cat["ids"]], cat["vecs"].astype(np.float32)
    row = {item_id: r for r, item_id in enumerate(ids)}
    users: dict[str, np.ndarray] = {}

    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=args.fetch_wait_ms)
    parts = None
    while not parts:
        parts = consumer.partitions_for_topic(topics.reviews)
        time.sleep(0.1)
    tps = [TopicPartition(topics.reviews, q) for q in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    print("naive consumer ready", flush=True)
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        for recs in consumer.poll(timeout_ms=100).values():
            for r in recs:
                ev = json.loads(r.value)
                enc = tokenizer(ev["text"], truncation=True, max_length=256, return_tensors="pt")
                with torch.inference_mode():
                    hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vec = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)[0].numpy()
                sign = float(np.clip((ev.get("rating", 5) - 3.0) / 2.0, -1.0, 1.0)) or 0.1
                item_row = row.get(ev["item_id"])
                step = 0.5 * vec + 0.5 * items[item_row] if item_row is not None else vec
                user = users.get(ev["user_id"])
                user = sign * step if user is None else 0.9 * user + sign * step
                users[ev["user_id"]] = user
                scores = items @ (user / (np.linalg.norm(user) or 1.0))
                top = np.argpartition(-scores, args.top_n)[: args.top_n]
                top = top[np.argsort(-scores[top])]
                out = {"user_id": ev["user_id"],
                       "items": [{"item_id": ids[k], "score": round(float(scores[k]), 6)} for k in top],
                       "trigger": {"event_id": ev.get("event_id"), "type": "review", "item_id": ev["item_id"],
                                   "topic": r.topic, "partition": r.partition, "offset": r.offset,
                                   "timestamp": r.timestamp / 1000.0},
                       "published_at": round(time.time(), 6)}
                producer.send(topics.recommendations, key=r.key, value=json.dumps(out).encode())
    producer.flush()
    producer.close()
    consumer.close()
    return 0


# --------------------------------------------------------------------------------------------
# the encoder yardstick


def encoder_yardstick(encoder, texts: list[str], seconds: float, batch: int = 32) -> dict:
    """Standalone sentences/s of ``encoder.encode`` on consecutive batches of ``texts``."""
    encoder.encode(texts[:batch])  # warm-up
    n, calls, start, k = 0, 0, time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        chunk = [texts[(k + j) % len(texts)] for j in range(batch)]
        k += batch
        encoder.encode(chunk)
        n += len(chunk)
        calls += 1
    secs = time.perf_counter() - start
    return {"batch": batch, "sentences": n, "seconds": round(secs, 2), "sentences_per_s": round(n / secs, 1),
            "variant": encoder.info.variant, "provider": encoder.info.provider}


def encoder_json_reference(path: str | Path = ENCODER_JSON) -> dict | None:
    """``bench encoder``'s INT8 batch-32 figure on review text, when its JSON is there."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        rows = [r for r in d.get("results", []) if r.get("backend") == "onnx-int8" and r.get("batch") == 32]
        by_text = {r.get("text"): r.get("sentences_per_s") for r in rows}
        machine = d.get("machine", {})
        return {"path": str(p), "int8_b32_sentences_per_s": by_text.get("reviews"), "by_text": by_text,
                "load_avg_1m": machine.get("load_avg_1m_before", machine.get("load_avg_1m"))}
    except (ValueError, OSError, AttributeError):
        return None


