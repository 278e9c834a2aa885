"""Scale-out: one worker, then three in the same group, on six partitions.

Each user's state (users-table partition, as the group's assignment says) and output (the
``worker`` field of every record) belong to exactly one worker at a time, users keep their
state when their partition moves to a new worker, and the load spreads over all three.
The events/s of one and of three workers are printed (and written to
``bench/results/scaleout.json`` with ``STREAMREC_WRITE_RESULTS=1``); on 2 shared cores three
workers need not be faster, so the test checks correctness, not speed.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict

from faultkit import (RECOVERABLE, REPO, STATE_FLAGS, Outcome, TopicReader, assert_states_equal, changelog_topic,
                      last_states, output_ids, publish_events, publish_items, start_group, states_cover, total, url,
                      wait_assignment)
from harness import fresh_topics, stop_worker

from streams.settings import KafkaConfig


def _run_phase(kafka, topics, out: TopicReader, events) -> tuple[float, list[dict]]:
    """Send ``events`` and wait for one list per event; return events/s and the new records."""
    before = len(out.snapshot())
    wanted = {e.event_id for e in events}
    t0 = time.perf_counter()
    publish_events(kafka, topics, events)
    out.wait(lambda rs: wanted <= set(output_ids(rs[before:])), 300, "a list for every event")
    seconds = time.perf_counter() - t0
    return len(events) / seconds, out.json()[before:]


def test_three_workers_one_owner_per_user(broker, model_dir, workload, reference, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka, partitions=6)
    publish_items(kafka, topics, workload.items)
    app_id = f"scale-{uuid.uuid4().hex[:8]}"
    flags = (*STATE_FLAGS, *RECOVERABLE)  # users move between workers: their changelog must restore whole
    first, second = workload.split(0.5)
    workers = start_group(kafka, topics, model_dir, tmp_path, 1, *flags, app_id=app_id, names=["a"])
    started = time.perf_counter()
    try:
        with TopicReader(kafka, topics.recommendations) as out:
            wait_assignment(workers)
            rate_1, recs_1 = _run_phase(kafka, topics, out, first)
            workers += start_group(kafka, topics, model_dir, tmp_path, 2, *flags, app_id=app_id, names=["b", "c"])
            view = wait_assignment(workers)
            assert sorted(len(p) for p in view.values()) == [2, 2, 2]
            rate_3, recs_3 = _run_phase(kafka, topics, out, second)
            time.sleep(1.0)  # anything extra (a re-published list) would arrive now
            all_recs = out.json()

        by_pid = {w.proc.pid: w for w in workers}
        owner_of_partition = {p: u for u, parts in view.items() for p in parts}
        # phase 1: the lone worker did everything
        assert {r["worker"].rpartition(":")[2] for r in recs_1} == {str(workers[0].proc.pid)}
        # phase 2: each user's lists come from one worker, and that worker holds the user's
        # table partition (the record's input partition = its state partition: co-partitioned)
        owners: dict[str, set[str]] = defaultdict(set)
        for r in recs_3:
            w = by_pid[int(r["worker"].rpartition(":")[2])]
            owners[r["user_id"]].add(url(w))
            assert owner_of_partition[r["trigger"]["partition"]] == url(w), r
        assert all(len(o) == 1 for o in owners.values())
        assert {next(iter(o)) for o in owners.values()} == {url(w) for w in workers}  # all three took a share
        moved = sum(1 for u in {e.user_id for e in first} & set(owners)
                    if next(iter(owners[u])) != url(workers[0]))
        assert moved > 0  # some users continued on a new worker...

        ids = output_ids(all_recs)
        assert set(ids) == {e.event_id for e in workload.events} and set(ids.values()) == {1}
        assert total(workers, "streamrec_events_total") == len(workload.events)
        assert total(workers, "streamrec_duplicates_total") == 0
        assert total(workers, "streamrec_dead_letters_total") == 0
        wanted = {u: {e.event_id for e in evs} for u, evs in workload.by_user().items()}
        with TopicReader(kafka, changelog_topic(app_id)) as log:
            states = last_states(log.wait(lambda rs: states_cover(rs, wanted), 120, "every event in the state"))
        assert_states_equal(states, reference)  # ...with the state the first worker built
    finally:
        for w in workers:
            stop_worker(w)

    Outcome("scale-out", events_in=len(workload.events), processed=len(ids), duplicates=0, dead_letters=0,
            lost=len(workload.events) - len(ids), seconds=time.perf_counter() - started,
            extra={"events_per_s_1_worker": round(rate_1, 1), "events_per_s_3_workers": round(rate_3, 1),
                   "users_moved": moved}).report()
    if os.environ.get("STREAMREC_WRITE_RESULTS") == "1":
        (REPO / "bench" / "results" / "scaleout.json").write_text(json.dumps({
            "what": "events/s from first send to the last list, one worker then three in one group, "
                    "6 partitions, embedded Tansu broker, real Musical Instruments events "
                    "(every 10th a review with text, the rest clicks)",
            "machine": {"cores": os.cpu_count(), "load_avg_after": os.getloadavg()},
            "worker_flags": list(flags),
            "events_per_phase": [len(first), len(second)],
            "events_per_s": {"1_worker": round(rate_1, 1), "3_workers": round(rate_3, 1)},
            "speedup": round(rate_3 / rate_1, 2),
        }, indent=2) + "\n")

