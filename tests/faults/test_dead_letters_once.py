"""Dead letters once: a partition holding bad records, read again from the start by a restarted worker.

A worker processes real events with broken records among them (each gets its dead letter) and
stops. The group's committed offsets are then set back to 0, as an operator re-processing the
topics would do, and a worker starts again on an *empty* disk: it restores the users and the
``dead-lettered`` table from their changelogs and reads every input record a second time. The
valid events are dropped as duplicates (the event-id check), and the broken ones must not be
dead-lettered again: the dead-letter topic holds exactly one record per broken source offset,
and the second run writes none (its re-read bad records count as duplicates too).
"""
from __future__ import annotations

import time
import uuid

from faultkit import (RECOVERABLE, STATE_FLAGS, Outcome, TopicReader, dead_letter_sources, event_records,
                      interleave_broken, output_ids, publish, publish_items, rewind_group, wait_quiet)
from harness import fresh_topics, start_worker, stop_worker

from streams.settings import KafkaConfig

EVENTS = 300
BROKEN = 24


def test_a_reread_after_a_restart_writes_no_dead_letter_twice(broker, model_dir, workload, tmp_path):
    kafka = KafkaConfig(broker.bootstrap)
    topics = fresh_topics(kafka)
    publish_items(kafka, topics, workload.items)
    events = workload.events[:EVENTS]
    records = interleave_broken(event_records(topics, events), topics, BROKEN)
    app_id = f"dlonce-{uuid.uuid4().hex[:8]}"
    flags = (*STATE_FLAGS, *RECOVERABLE)
    started = time.perf_counter()
    wanted = {e.event_id for e in events}
    with TopicReader(kafka, topics.recommendations) as out, TopicReader(kafka, topics.dead_letters) as dlq:
        w = start_worker(kafka, topics, model_dir, tmp_path / "first", *flags, app_id=app_id)
        try:
            publish(kafka, records)
            out.wait(lambda rs: wanted <= set(output_ids(rs)), 240, "a list for every event")
            dlq.wait(lambda rs: len(dead_letter_sources(rs)) >= BROKEN, 120, "a dead letter for every broken record")
            first = wait_quiet([w])
        finally:
            stop_worker(w)
        assert w.proc.returncode == 0, w.log()
        lists_before = len(out.snapshot())

        rewind_group(kafka, app_id, topics.event_topics(), 6)
        w = start_worker(kafka, topics, model_dir, tmp_path / "second", *flags, app_id=app_id)  # empty disk
        try:
            deadline = time.monotonic() + 120
            while w.metric("streamrec_duplicates_total") < len(records) and time.monotonic() < deadline:
                time.sleep(0.3)
            second = wait_quiet([w])
            time.sleep(1.0)  # anything extra (a dead letter or list written again) would arrive now
            rereads = w.metric("streamrec_rereads_total")
            dead, recs = dlq.snapshot(), out.json()
        finally:
            stop_worker(w)

    assert first["streamrec_dead_letters_total"] == BROKEN and first["streamrec_events_total"] == EVENTS
    # the second run read every record again: all of them dropped as already seen, nothing written
    assert second["streamrec_dead_letters_total"] == 0, second
    assert second["streamrec_events_total"] == 0
    # Each record is a duplicate once; a partition the stall guard read again (counted, logged
    # "stalled") delivers part of its records a second time: still duplicates, never new output.
    # Seen once in a loop of full runs on a busy machine: 5 records of one partition re-read.
    duplicates = second["streamrec_duplicates_total"]
    assert duplicates == len(records) if not rereads else len(records) <= duplicates <= 2 * len(records), \
        (duplicates, len(records), rereads)
    sources = dead_letter_sources(dead)
    assert len(sources) == BROKEN and set(sources.values()) == {1}, sources.most_common(3)
    assert len(recs) == lists_before and set(output_ids(recs).values()) == {1}

    Outcome("dead letters once (re-read from 0 on an empty disk)", events_in=2 * len(records), processed=EVENTS,
            duplicates=int(second["streamrec_duplicates_total"]), dead_letters=len(dead), lost=0,
            seconds=time.perf_counter() - started, extra={"dead_letter_records": len(dead)}).report()
