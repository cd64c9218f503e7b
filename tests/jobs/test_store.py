"""The job store on SQLite: FIFO claims with leases, optimistic state changes that only one
caller can win, reclaiming after a lease runs out, cancellation, expiry, admission."""

from __future__ import annotations

import threading

import pytest

from musicgen_server.generation.params import GenerationParams
from musicgen_server.jobs.store import Finished, JobStore, NewJob, QueueFull

LEASE = 10.0


@pytest.fixture
def store(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield store
    store.close()


def new(prompt="drums", model="tiny", owner=None, **params):
    return NewJob(
        prompt=prompt, model=model, params=GenerationParams(duration=1, **params).with_seed(), owner=owner
    )


def claim(store, worker="w1", capacity=8, now=None, **kw):
    return store.claim(
        worker, capacity=lambda model: capacity, lease_seconds=LEASE, max_attempts=3, now=now, **kw
    )


def finished(name="x.wav"):
    return Finished(name, 1.0, 32000, 1, 0.1, 0.5, 2.0, 1)


def test_submit_fixes_the_seed_and_reads_back(store):
    job = store.submit(new(seed=None, top_k=10))
    again = store.get(job.id)
    assert again == job
    assert job.status == "queued" and job.progress == 0 and job.attempts == 0
    assert isinstance(job.seed, int) and job.params.top_k == 10
    assert store.get("00000000-0000-0000-0000-000000000000") is None


def test_claims_are_fifo_and_respect_capacity_per_model(store):
    ids = [store.submit(new(str(i), model="tiny" if i % 2 else "small")).id for i in range(6)]
    taken = store.claim(
        "w", capacity=lambda model: 2 if model == "tiny" else 1, lease_seconds=LEASE, max_attempts=3
    )
    # small: 0 (one slot), tiny: 1, 3 (two slots); in queue order.
    assert [job.id for job in taken] == [ids[0], ids[1], ids[3]]
    assert all(job.status == "running" and job.worker_id == "w" and job.attempts == 1 for job in taken)
    assert store.queue_positions() == {ids[2]: 1, ids[4]: 2, ids[5]: 3}
    assert store.queue_position(store.get(ids[5])) == 3
    assert store.counts() == {"queued": 3, "running": 3, "completed": 0, "failed": 0, "cancelled": 0}


def test_full_models_are_skipped_in_the_query(store):
    for index in range(40):
        store.submit(new(str(index), model="small"))
    last = store.submit(new("tiny one", model="tiny"))
    taken = claim(store, full_models=["small"], limit=8)
    assert [job.id for job in taken] == [last.id]


def test_concurrent_claimers_never_take_the_same_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    stores = [JobStore(url) for _ in range(4)]
    for index in range(60):
        stores[0].submit(new(str(index)))
    claimed: dict[str, list[str]] = {}

    def worker(number):
        mine = claimed.setdefault(f"w{number}", [])
        while True:
            jobs = stores[number].claim(
                f"w{number}", capacity=lambda model: 3, lease_seconds=LEASE, max_attempts=3
            )
            if not jobs:
                return
            mine.extend(job.id for job in jobs)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert len(every) == 60 and len(set(every)) == 60
    assert stores[0].counts()["running"] == 60
    for store in stores:
        store.close()


def test_a_job_whose_lease_ran_out_is_claimed_again(store):
    job = store.submit(new())
    [held] = claim(store, "dead", now=1000.0)
    assert held.lease_until == 1000.0 + LEASE
    assert claim(store, "alive", now=1000.0 + LEASE - 1) == []
    [again] = claim(store, "alive", now=1000.0 + LEASE + 1)
    assert again.id == job.id and again.worker_id == "alive" and again.attempts == 2
    # The dead worker's late writes no longer land.
    assert store.complete(job.id, "dead", finished(), ttl=60) is None
    assert store.set_progress("dead", {job.id: 0.9}) is None and store.get(job.id).progress == 0
    assert store.renew("dead", [job.id], lease_seconds=LEASE).held == frozenset()


def test_renewal_keeps_the_lease(store):
    job = store.submit(new())
    claim(store, "w1", now=1000.0)
    state = store.renew("w1", [job.id], lease_seconds=LEASE, now=1008.0)
    assert state.held == {job.id} and state.cancel_requested == frozenset()
    assert claim(store, "w2", now=1000.0 + LEASE + 1) == []
    assert store.get(job.id).lease_until == 1008.0 + LEASE


def test_a_job_that_keeps_killing_its_worker_is_given_up(store):
    job = store.submit(new())
    now = 1000.0
    for _ in range(3):
        assert len(claim(store, "w", now=now)) == 1
        now += LEASE + 1
    assert claim(store, "w", now=now) == []
    ended = store.get(job.id)
    assert ended.status == "failed" and "3 times" in ended.error and ended.attempts == 3


def test_complete_sets_expiry_and_timings(store):
    job = store.submit(new())
    claim(store, "w", now=1000.0)
    done = store.complete(job.id, "w", finished(f"{job.id}.wav"), ttl=60, now=1002.0)
    assert done.status == "completed" and done.progress == 1.0
    assert done.expires_at == 1062.0 and done.audio_file == f"{job.id}.wav"
    assert (done.generation_seconds, done.real_time_factor, done.batch_size) == (0.5, 2.0, 1)
    assert done.worker_id is None and done.lease_until is None
    assert not done.is_expired(1061.0) and done.is_expired(1062.0)
    # Only once.
    assert store.complete(job.id, "w", finished(), ttl=60) is None
    assert store.fail(job.id, "w", "late") is None


def test_release_puts_a_job_back_without_counting_the_attempt(store):
    job = store.submit(new())
    claim(store, "w")
    back = store.release(job.id, "w")
    assert (
        back.status == "queued" and back.attempts == 0 and back.worker_id is None and back.started_at is None
    )
    assert claim(store, "w2")[0].id == job.id


def test_cancel_a_queued_job_at_once_and_a_running_one_by_request(store):
    first = store.submit(new("a"))
    second = store.submit(new("b"))
    claim(store, "w", capacity=1)
    running, queued = store.get(first.id), store.get(second.id)
    assert running.status == "running" and queued.status == "queued"
    assert store.cancel(queued.id).status == "cancelled"
    after = store.cancel(running.id)
    assert after.status == "running" and after.cancel_requested
    state = store.cancel_requests("w", [running.id])
    assert state.cancel_requested == {running.id}
    assert store.mark_cancelled(running.id, "w").status == "cancelled"
    assert store.cancel("00000000-0000-0000-0000-000000000000") is None


def test_a_cancelled_job_whose_worker_died_is_not_run_again(store):
    job = store.submit(new())
    claim(store, "dead", now=1000.0)
    store.cancel(job.id)
    assert claim(store, "alive", now=1000.0 + LEASE + 1) == []
    assert store.get(job.id).status == "cancelled"


def test_owners_see_only_their_jobs(store):
    mine = store.submit(new(owner="a" * 64))
    theirs = store.submit(new(owner="b" * 64))
    assert store.get(mine.id, owner="a" * 64) is not None
    assert store.get(theirs.id, owner="a" * 64) is None
    jobs, total = store.list(owner="a" * 64)
    assert [job.id for job in jobs] == [mine.id] and total == 1
    assert store.cancel(theirs.id, owner="a" * 64) is None
    assert store.get(theirs.id).status == "queued"


def test_list_is_newest_first_paginated_and_filtered(store):
    ids = [store.submit(new(str(index))).id for index in range(7)]
    store.cancel(ids[2])
    page, total = store.list(limit=3)
    assert [job.id for job in page] == ids[::-1][:3] and total == 7
    page, _ = store.list(limit=3, offset=6)
    assert [job.id for job in page] == [ids[0]]
    cancelled, total = store.list(statuses=["cancelled"])
    assert [job.id for job in cancelled] == [ids[2]] and total == 1


def test_delete_only_finished_jobs(store):
    job = store.submit(new())
    assert store.delete(job.id) is None
    store.cancel(job.id)
    assert store.delete(job.id).id == job.id
    assert store.get(job.id) is None


def test_queue_cap(store):
    store.submit(new(), max_queue=2)
    store.submit(new(), max_queue=2)
    with pytest.raises(QueueFull) as full:
        store.submit(new(), max_queue=2)
    assert (full.value.depth, full.value.limit) == (2, 2)
    claim(store, capacity=1, limit=1)
    store.submit(new(), max_queue=2)  # running jobs are not waiting


def test_expire_due_marks_once(store):
    job = store.submit(new())
    claim(store, "w", now=1000.0)
    store.complete(job.id, "w", finished(f"{job.id}.wav"), ttl=10, now=1000.0)
    assert store.expire_due(now=1005.0) == []
    [expired] = store.expire_due(now=1011.0)
    assert expired.audio_file == f"{job.id}.wav"
    assert store.expire_due(now=1012.0) == []
    after = store.get(job.id)
    assert after.status == "completed" and after.expired and after.is_expired()
    assert store.live_audio_files([f"{job.id}.wav"]) == set()


def test_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first = JobStore(url)
    job = first.submit(new())
    first.close()
    second = JobStore(url)
    assert second.get(job.id) == job
    second.close()
