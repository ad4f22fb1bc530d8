"""Sessions and their events, in SQLite on one machine or PostgreSQL shared by replicas.

DBOS keeps the durable execution state (queue, steps, recovery); this store keeps what clients read: the event
log with its per-session sequence and the status folded from it, written in one transaction per event.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import IdempotencyConflict, InvalidArgument, ResourceExhausted
from orchestrator.models import (
    ListQuery,
    WorkflowEvent,
    WorkflowPage,
    WorkflowState,
    WorkflowStatus,
    WorkflowSummary,
)
from orchestrator.progress import EventDraft, apply

metadata = sa.MetaData()

sessions = sa.Table(
    "orch_sessions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False, default=""),
    sa.Column("request_id", sa.String(200), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("workflow_type", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("last_sequence", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("request_json", sa.Text, nullable=False),
    sa.Column("status_json", sa.Text, nullable=False),
    sa.UniqueConstraint("tenant", "request_id", name="orch_sessions_request_id"),
    sa.Index("orch_sessions_list", "tenant", "created_at", "session_id"),
    sa.Index("orch_sessions_state", "state"),
    sa.Index("orch_sessions_type_finished", "workflow_type", "finished_at"),
)

events = sa.Table(
    "orch_events",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("event_json", sa.Text, nullable=False),
    sa.UniqueConstraint("session_id", "key", name="orch_events_key"),
)

replicas = sa.Table(
    "orch_replicas",
    metadata,
    sa.Column("replica_id", sa.String(100), primary_key=True),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    # A fresh token at every start of the replica, replaced by the survivor that takes it over: what its workflow
    # bodies compare theirs with before each phase and before saving a phase's result (orchestrator/fencing.py).
    sa.Column("incarnation", sa.String(64), nullable=False, server_default=""),
)

# What each finished phase consumed, saved with its completion event: a phase whose result was saved but whose
# durable step was not yet recorded when the process died returns the saved result instead of calling the model
# again (its output is the completion event's data).
phase_results = sa.Table(
    "orch_phase_results",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("phase", sa.String(64), primary_key=True),
    sa.Column("usage_json", sa.Text, nullable=False),
)


# One row per replica, rewritten by the health check: a database that answers reads but cannot take writes (a full
# disk, a read-only standby) is found by writing, and a table of its own leaves the replicas' liveness alone.
probes = sa.Table(
    "orch_write_probes",
    metadata,
    sa.Column("replica_id", sa.String(100), primary_key=True),
    sa.Column("written_at", sa.Float, nullable=False),
)


# The event append is the engine's hot path (a transaction per phase): plain SQL, prepared once, with the
# DB-API's positional style rewritten per dialect below.
_SELECT_SESSION = "SELECT status_json, last_sequence FROM orch_sessions WHERE session_id = ?"
_SELECT_KEYS = "SELECT key FROM orch_events WHERE session_id = ?"
_INSERT_EVENT = "INSERT INTO orch_events (session_id, sequence, key, event_json) VALUES (?, ?, ?, ?)"
_UPDATE_SESSION = (
    "UPDATE orch_sessions SET state = ?, updated_at = ?, last_sequence = ?, status_json = ?, "
    "finished_at = COALESCE(?, finished_at), cancel_requested = (cancel_requested OR ?) WHERE session_id = ?"
)


@dataclass(frozen=True)
class NewSession:
    session_id: str
    tenant: str
    request_id: str | None
    fingerprint: str
    workflow_type: str
    request: dict[str, Any]
    status: WorkflowStatus


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ts(value: datetime) -> float:
    return value.timestamp()


class Store:
    def __init__(self, url: str, *, busy_timeout_seconds: float = 30.0) -> None:
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._write = _sqlite_engine(url, immediate=True, busy_timeout_seconds=busy_timeout_seconds)
            self._read = _sqlite_engine(url, immediate=False, busy_timeout_seconds=busy_timeout_seconds)
        else:
            self._write = sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
            self._read = self._write
        self._current: dict[str, WorkflowStatus] = {}  # the last status this process wrote, per running session
        self._local = threading.local()
        self._select_session, self._select_keys, self._insert_event, self._update_session = (
            sql if self.is_sqlite else sql.replace("?", "%s")  # sqlite3 takes qmark, psycopg format
            for sql in (_SELECT_SESSION, _SELECT_KEYS, _INSERT_EVENT, _UPDATE_SESSION)
        )

    def create_schema(self) -> None:
        metadata.create_all(self._write)
        # Columns added after a table was first created (create_all adds tables, never columns).
        with self._write.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("orch_replicas")}
            if "incarnation" not in columns:
                exists = "" if self.is_sqlite else "IF NOT EXISTS "
                conn.exec_driver_sql(
                    f"ALTER TABLE orch_replicas ADD COLUMN {exists}incarnation VARCHAR(64) NOT NULL DEFAULT ''"
                )

    @contextmanager
    def _writer(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, whose one writer thread does every write, that thread keeps its
        connection instead of checking one out of the pool for each transaction."""
        if not self.is_sqlite:
            with self._write.begin() as pooled:
                yield pooled
            return
        kept: Connection | None = getattr(self._local, "conn", None)
        if kept is None or kept.closed:
            kept = self._local.conn = self._write.connect()
        with kept.begin():
            yield kept

    def dispose(self) -> None:
        self._write.dispose()
        if self._read is not self._write:
            self._read.dispose()

    def ping(self) -> None:
        with self._read.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def write_probe(self, replica_id: str) -> None:
        """Rewrites this replica's probe row in a write transaction; raises when the database cannot take writes.
        A pooled connection of its own, not the SQLite writer thread's: a probe never waits behind the write queue,
        only for the database's write lock."""
        with self._write.begin() as conn:
            now = time.time()
            own = probes.c.replica_id == replica_id
            if not conn.execute(probes.update().where(own).values(written_at=now)).rowcount:
                conn.execute(probes.insert().values(replica_id=replica_id, written_at=now))

    # Writes -------------------------------------------------------------------------------------------------

    def create_session(
        self, new: NewSession, first: EventDraft, *, max_active: int | None = None
    ) -> tuple[WorkflowStatus, bool]:
        """Inserts the session with its first event, or returns the existing one for the same request_id.
        Raises IdempotencyConflict when the request_id belongs to a different request, and ResourceExhausted
        when the tenant already has `max_active` queued or running workflows (a retry of an accepted request
        still gets its session)."""
        with self._write.begin() as conn:
            if new.request_id is not None:
                existing = self._by_request_id(conn, new.tenant, new.request_id)
                if existing is not None:
                    return self._same_request(existing, new), False
            if max_active is not None:
                if not self.is_sqlite:
                    # Serialises one tenant's submissions for this transaction, so two replicas cannot both
                    # admit the last free slot; SQLite's BEGIN IMMEDIATE already serialises every writer.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(new.tenant))))
                active = self._count_active(conn, new.tenant)
                if active >= max_active:
                    raise ResourceExhausted(
                        f"this tenant already has {active} queued or running workflows (the limit is {max_active}); "
                        "wait for some to finish or cancel some",
                        retry_after_seconds=5.0,
                        reason="TOO_MANY_ACTIVE_WORKFLOWS",
                    )
            status, event = apply(new.status, first, 1, new.status.created_at)
            try:
                with conn.begin_nested():
                    conn.execute(
                        sessions.insert().values(
                            session_id=new.session_id,
                            tenant=new.tenant,
                            request_id=new.request_id,
                            fingerprint=new.fingerprint,
                            workflow_type=new.workflow_type,
                            state=status.state.value,
                            created_at=_ts(status.created_at),
                            updated_at=_ts(status.updated_at),
                            last_sequence=1,
                            cancel_requested=False,
                            request_json=json.dumps(new.request),
                            status_json=status.model_dump_json(),
                        )
                    )
                    conn.execute(
                        events.insert().values(
                            session_id=new.session_id, sequence=1, key=first.key, event_json=event.model_dump_json()
                        )
                    )
            except sa.exc.IntegrityError:
                # A concurrent duplicate won the race for this request_id (PostgreSQL; SQLite serialises writers).
                existing = self._by_request_id(conn, new.tenant, new.request_id or "")
                if existing is None:
                    raise
                return self._same_request(existing, new), False
            return status, True

    @staticmethod
    def _by_request_id(conn: Connection, tenant: str, request_id: str) -> Any:
        return conn.execute(
            sa.select(sessions.c.fingerprint, sessions.c.status_json).where(
                sessions.c.tenant == tenant, sessions.c.request_id == request_id
            )
        ).first()

    @staticmethod
    def _count_active(conn: Connection, tenant: str) -> int:
        active = (WorkflowState.QUEUED.value, WorkflowState.RUNNING.value)
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(sessions.c.tenant == tenant, sessions.c.state.in_(active))
            ).scalar_one()
        )

    def count_active(self, tenant: str) -> int:
        """Queued plus running workflows of one tenant."""
        with self._read.connect() as conn:
            return self._count_active(conn, tenant)

    @staticmethod
    def _same_request(row: Any, new: NewSession) -> WorkflowStatus:
        if row.fingerprint != new.fingerprint:
            raise IdempotencyConflict(
                f"request_id {new.request_id!r} was already used for a different request; "
                "use a new request_id for a new workflow"
            )
        return WorkflowStatus.model_validate_json(row.status_json)

    def append_many(
        self,
        session_id: str,
        drafts: list[EventDraft],
        *,
        cancel: bool = False,
        phase_usage: tuple[str, str] | None = None,
    ) -> tuple[list[WorkflowEvent], WorkflowStatus | None]:
        """Appends events in order and folds them into the status, in one transaction. A draft whose key is
        already stored is skipped (a replayed write changes nothing); nothing is written once the workflow has
        finished. `cancel` also marks the session so the replica running it interrupts its phase. With
        `phase_usage` (phase, usage JSON), saves what the phase consumed along with its events."""
        with self._writer() as conn:
            lock = "" if self.is_sqlite else " FOR UPDATE"  # SQLite's writer already holds the database lock
            row = conn.exec_driver_sql(self._select_session + lock, (session_id,)).first()
            if row is None:
                return [], None
            # The status this process wrote last is still current unless another writer appended since: skip
            # parsing the stored JSON, which grows with every phase output.
            known = self._current.get(session_id)
            if known is not None and known.last_sequence == row[1]:
                status = known
            else:
                status = WorkflowStatus.model_validate_json(row[0])
            if status.state.terminal:
                self._current.pop(session_id, None)
                return [], status
            stored = {key for (key,) in conn.exec_driver_sql(self._select_keys, (session_id,))}
            written: list[WorkflowEvent] = []
            rows: list[tuple[Any, ...]] = []
            now = datetime.now(UTC)
            for draft in drafts:
                if draft.key in stored or status.state.terminal:
                    continue
                status, event = apply(status, draft, status.last_sequence + 1, now)
                written.append(event)
                rows.append((session_id, event.sequence, draft.key, event.model_dump_json()))
            if not written and not cancel:
                return [], status
            if rows:
                conn.exec_driver_sql(self._insert_event, rows)
            if phase_usage is not None and written:
                phase, usage_json = phase_usage
                conn.execute(phase_results.insert().values(session_id=session_id, phase=phase, usage_json=usage_json))
            conn.exec_driver_sql(
                self._update_session,
                (
                    status.state.value,
                    _ts(status.updated_at),
                    status.last_sequence,
                    status.model_dump_json(),
                    None if status.finished_at is None else _ts(status.finished_at),
                    cancel,
                    session_id,
                ),
            )
        if status.state.terminal:
            self._current.pop(session_id, None)
        else:
            self._current[session_id] = status
        return written, status

    def forget(self, session_id: str) -> None:
        """Drops the remembered status of a session that stopped running here."""
        self._current.pop(session_id, None)

    def purge_finished(self, before: float, limit: int = 500) -> list[str]:
        with self._write.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(sessions.c.session_id)
                    .where(sessions.c.finished_at.is_not(None), sessions.c.finished_at < before)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(events.delete().where(events.c.session_id.in_(ids)))
                conn.execute(phase_results.delete().where(phase_results.c.session_id.in_(ids)))
                conn.execute(sessions.delete().where(sessions.c.session_id.in_(ids)))
            return ids

    # Replicas (orchestrator/fencing.py decides; these are its reads and atomic writes) ---------------------

    def _db_now(self) -> Any:
        """The database's own clock in epoch seconds: replicas on hosts whose clocks differ still agree on it."""
        if self.is_sqlite:
            return (sa.func.julianday("now") - 2440587.5) * 86400.0
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)

    def register_replica(self, replica_id: str, incarnation: str) -> None:
        """Starts a new incarnation of the replica: an older one still running somewhere is fenced from now on."""
        with self._write.begin() as conn:
            now = self._db_now()
            own = replicas.c.replica_id == replica_id
            values = {"last_seen": now, "started_at": now, "incarnation": incarnation}
            if not conn.execute(replicas.update().where(own).values(**values)).rowcount:
                conn.execute(replicas.insert().values(replica_id=replica_id, **values))

    def renew_replica(self, replica_id: str, incarnation: str) -> bool:
        """The heartbeat: False when the incarnation no longer holds (another replica took this one over)."""
        with self._write.begin() as conn:
            renewed = conn.execute(
                replicas.update()
                .where(replicas.c.replica_id == replica_id, replicas.c.incarnation == incarnation)
                .values(last_seen=self._db_now())
            ).rowcount
        return bool(renewed)

    def replica_heartbeats(self, own_id: str) -> tuple[float, dict[str, tuple[float, str]]]:
        """The database's time now, and every other replica's last heartbeat and incarnation."""
        with self._read.connect() as conn:
            now = float(conn.execute(sa.select(self._db_now())).scalar_one())
            rows = conn.execute(
                sa.select(replicas.c.replica_id, replicas.c.last_seen, replicas.c.incarnation).where(
                    replicas.c.replica_id != own_id
                )
            ).all()
        return now, {row.replica_id: (float(row.last_seen), row.incarnation) for row in rows}

    def claim_replica(self, replica_id: str, last_seen: float, incarnation: str, token: str) -> bool:
        """Takes a silent replica over by replacing its incarnation with `token`, unless it has beaten or been
        claimed since (compare-and-set on both): of several survivors exactly one claims it, and the replica,
        should it wake up, finds itself fenced. The caller recovers its work, then calls `forget_replica`."""
        with self._write.begin() as conn:
            taken = conn.execute(
                replicas.update()
                .where(
                    replicas.c.replica_id == replica_id,
                    replicas.c.last_seen == last_seen,
                    replicas.c.incarnation == incarnation,
                )
                .values(incarnation=token)
            ).rowcount
        return bool(taken)

    def forget_replica(self, replica_id: str, token: str | None = None) -> None:
        """Removes a recovered replica's row; with `token`, only while the claim is still this one (the replica
        may have registered again meanwhile, and must keep that row)."""
        with self._write.begin() as conn:
            query = replicas.delete().where(replicas.c.replica_id == replica_id)
            if token is not None:
                query = query.where(replicas.c.incarnation == token)
            conn.execute(query)

    def phase_usage(self, session_id: str, phase: str) -> str | None:
        """The usage JSON saved with a finished phase's completion event, or None."""
        with self._read.connect() as conn:
            value = conn.execute(
                sa.select(phase_results.c.usage_json).where(
                    phase_results.c.session_id == session_id, phase_results.c.phase == phase
                )
            ).scalar_one_or_none()
        return None if value is None else str(value)

    # Reads --------------------------------------------------------------------------------------------------

    def status(self, session_id: str) -> WorkflowStatus | None:
        with self._read.connect() as conn:
            raw = conn.execute(
                sa.select(sessions.c.status_json).where(sessions.c.session_id == session_id)
            ).scalar_one_or_none()
        return None if raw is None else WorkflowStatus.model_validate_json(raw)

    def request(self, session_id: str) -> dict[str, Any] | None:
        with self._read.connect() as conn:
            raw = conn.execute(
                sa.select(sessions.c.request_json).where(sessions.c.session_id == session_id)
            ).scalar_one_or_none()
        return None if raw is None else dict(json.loads(raw))

    def events_after(self, session_id: str, after: int, limit: int = 1000) -> list[WorkflowEvent]:
        with self._read.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.event_json)
                .where(events.c.session_id == session_id, events.c.sequence > after)
                .order_by(events.c.sequence)
                .limit(limit)
            ).scalars()
            return [WorkflowEvent.model_validate_json(raw) for raw in rows]

    def cancel_requested(self, session_ids: Iterable[str]) -> set[str]:
        ids = list(session_ids)
        if not ids:
            return set()
        with self._read.connect() as conn:
            return set(
                conn.execute(
                    sa.select(sessions.c.session_id).where(
                        sessions.c.session_id.in_(ids), sessions.c.cancel_requested.is_(True)
                    )
                ).scalars()
            )

    def queued_session_ids(self, created_before: float | None = None, limit: int | None = None) -> list[str]:
        """QUEUED sessions, oldest first; optionally only those created before a time, and at most `limit`."""
        query = sa.select(sessions.c.session_id).where(sessions.c.state == WorkflowState.QUEUED.value)
        if created_before is not None:
            query = query.where(sessions.c.created_at < created_before)
        query = query.order_by(sessions.c.created_at).limit(limit)
        with self._read.connect() as conn:
            return list(conn.execute(query).scalars())

    def unfinished_session_ids(self, after: str = "", limit: int = 500, tenant: str | None = None) -> list[str]:
        """Queued and running sessions in session id order after `after` (keyset pages), optionally of one tenant:
        what the repair pass checks against the durable engine."""
        active = (WorkflowState.QUEUED.value, WorkflowState.RUNNING.value)
        query = sa.select(sessions.c.session_id).where(sessions.c.state.in_(active), sessions.c.session_id > after)
        if tenant is not None:
            query = query.where(sessions.c.tenant == tenant)
        with self._read.connect() as conn:
            return list(conn.execute(query.order_by(sessions.c.session_id).limit(limit)).scalars())

    def queued_counts(self) -> dict[str, int]:
        """QUEUED sessions by workflow type, in the whole database (every replica): one indexed count."""
        query = (
            sa.select(sessions.c.workflow_type, sa.func.count())
            .where(sessions.c.state == WorkflowState.QUEUED.value)
            .group_by(sessions.c.workflow_type)
        )
        with self._read.connect() as conn:
            return {workflow_type: int(count) for workflow_type, count in conn.execute(query)}

    def mean_duration(self, workflow_type: str, runs: int = 20) -> float | None:
        """Mean seconds from submission to completion over the latest `runs` completed runs of a type."""
        recent = (
            sa.select((sessions.c.finished_at - sessions.c.created_at).label("seconds"))
            .where(sessions.c.workflow_type == workflow_type, sessions.c.state == WorkflowState.COMPLETED.value)
            .order_by(sessions.c.finished_at.desc())
            .limit(runs)
            .subquery()
        )
        with self._read.connect() as conn:
            value = conn.execute(sa.select(sa.func.avg(recent.c.seconds))).scalar_one_or_none()
        return None if value is None else float(value)

    def list(self, query: ListQuery) -> WorkflowPage:
        conditions = [sessions.c.tenant == query.tenant]
        if query.state is not None:
            conditions.append(sessions.c.state == query.state.value)
        if query.workflow_type:
            conditions.append(sessions.c.workflow_type == query.workflow_type)
        if query.page_token:
            created, session_id = _decode_token(query.page_token)
            conditions.append(
                sa.or_(
                    sessions.c.created_at < created,
                    sa.and_(sessions.c.created_at == created, sessions.c.session_id < session_id),
                )
            )
        select = (
            sa.select(sessions.c.status_json, sessions.c.created_at, sessions.c.session_id)
            .where(*conditions)
            .order_by(sessions.c.created_at.desc(), sessions.c.session_id.desc())
            .limit(query.page_size + 1)
        )
        with self._read.connect() as conn:
            rows = conn.execute(select).all()
        token = ""
        if len(rows) > query.page_size:
            rows = rows[: query.page_size]
            token = _encode_token(rows[-1].created_at, rows[-1].session_id)
        summaries = []
        for row in rows:
            status = WorkflowStatus.model_validate_json(row.status_json)
            summaries.append(
                WorkflowSummary(
                    session_id=status.session_id,
                    workflow_type=status.workflow_type,
                    state=status.state,
                    priority=status.priority,
                    progress=status.progress,
                    current_phase=status.current_phase,
                    created_at=status.created_at,
                    updated_at=status.updated_at,
                )
            )
        return WorkflowPage(workflows=summaries, next_page_token=token)

    def integrity_check(self) -> str:
        """SQLite's own integrity check ('ok' when sound); PostgreSQL answers 'ok' when reachable."""
        with self._read.connect() as conn:
            if self.is_sqlite:
                return str(conn.execute(sa.text("PRAGMA integrity_check")).scalar_one())
            conn.execute(sa.text("SELECT 1"))
            return "ok"


def _encode_token(created_at: float, session_id: str) -> str:
    raw = json.dumps([created_at, session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, session_id = json.loads(raw)
        if not isinstance(session_id, str) or not isinstance(created, int | float):
            raise ValueError
        moment = float(created)  # OverflowError for an integer past float's range
        if not math.isfinite(moment):
            raise ValueError
        return moment, session_id
    # Whatever a client puts in the token, it is its mistake: never an INTERNAL error with a traceback.
    except (ValueError, TypeError, OverflowError, RecursionError, json.JSONDecodeError):
        raise InvalidArgument.field("page_token", "is not a token this server issued") from None


def _sqlite_engine(url: str, *, immediate: bool, busy_timeout_seconds: float = 30.0) -> Engine:
    busy_ms = int(busy_timeout_seconds * 1000)
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds}, pool_size=8
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL with synchronous=NORMAL: about 1 ms per commit instead of 16 (see notes/dbos.md); durable across a
        # process crash, which is the failure these tests and deployments care about.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that upgrades to a writer can fail with
        # SQLITE_BUSY immediately, without waiting on busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
