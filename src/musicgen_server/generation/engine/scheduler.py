"""Who runs: slots, admission, joins and leaves. Plain Python on host integers; no tensors.

The engine has a fixed number of slots (`max_batch_size`); each slot owns one region of the
runner's preallocated state (KV cache rows, cross-attention keys, sampled codes). A request
waits in a FIFO queue until a slot is free, joins the running batch at the next step, runs one
decoder step per engine step, and leaves when it has taken all its steps or is cancelled; its
slot goes to the next waiting request before the following step.

Slots are handed out lowest index first so that the running slots stay packed at the front,
which keeps the padded batch of the CUDA-graph runner small (`high_water`).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Sequence:
    """One request as the scheduler sees it: identity, how many steps it needs and where it is."""

    request_id: str
    steps_total: int
    guided: bool
    payload: Any = None  # the engine's own record (handle, shape, stream); never read here
    slot: int | None = None
    steps_done: int = 0
    # Sum of the running batch size over this request's steps, for its mean batch size.
    batch_sum: int = 0
    finished: bool = False

    @property
    def running(self) -> bool:
        return self.slot is not None and not self.finished

    @property
    def step(self) -> int:
        """The decoder step this sequence takes next (its position in the delay-pattern grid)."""
        return self.steps_done

    @property
    def mean_batch(self) -> float:
        return self.batch_sum / self.steps_done if self.steps_done else 0.0


@dataclass(frozen=True)
class StepPlan:
    """The sequences that take the next step, in slot order."""

    sequences: tuple[Sequence, ...]
    high_water: int  # 1 + the highest slot in use

    @property
    def size(self) -> int:
        return len(self.sequences)

    @property
    def slots(self) -> list[int]:
        return [seq.slot for seq in self.sequences]  # type: ignore[misc]


@dataclass
class Scheduler:
    max_slots: int
    _waiting: deque[Sequence] = field(default_factory=deque)
    _free: list[int] = field(default_factory=list)
    _running: dict[int, Sequence] = field(default_factory=dict)
    steps_taken: int = 0

    def __post_init__(self) -> None:
        if self.max_slots < 1:
            raise ValueError("the scheduler needs at least one slot")
        self._free = list(range(self.max_slots))
        heapq.heapify(self._free)

    # -- state ------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Sequence]:
        return list(self._waiting)

    @property
    def running(self) -> list[Sequence]:
        return [self._running[slot] for slot in sorted(self._running)]

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def high_water(self) -> int:
        return max(self._running) + 1 if self._running else 0

    # -- changes ----------------------------------------------------------------------------
    def add(self, sequence: Sequence) -> None:
        if sequence.steps_total < 1:
            raise ValueError("a sequence needs at least one step")
        self._waiting.append(sequence)

    def admit(self) -> list[Sequence]:
        """Give free slots to waiting sequences, first come first served. The caller prepares
        each one (text encoding, cross-attention keys) before the next step; one it cannot
        prepare goes back through `release`."""
        admitted = []
        while self._waiting and self._free:
            sequence = self._waiting.popleft()
            sequence.slot = heapq.heappop(self._free)
            self._running[sequence.slot] = sequence
            admitted.append(sequence)
        return admitted

    def plan(self) -> StepPlan:
        """Every running sequence takes the next step: a request never waits for another."""
        return StepPlan(sequences=tuple(self.running), high_water=self.high_water)

    def complete(self, plan: StepPlan) -> list[Sequence]:
        """Count the step the plan's sequences just took; free the slots of those that are done
        and return them."""
        self.steps_taken += 1
        done = []
        for sequence in plan.sequences:
            if sequence.finished or sequence.slot is None:
                continue  # left during the step (cancelled)
            sequence.steps_done += 1
            sequence.batch_sum += plan.size
            if sequence.steps_done >= sequence.steps_total:
                self.release(sequence)
                done.append(sequence)
        return done

    def release(self, sequence: Sequence) -> None:
        """Take a sequence out, running or waiting (finished, cancelled or failed). Its slot is
        free for the very next admission."""
        sequence.finished = True
        if sequence.slot is not None and self._running.get(sequence.slot) is sequence:
            del self._running[sequence.slot]
            heapq.heappush(self._free, sequence.slot)
            return
        try:
            self._waiting.remove(sequence)
        except ValueError:
            pass

    def release_all(self) -> list[Sequence]:
        """Drop everything (the runner failed); returns what was running or waiting."""
        dropped = self.running + list(self._waiting)
        for sequence in dropped:
            self.release(sequence)
        return dropped
