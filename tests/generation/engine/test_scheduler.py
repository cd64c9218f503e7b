"""The scheduler alone: slots, first-come admission, joins and leaves, no tensors anywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from musicgen_server.generation.engine.scheduler import Scheduler, Sequence


def seq(name: str, steps: int = 3, guided: bool = True) -> Sequence:
    return Sequence(request_id=name, steps_total=steps, guided=guided)


def run_step(scheduler: Scheduler):
    plan = scheduler.plan()
    return plan, scheduler.complete(plan)


def test_the_scheduler_is_plain_python():
    code = (
        "import sys, musicgen_server.generation.engine.scheduler as s; "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_admission_is_first_come_first_served_up_to_the_slots():
    scheduler = Scheduler(max_slots=2)
    a, b, c = seq("a"), seq("b"), seq("c")
    for s in (a, b, c):
        scheduler.add(s)
    admitted = scheduler.admit()
    assert admitted == [a, b] and [a.slot, b.slot] == [0, 1]
    assert scheduler.waiting == [c] and c.slot is None and scheduler.free_slots == 0
    assert scheduler.admit() == []


def test_every_running_request_takes_each_step_and_leaves_when_done():
    scheduler = Scheduler(max_slots=4)
    short, long = seq("short", steps=2), seq("long", steps=4)
    scheduler.add(short)
    scheduler.add(long)
    scheduler.admit()
    plan, done = run_step(scheduler)
    assert plan.sequences == (short, long) and done == []
    plan, done = run_step(scheduler)
    assert done == [short] and short.finished and short.steps_done == 2
    assert scheduler.running == [long]
    plan, done = run_step(scheduler)
    assert plan.sequences == (long,) and long.steps_done == 3
    _, done = run_step(scheduler)
    assert done == [long] and scheduler.idle


def test_a_freed_slot_goes_to_the_next_waiting_request_at_once():
    scheduler = Scheduler(max_slots=1)
    first, second = seq("first", steps=1), seq("second", steps=2)
    scheduler.add(first)
    scheduler.add(second)
    scheduler.admit()
    _, done = run_step(scheduler)
    assert done == [first]
    assert scheduler.admit() == [second] and second.slot == 0


def test_a_request_joins_a_running_batch_between_steps():
    scheduler = Scheduler(max_slots=4)
    early = seq("early", steps=5)
    scheduler.add(early)
    scheduler.admit()
    run_step(scheduler)
    run_step(scheduler)
    late = seq("late", steps=2)
    scheduler.add(late)
    assert scheduler.admit() == [late]
    plan, _ = run_step(scheduler)
    assert [s.request_id for s in plan.sequences] == ["early", "late"]
    assert (early.steps_done, late.steps_done) == (3, 1)  # each at its own step


def test_cancelling_frees_the_slot_and_waiting_requests_can_leave_too():
    scheduler = Scheduler(max_slots=2)
    a, b, c, d = seq("a", 10), seq("b", 10), seq("c", 10), seq("d", 10)
    for s in (a, b, c, d):
        scheduler.add(s)
    scheduler.admit()
    run_step(scheduler)
    scheduler.release(a)  # cancelled while running
    scheduler.release(d)  # cancelled while waiting
    assert a.finished and scheduler.waiting == [c]
    assert scheduler.admit() == [c] and c.slot == 0  # a's slot, straight away
    plan, _ = run_step(scheduler)
    assert a not in plan.sequences and d not in plan.sequences


def test_a_request_released_during_a_step_is_not_counted():
    scheduler = Scheduler(max_slots=2)
    a, b = seq("a", 5), seq("b", 5)
    scheduler.add(a)
    scheduler.add(b)
    scheduler.admit()
    plan = scheduler.plan()
    scheduler.release(a)
    scheduler.complete(plan)
    assert a.steps_done == 0 and b.steps_done == 1


def test_slots_are_packed_lowest_first_so_the_padded_batch_stays_small():
    scheduler = Scheduler(max_slots=4)
    seqs = [seq(str(i), steps=10) for i in range(4)]
    for s in seqs:
        scheduler.add(s)
    scheduler.admit()
    assert scheduler.high_water == 4
    scheduler.release(seqs[3])
    scheduler.release(seqs[1])
    assert scheduler.high_water == 3
    newcomer = seq("new", 10)
    scheduler.add(newcomer)
    scheduler.admit()
    assert newcomer.slot == 1 and scheduler.plan().high_water == 3


def test_mean_batch_size_is_tracked_per_request():
    scheduler = Scheduler(max_slots=4)
    a, b = seq("a", 4), seq("b", 2)
    scheduler.add(a)
    scheduler.add(b)
    scheduler.admit()
    for _ in range(4):
        run_step(scheduler)
    assert b.mean_batch == 2.0
    assert a.mean_batch == pytest.approx((2 + 2 + 1 + 1) / 4)


def test_release_all_drops_everything():
    scheduler = Scheduler(max_slots=1)
    a, b = seq("a"), seq("b")
    scheduler.add(a)
    scheduler.add(b)
    scheduler.admit()
    assert set(scheduler.release_all()) == {a, b}
    assert scheduler.idle and scheduler.free_slots == 1


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        Scheduler(max_slots=0)
    with pytest.raises(ValueError):
        Scheduler(max_slots=1).add(seq("x", steps=0))
