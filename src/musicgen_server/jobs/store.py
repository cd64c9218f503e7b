"""The job store and queue: one table, SQLite by default, PostgreSQL with the same code.

Every state change is one short transaction whose UPDATE carries the state it expects in its
WHERE clause (optimistic checks), so two workers, two API processes or a worker and the API
racing on one job can never both win: the loser's UPDATE matches no row.

Claiming takes a lease: the worker that claims a job owns it until `lease_until` and renews
the lease while it is alive. A job whose lease ran out (its worker died, SIGKILL or power
loss) is claimable again, so a job is run at least once and never lost. On PostgreSQL the
candidate rows are read `FOR UPDATE SKIP LOCKED` so concurrent claimers do not even queue up
behind each other; on SQLite write transactions start with `BEGIN IMMEDIATE`, which serialises
writers without the "database is locked" errors of lock upgrades.

Times are seconds since the epoch (floats): portable, and timings are plain subtractions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine

from musicgen_server.config import Settings
from musicgen_server.generation.params import GenerationParams

log = logging.getLogger("musicgen_server.jobs")

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
FINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})

metadata = MetaData()

jobs_table = Table(
    "jobs",
    metadata,
    # A monotonic sequence gives FIFO order and "newest first" without trusting clocks.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    # sha256 of the API key that made the job (never the key); NULL when keys are off.
    Column("owner", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("model", String(512), nullable=False),
    Column("params", JSON, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("format", String(8), nullable=False),
    Column("normalize", String(16), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("expired", Boolean, nullable=False, default=False),
    Column("audio_file", String(64), nullable=True),
    Column("audio_seconds", Float, nullable=True),
    Column("sample_rate", Integer, nullable=True),
    Column("channels", Integer, nullable=True),
    Column("queue_seconds", Float, nullable=True),
    Column("generation_seconds", Float, nullable=True),
    Column("real_time_factor", Float, nullable=True),
    Column("batch_size", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker_id", String(128), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Index("ix_jobs_status_seq", "status", "seq"),
    Index("ix_jobs_owner_seq", "owner", "seq"),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, as every layer above reads it."""

    seq: int
    id: str
    owner: str | None
    status: str
    prompt: str
    model: str
    params: GenerationParams
    format: str
    normalize: str
    progress: float
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    expired: bool
    audio_file: str | None
    audio_seconds: float | None
    sample_rate: int | None
    channels: int | None
    queue_seconds: float | None
    generation_seconds: float | None
    real_time_factor: float | None
    batch_size: int | None
    attempts: int
    worker_id: str | None
    lease_until: float | None
    cancel_requested: bool

    @property
    def seed(self) -> int:
        assert self.params.seed is not None
        return self.params.seed

    @property
    def duration(self) -> float:
        return self.params.duration

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def is_expired(self, now: float | None = None) -> bool:
        """Expired once its time has come, even before a sweep has deleted the file."""
        if self.expired:
            return True
        if self.status != COMPLETED or self.expires_at is None:
            return False
        return (now if now is not None else time.time()) >= self.expires_at

    @classmethod
    def from_row(cls, row: Any) -> Job:
        values = dict(row._mapping)
        values["params"] = GenerationParams(**values["params"])
        values.pop("seed", None)
        values["expired"] = bool(values["expired"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


@dataclass(frozen=True)
class NewJob:
    prompt: str
    model: str
    params: GenerationParams  # with its seed fixed (GenerationParams.with_seed())
    format: str = "wav"
    normalize: str = "none"
    owner: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class Finished:
    """What a worker reports for a completed job."""

    audio_file: str
    audio_seconds: float
    sample_rate: int
    channels: int
    queue_seconds: float
    generation_seconds: float
    real_time_factor: float
    batch_size: int


class QueueFull(Exception):
    def __init__(self, depth: int, limit: int):
        super().__init__(f"{depth} jobs are waiting; the limit is {limit}")
        self.depth = depth
        self.limit = limit


@dataclass(frozen=True)
class LeaseState:
    """A worker's view of the jobs it holds, after renewing their leases."""

    held: frozenset[str]  # still running under this worker
    cancel_requested: frozenset[str]  # of those, the ones a user asked to cancel


def create_db_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised through every test
        # pysqlite's own transaction handling would BEGIN DEFERRED lazily; take it over so that
        # write transactions can BEGIN IMMEDIATE (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection):
        write = connection.get_execution_options().get("musicgen_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class JobStore:
    def __init__(self, url: str):
        self.url = url
        self.engine = create_db_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        metadata.create_all(self.engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.resolved_database_url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(musicgen_write=True)
            with conn.begin():
                yield conn

    # -- submitting -------------------------------------------------------------------------
    def submit(self, new: NewJob, *, max_queue: int | None = None, now: float | None = None) -> Job:
        """Queue a job, refusing with QueueFull when `max_queue` jobs already wait. The count and
        the insert share one write transaction (serialised on SQLite)."""
        now = time.time() if now is None else now
        assert new.params.seed is not None, "fix the seed with GenerationParams.with_seed() first"
        with self._tx(write=True) as conn:
            if max_queue is not None:
                depth = conn.execute(
                    select(func.count()).select_from(jobs_table).where(jobs_table.c.status == QUEUED)
                ).scalar_one()
                if depth >= max_queue:
                    raise QueueFull(depth, max_queue)
            conn.execute(
                jobs_table.insert().values(
                    id=new.id,
                    owner=new.owner,
                    status=QUEUED,
                    prompt=new.prompt,
                    model=new.model,
                    params=new.params.model_dump(),
                    seed=new.params.seed,
                    format=new.format,
                    normalize=new.normalize,
                    progress=0.0,
                    created_at=now,
                    expired=False,
                    attempts=0,
                    cancel_requested=False,
                )
            )
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == new.id)).one()
        job = Job.from_row(row)
        _log_state(job, "queued", model=job.model, duration=job.duration, seed=job.seed)
        return job

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None. With `owner` set only that owner's jobs are found."""
        query = select(jobs_table).where(jobs_table.c.id == job_id)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        with self._tx() as conn:
            row = conn.execute(query).first()
        return Job.from_row(row) if row is not None else None

    def list(
        self,
        *,
        owner: str | None = None,
        statuses: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """Newest first, with the total that matches the filter."""
        conditions = []
        if owner is not None:
            conditions.append(jobs_table.c.owner == owner)
        wanted = list(statuses or [])
        if wanted:
            conditions.append(jobs_table.c.status.in_(wanted))
        where = and_(true(), *conditions)
        with self._tx() as conn:
            total = conn.execute(select(func.count()).select_from(jobs_table).where(where)).scalar_one()
            rows = conn.execute(
                select(jobs_table).where(where).order_by(jobs_table.c.seq.desc()).limit(limit).offset(offset)
            ).all()
        return [Job.from_row(row) for row in rows], int(total)

    def queue_positions(self) -> dict[str, int]:
        """1-based place of every queued job in the queue (all owners: it is one queue)."""
        with self._tx() as conn:
            ids = conn.execute(
                select(jobs_table.c.id).where(jobs_table.c.status == QUEUED).order_by(jobs_table.c.seq)
            ).scalars()
            return {job_id: index + 1 for index, job_id in enumerate(ids)}

    def queue_position(self, job: Job) -> int | None:
        if job.status != QUEUED:
            return None
        with self._tx() as conn:
            ahead = conn.execute(
                select(func.count())
                .select_from(jobs_table)
                .where(jobs_table.c.status == QUEUED, jobs_table.c.seq < job.seq)
            ).scalar_one()
        return int(ahead) + 1

    def counts(self) -> dict[str, int]:
        with self._tx() as conn:
            rows = conn.execute(select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(count) for status, count in rows})
        return counts

    def queue_depth(self) -> int:
        with self._tx() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(jobs_table).where(jobs_table.c.status == QUEUED)
                ).scalar_one()
            )

    # -- the worker's side ------------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        *,
        capacity: Callable[[str], int],
        full_models: Iterable[str] = (),
        lease_seconds: float,
        max_attempts: int,
        limit: int = 32,
        now: float | None = None,
    ) -> list[Job]:
        """Take the oldest claimable jobs (queued, or running under a lease that ran out) for
        models with room: `capacity(model)` says how many more of a model this worker takes.
        A reclaimed job that has used up its attempts is failed; one a user asked to cancel
        is cancelled instead of run."""
        now = time.time() if now is None else now
        claimable = or_(
            jobs_table.c.status == QUEUED,
            and_(jobs_table.c.status == RUNNING, jobs_table.c.lease_until < now),
        )
        full = list(full_models)
        query = select(
            jobs_table.c.seq,
            jobs_table.c.model,
            jobs_table.c.status,
            jobs_table.c.attempts,
            jobs_table.c.cancel_requested,
        ).where(claimable)
        if full:
            query = query.where(jobs_table.c.model.not_in(full))
        query = query.order_by(jobs_table.c.seq).limit(limit).with_for_update(skip_locked=True)
        claimed: list[int] = []
        given_up: list[tuple[int, str]] = []
        with self._tx(write=True) as conn:
            taken: dict[str, int] = {}
            for seq, model, status, attempts, cancel_requested in conn.execute(query).all():
                # The same condition again: the row must still be claimable when we write it.
                still = and_(
                    jobs_table.c.seq == seq,
                    jobs_table.c.status == status,
                    or_(jobs_table.c.status == QUEUED, jobs_table.c.lease_until < now),
                )
                if status == RUNNING and (cancel_requested or attempts >= max_attempts):
                    if cancel_requested:
                        values = dict(status=CANCELLED, error=None)
                        reason = "cancelled"
                    else:
                        values = dict(
                            status=FAILED,
                            error=(
                                f"the server stopped while running this job {attempts} times, so it was "
                                "given up; try a shorter duration or another model"
                            ),
                        )
                        reason = "failed"
                    result = conn.execute(
                        update(jobs_table)
                        .where(still)
                        .values(**values, finished_at=now, worker_id=None, lease_until=None)
                    )
                    if result.rowcount == 1:
                        given_up.append((seq, reason))
                    continue
                if capacity(model) - taken.get(model, 0) <= 0:
                    continue
                result = conn.execute(
                    update(jobs_table)
                    .where(still)
                    .values(
                        status=RUNNING,
                        worker_id=worker_id,
                        lease_until=now + lease_seconds,
                        attempts=jobs_table.c.attempts + 1,
                        started_at=now,
                        progress=0.0,
                    )
                )
                if result.rowcount == 1:
                    claimed.append(seq)
                    taken[model] = taken.get(model, 0) + 1
            jobs = (
                [
                    Job.from_row(row)
                    for row in conn.execute(
                        select(jobs_table).where(jobs_table.c.seq.in_(claimed)).order_by(jobs_table.c.seq)
                    ).all()
                ]
                if claimed
                else []
            )
            ended = (
                [
                    Job.from_row(row)
                    for row in conn.execute(
                        select(jobs_table).where(jobs_table.c.seq.in_([seq for seq, _ in given_up]))
                    ).all()
                ]
                if given_up
                else []
            )
        for job in ended:
            _log_state(job, job.status, error=job.error, attempts=job.attempts)
        for job in jobs:
            again = " again" if job.attempts > 1 else ""
            _log_state(job, "running", worker=worker_id, attempt=job.attempts, note=f"claimed{again}")
        return jobs

    def renew(
        self, worker_id: str, job_ids: Iterable[str], *, lease_seconds: float, now: float | None = None
    ) -> LeaseState:
        """Extend the leases of jobs this worker still holds and say which ones those are."""
        ids = list(job_ids)
        if not ids:
            return LeaseState(frozenset(), frozenset())
        now = time.time() if now is None else now
        mine = and_(
            jobs_table.c.id.in_(ids),
            jobs_table.c.worker_id == worker_id,
            jobs_table.c.status == RUNNING,
        )
        with self._tx(write=True) as conn:
            conn.execute(update(jobs_table).where(mine).values(lease_until=now + lease_seconds))
            rows = conn.execute(select(jobs_table.c.id, jobs_table.c.cancel_requested).where(mine)).all()
        return LeaseState(
            held=frozenset(row[0] for row in rows),
            cancel_requested=frozenset(row[0] for row in rows if row[1]),
        )

    def cancel_requests(self, worker_id: str, job_ids: Iterable[str]) -> LeaseState:
        """Like `renew` without writing: which held jobs a user asked to cancel."""
        ids = list(job_ids)
        if not ids:
            return LeaseState(frozenset(), frozenset())
        with self._tx() as conn:
            rows = conn.execute(
                select(jobs_table.c.id, jobs_table.c.cancel_requested).where(
                    jobs_table.c.id.in_(ids),
                    jobs_table.c.worker_id == worker_id,
                    jobs_table.c.status == RUNNING,
                )
            ).all()
        return LeaseState(
            held=frozenset(row[0] for row in rows),
            cancel_requested=frozenset(row[0] for row in rows if row[1]),
        )

    def set_progress(self, worker_id: str, progress: dict[str, float]) -> None:
        if not progress:
            return
        with self._tx(write=True) as conn:
            for job_id, value in progress.items():
                conn.execute(
                    update(jobs_table)
                    .where(
                        jobs_table.c.id == job_id,
                        jobs_table.c.worker_id == worker_id,
                        jobs_table.c.status == RUNNING,
                    )
                    .values(progress=float(min(max(value, 0.0), 1.0)))
                )

    def complete(
        self, job_id: str, worker_id: str, finished: Finished, *, ttl: float, now: float | None = None
    ) -> Job | None:
        """Record a finished clip; None when the job is no longer this worker's."""
        now = time.time() if now is None else now
        values = dict(
            status=COMPLETED,
            progress=1.0,
            finished_at=now,
            expires_at=now + ttl,
            audio_file=finished.audio_file,
            audio_seconds=finished.audio_seconds,
            sample_rate=finished.sample_rate,
            channels=finished.channels,
            queue_seconds=finished.queue_seconds,
            generation_seconds=finished.generation_seconds,
            real_time_factor=finished.real_time_factor,
            batch_size=finished.batch_size,
            worker_id=None,
            lease_until=None,
            error=None,
        )
        job = self._end(job_id, worker_id, values)
        if job is not None:
            _log_state(
                job,
                "completed",
                audio_seconds=round(finished.audio_seconds, 3),
                generation_seconds=round(finished.generation_seconds, 3),
                batch_size=finished.batch_size,
            )
        return job

    def fail(self, job_id: str, worker_id: str, message: str, *, now: float | None = None) -> Job | None:
        job = self._end(
            job_id,
            worker_id,
            dict(
                status=FAILED,
                error=message,
                finished_at=time.time() if now is None else now,
                worker_id=None,
                lease_until=None,
            ),
        )
        if job is not None:
            _log_state(job, "failed", error=message)
        return job

    def mark_cancelled(self, job_id: str, worker_id: str, *, now: float | None = None) -> Job | None:
        job = self._end(
            job_id,
            worker_id,
            dict(
                status=CANCELLED,
                finished_at=time.time() if now is None else now,
                worker_id=None,
                lease_until=None,
            ),
        )
        if job is not None:
            _log_state(job, "cancelled", note="stopped while running")
        return job

    def release(self, job_id: str, worker_id: str) -> Job | None:
        """Give a running job back to the queue untouched (shutdown, model eviction). The start
        is not counted as an attempt: nothing went wrong with the job."""
        job = self._end(
            job_id,
            worker_id,
            dict(
                status=QUEUED,
                progress=0.0,
                started_at=None,
                worker_id=None,
                lease_until=None,
                attempts=func.max(jobs_table.c.attempts - 1, 0)
                if self.is_sqlite
                else func.greatest(jobs_table.c.attempts - 1, 0),
            ),
        )
        if job is not None:
            _log_state(job, "queued", note="released back to the queue")
        return job

    def _end(self, job_id: str, worker_id: str, values: dict) -> Job | None:
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(jobs_table)
                .where(
                    jobs_table.c.id == job_id,
                    jobs_table.c.worker_id == worker_id,
                    jobs_table.c.status == RUNNING,
                )
                .values(**values)
            )
            if result.rowcount != 1:
                return None
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one()
        return Job.from_row(row)

    # -- the user's side --------------------------------------------------------------------
    def cancel(self, job_id: str, owner: str | None = None, *, now: float | None = None) -> Job | None:
        """A queued job is cancelled at once; a running one is marked, and its worker stops it
        (it looks at least every few tenths of a second). Finished jobs are left as they are.
        Returns the job as it is after the call, or None when there is no such job."""
        now = time.time() if now is None else now
        scope = [jobs_table.c.id == job_id]
        if owner is not None:
            scope.append(jobs_table.c.owner == owner)
        cancelled_now = False
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(jobs_table)
                .where(*scope, jobs_table.c.status == QUEUED)
                .values(status=CANCELLED, finished_at=now)
            )
            cancelled_now = result.rowcount == 1
            if not cancelled_now:
                conn.execute(
                    update(jobs_table)
                    .where(*scope, jobs_table.c.status == RUNNING)
                    .values(cancel_requested=True)
                )
            row = conn.execute(select(jobs_table).where(*scope)).first()
        job = Job.from_row(row) if row is not None else None
        if job is not None and cancelled_now:
            _log_state(job, "cancelled", note="cancelled while queued")
        elif job is not None and job.status == RUNNING:
            log.info("job %s cancel requested", job.id, extra={"job_id": job.id, "event": "cancel_requested"})
        return job

    def delete(self, job_id: str, owner: str | None = None) -> Job | None:
        """Delete a finished job's row; returns it so the caller can delete its audio."""
        scope = [jobs_table.c.id == job_id, jobs_table.c.status.in_(FINAL_STATUSES)]
        if owner is not None:
            scope.append(jobs_table.c.owner == owner)
        with self._tx(write=True) as conn:
            row = conn.execute(select(jobs_table).where(*scope)).first()
            if row is None:
                return None
            conn.execute(delete(jobs_table).where(*scope))
        job = Job.from_row(row)
        log.info("job %s deleted", job.id, extra={"job_id": job.id, "event": "deleted"})
        return job

    # -- housekeeping -----------------------------------------------------------------------
    def expire_due(self, *, now: float | None = None, limit: int = 500) -> list[Job]:
        """Mark completed jobs past their expiry as expired and return them, so the caller
        deletes their audio. Marking first means no job ever points at a file that is gone."""
        now = time.time() if now is None else now
        due = and_(
            jobs_table.c.status == COMPLETED,
            jobs_table.c.expired.is_(False),
            jobs_table.c.expires_at <= now,
        )
        with self._tx(write=True) as conn:
            rows = conn.execute(select(jobs_table).where(due).order_by(jobs_table.c.seq).limit(limit)).all()
            expired = []
            for row in rows:
                result = conn.execute(
                    update(jobs_table).where(jobs_table.c.seq == row.seq, due).values(expired=True)
                )
                if result.rowcount == 1:
                    expired.append(Job.from_row(row))
        for job in expired:
            log.info("job %s expired: audio deleted", job.id, extra={"job_id": job.id, "event": "expired"})
        return expired

    def live_audio_files(self, names: Iterable[str]) -> set[str]:
        """Of these file names, the ones a completed, unexpired job points at."""
        wanted = list(names)
        live: set[str] = set()
        with self._tx() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                live.update(
                    conn.execute(
                        select(jobs_table.c.audio_file).where(
                            jobs_table.c.audio_file.in_(chunk),
                            jobs_table.c.status == COMPLETED,
                            jobs_table.c.expired.is_(False),
                        )
                    ).scalars()
                )
        return live


def _log_state(job: Job, state: str, **fields: Any) -> None:
    details = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    log.info(
        "job %s %s%s",
        job.id,
        state,
        f" {details}" if details else "",
        extra={"job_id": job.id, "event": state, **{k: v for k, v in fields.items() if v is not None}},
    )
