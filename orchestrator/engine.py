"""The durable engine: the one object the transport talks to.

Submissions go onto a DBOS priority queue; each workflow is a DBOS workflow whose phases are DBOS steps, so a
crash or restart resumes after the last finished phase. Every state change is an event written once, with a
per-session sequence number, to the store; local watchers get it pushed at once, watchers on other replicas
read it from the shared database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetEnqueueOptions, SetWorkflowID

from orchestrator import dbfaults, fencing, logcontext, repair, retry
from orchestrator.agents import Budget, PhaseFailed, PhaseRequest, PhaseResult
from orchestrator.agents.errors import BudgetExceeded
from orchestrator.agents.metering import PhaseUsage
from orchestrator.cache import LruCache
from orchestrator.definitions import Catalog, WorkflowDefinition, configuration_size_problems
from orchestrator.errors import (
    InvalidArgument,
    InvalidStateTransition,
    OrchestratorError,
    ResourceExhausted,
    ServerShuttingDown,
    SessionNotFound,
    StoreUnavailable,
    Unavailable,
)
from orchestrator.events import EventHub
from orchestrator.models import (
    QUEUE_PRIORITY,
    DependencyHealth,
    EventType,
    GeneratedFile,
    HealthReport,
    ListQuery,
    PhaseStatus,
    Review,
    ServingStatus,
    SubmitRequest,
    SubmitResult,
    TestReport,
    Usage,
    WorkflowErrorCode,
    WorkflowEvent,
    WorkflowPage,
    WorkflowResult,
    WorkflowState,
    WorkflowStatus,
)
from orchestrator.outcome import classify_test_report
from orchestrator.progress import EventDraft, apply, failure_data
from orchestrator.settings import WORKFLOW_PROTOCOL_VERSION, Settings
from orchestrator.store import NewSession, Store, fingerprint

logger = logging.getLogger(__name__)

QUEUE_NAME = "orchestrator-workflows"
HEALTH_TTL_SECONDS = 2.0
WRITE_PROBE_TIMEOUT_SECONDS = 3.0
# Below this a phase's result (tens of KiB to a few MiB of events and step output) may not fit: the disk is full.
LOW_DISK_BYTES = 1024 * 1024
ORPHAN_CHECK_SECONDS = 60.0
REPAIR_PAGE = 500
VERSION = "0.1.0"
T = TypeVar("T")


class PhaseRunnerLike(Protocol):
    """What the engine needs from the agents: run one phase, name the model, report provider health."""

    async def run(self, request: PhaseRequest) -> PhaseResult: ...

    def describe_model(self, configuration: dict[str, Any]) -> str: ...

    async def check(self) -> tuple[bool, str]: ...


class EngineObserver(Protocol):
    """Hooks for metrics; the transport supplies one backed by its Prometheus registry."""

    def workflow_submitted(self, workflow_type: str) -> None: ...

    def workflow_started(self, workflow_type: str, queue_wait_seconds: float) -> None: ...

    def workflow_finished(self, workflow_type: str, state: str) -> None: ...

    def phase_finished(self, workflow_type: str, phase: str, outcome: str, seconds: float) -> None: ...

    def phase_reexecuted(self, workflow_type: str, phase: str) -> None:
        """A phase whose model call had started before (a crash, a takeover) starts again: it costs twice."""

    def replica_taken_over(self) -> None:
        """Another replica declared this one dead and took its running workflows over (it was paused or cut off)."""


class _NullObserver:
    def workflow_submitted(self, workflow_type: str) -> None:
        pass

    def workflow_started(self, workflow_type: str, queue_wait_seconds: float) -> None:
        pass

    def workflow_finished(self, workflow_type: str, state: str) -> None:
        pass

    def phase_finished(self, workflow_type: str, phase: str, outcome: str, seconds: float) -> None:
        pass

    def phase_reexecuted(self, workflow_type: str, phase: str) -> None:
        pass

    def replica_taken_over(self) -> None:
        pass


class PhaseCancelled(Exception):
    """Raised out of a phase step whose model call was interrupted by a cancel; never retried."""


# DBOS is a process-wide singleton and its workflow functions are registered at import, so the running engine
# is found through this module-level reference rather than passed in.
_current: Engine | None = None


def _engine() -> Engine:
    if _current is None:
        raise RuntimeError("no engine is running in this process")
    return _current


@DBOS.workflow(name="orchestrator.run_workflow")  # type: ignore[untyped-decorator]
async def run_workflow(session_id: str) -> str:
    return await _engine()._run_workflow(session_id)


async def _phase_step(session_id: str, payload: dict[str, Any], resumed: bool = False) -> dict[str, Any]:
    return await _engine()._run_phase(session_id, payload, resumed)


def _no_retry(exc: BaseException) -> bool:
    return not isinstance(exc, PhaseCancelled | PhaseFailed | BudgetExceeded | OrchestratorError)


class Engine:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        runner: PhaseRunnerLike,
        observer: EngineObserver | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.runner = runner
        self.observer: EngineObserver = observer or _NullObserver()
        self.store = Store(settings.store_url(), busy_timeout_seconds=settings.sqlite_busy_timeout_seconds)
        self.hub = EventHub()
        self._accepting = False
        self._started_at = time.time()
        self._local: dict[str, asyncio.Task[Any]] = {}  # session -> its workflow body running in this process
        self._running: dict[str, asyncio.Task[PhaseResult]] = {}  # session -> in-flight phase call
        self._interrupted: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        self._durations: dict[str, tuple[float, float | None]] = {}
        self._health: tuple[float, HealthReport] | None = None
        self._stopping = False
        self._watches_ended = False
        self._orphans_checked = time.monotonic()
        self._health_lock = asyncio.Lock()
        # A finished workflow's status never changes again, so reads of it skip the database (bounded in size,
        # and in age so a purge on another replica is seen within a minute).
        self._finished: LruCache[WorkflowStatus] = LruCache(capacity=10_000, max_age_seconds=60.0)
        # Our own pools: DBOS replaces (and at destroy shuts down) the loop's default executor. SQLite takes one
        # writer at a time anyway, so its writes queue here instead of spinning on the database lock.
        self._reads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-read")
        self._writes = ThreadPoolExecutor(max_workers=1 if settings.is_sqlite else 8, thread_name_prefix="store-write")
        # The health check's write probe: one thread, so a probe stuck on an unreachable database never piles up.
        self._probes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-probe")
        self._probe: asyncio.Future[None] | None = None
        self.membership = fencing.Membership(
            self.store,
            settings.replica_id,
            heartbeat_seconds=settings.replica_heartbeat_seconds,
            dead_after_seconds=settings.replica_dead_after_seconds,
            shared=not settings.is_sqlite,
            read=self._read,
            write=self._write,
            owner_of=self._workflow_owner,
            on_taken_over=self._taken_over,
        )
        self._claims: dict[str, fencing.Claim] = {}  # session -> the claim its body here runs under

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, functools.partial(fn, *args))

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, functools.partial(fn, *args))

    # Lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        global _current
        if _current is not None:
            raise RuntimeError("an engine is already running in this process (DBOS is a singleton)")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Every tenant's sessions live here: readable by the service user only (generated code runs as another).
        self.settings.data_dir.chmod(0o700)
        await self._write(self.store.create_schema)
        _current = self
        # Before DBOS launches (and may take work at once): a replica killed in its first seconds must already be
        # on the list, or nobody would ever recover its work. A new incarnation: a paused predecessor with this id
        # finds itself taken over when it wakes.
        await self.membership.register()
        config: DBOSConfig = {
            "name": "orchestrator",
            "system_database_url": self.settings.dbos_url(),
            "application_version": WORKFLOW_PROTOCOL_VERSION,
            "executor_id": self.settings.replica_id,
            "max_executor_threads": self.settings.max_executor_threads,
            "log_level": "WARNING",
        }
        if self.settings.is_sqlite:
            config["system_database_engine"] = _dbos_sqlite_engine(
                self.settings.dbos_url(), self.settings.sqlite_busy_timeout_seconds
            )
        try:
            retry.wait_out_full_sqlite_disk_in_dbos()
            DBOS(config=config)
            # launch() recovers this replica's pending workflows; it must run before traffic is taken.
            DBOS.launch()
            limit = self.settings.max_running_workflows
            await DBOS.register_queue_async(
                QUEUE_NAME,
                global_concurrency=limit,
                worker_concurrency=self.settings.max_running_per_replica or limit,
                # Partitioning by workflow type costs a query per partition on every poll: only when asked for.
                partition_concurrency=self.settings.max_running_per_type,
                polling_interval_sec=self.settings.queue_poll_seconds,
                on_conflict="always_update",
            )
            await self._requeue_orphans()
        except BaseException:
            _current = None
            DBOS.destroy()
            raise
        self._background = [
            asyncio.create_task(self._loop(0.25, self._interrupt_cancelled), name="cancel-watch"),
            asyncio.create_task(self._loop(self.settings.replica_heartbeat_seconds, self._heartbeat_duty)),
            asyncio.create_task(self._loop(self.settings.replica_heartbeat_seconds, self._recovery_duty)),
            asyncio.create_task(self._loop(self.settings.purge_interval_seconds, self._purge)),
            asyncio.create_task(self._loop(self.settings.repair_interval_seconds, self._repair_duty), name="repair"),
        ]
        self._accepting = True
        logger.info("engine started: replica %s, database %s", self.settings.replica_id, _safe_url(self.settings))

    def stop_accepting(self) -> None:
        """New submissions get UNAVAILABLE from now on; reads and watches keep working while calls drain."""
        self._accepting = False

    def end_watches(self) -> None:
        """Ends every watch on this replica with ServerShuttingDown, and refuses new ones. A watch can last as
        long as its workflow: a graceful shutdown says in-band that it ended it, so the client resumes elsewhere
        or after the restart, instead of waiting for it or cutting it mid-stream."""
        self._watches_ended = True
        self.hub.nudge_all()

    async def stop(self) -> None:
        global _current
        self._accepting = False
        self._stopping = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.hub.close()
        # Running workflows stay PENDING in DBOS and resume after a restart under the same replica id: their
        # tasks are cancelled here (DBOS leaves a cancelled task's workflow PENDING), never left to run on.
        bodies = list(self._local.values())
        for body in bodies:
            body.cancel()
        if bodies:
            await asyncio.wait(bodies, timeout=5)
        await self._read(DBOS.destroy)
        for body in list(self._local.values()):  # started during the drain
            body.cancel()
        self.store.dispose()
        self._reads.shutdown(wait=False)
        self._writes.shutdown(wait=False)
        self._probes.shutdown(wait=False)
        _current = None
        logger.info("engine stopped")

    async def _loop(self, interval: float, duty: Callable[[], Any]) -> None:
        warned = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                await duty()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage = dbfaults.classify(exc)
                if outage is None:
                    logger.exception("background duty %s failed; retrying in %.1fs", duty.__name__, interval)
                elif time.monotonic() - warned > 10:  # expected while the database is down: a line now and then
                    warned = time.monotonic()
                    logger.warning("background duty %s waits for the database: %s", duty.__name__, outage.message)

    # Commands -----------------------------------------------------------------------------------------------

    @dbfaults.typed
    async def submit(self, request: SubmitRequest) -> SubmitResult:
        if not self._accepting:
            raise Unavailable("the server is not accepting workflows right now (starting or shutting down)")
        definition = self.catalog.get(request.workflow_type)
        self._check_request(request)
        configuration, warnings = definition.validate_configuration(request.configuration)
        now = datetime.now(UTC)
        session_id = str(uuid.uuid4())
        model = self.runner.describe_model(configuration)
        estimate = await self._estimate(definition.name)
        if estimate is None:
            estimate = self._nominal_estimate(definition, configuration)
        status = WorkflowStatus(
            session_id=session_id,
            workflow_type=definition.name,
            state=WorkflowState.QUEUED,
            priority=request.priority,
            phases=[PhaseStatus(name=p.name, agent_role=p.role) for p in definition.phases],
            created_at=now,
            updated_at=now,
            estimated_completion=now + timedelta(seconds=estimate),
            model=model,
            request_id=request.request_id or "",
            tenant=request.tenant,
        )
        stored_request = {
            "requirements": request.requirements,
            "workflow_type": definition.name,
            "configuration": configuration,
            "priority": request.priority.value,
        }
        new = NewSession(
            session_id=session_id,
            tenant=request.tenant,
            request_id=request.request_id,
            fingerprint=fingerprint({**stored_request, "configuration": request.configuration}),
            workflow_type=definition.name,
            request=stored_request,
            status=status,
        )
        first = EventDraft("queued", EventType.WORKFLOW_QUEUED, message=f"queued; model: {model}")
        create = functools.partial(self.store.create_session, max_active=self.settings.max_active_workflows_per_tenant)
        try:
            status, created = await self._write(create, new, first)
        except ResourceExhausted as exc:
            # The cap counts queued and running sessions; one whose workflow ended without a terminal event is
            # neither, so it is finished now and the submission tried once more.
            if exc.code != "TOO_MANY_ACTIVE_WORKFLOWS" or not await self.repair_stranded(tenant=request.tenant):
                raise
            status, created = await self._write(create, new, first)
        if created:
            # The stored first event, recomputed (the fold is pure) so local watchers' history starts complete.
            self.hub.publish(apply(new.status, first, 1, new.status.created_at)[1])
        # Enqueue even for a duplicate: enqueueing under the same workflow id is a no-op in DBOS, and it heals a
        # crash between storing the session and enqueueing it.
        await self._enqueue(status.session_id, status.workflow_type, status.priority)
        if created:
            self.observer.workflow_submitted(definition.name)
        message = f"Workflow {'accepted' if created else 'already accepted for this request_id'}; model: {model}"
        if model == "offline":
            message += (
                " (the built-in offline model writes deterministic scaffolds; configure a real model for real results)"
            )
        if warnings:
            message += f"; {len(warnings)} warning(s), see warnings"
        return SubmitResult(
            session_id=status.session_id,
            state=status.state,
            message=message,
            created_at=status.created_at,
            estimated_completion=status.estimated_completion,
            created=created,
            warnings=warnings,
        )

    def _check_request(self, request: SubmitRequest) -> None:
        problem = configuration_size_problems(
            request.configuration, self.settings.max_configuration_bytes, self.settings.max_configuration_depth
        )
        if problem:
            raise InvalidArgument.field("configuration", problem)

    async def _enqueue(self, session_id: str, workflow_type: str, priority: Any) -> None:
        with (
            SetWorkflowID(session_id),
            SetEnqueueOptions(
                priority=QUEUE_PRIORITY[priority],
                queue_partition_key=workflow_type if self.settings.max_running_per_type else None,
            ),
        ):
            await DBOS.enqueue_workflow_async(QUEUE_NAME, run_workflow, session_id)

    @dbfaults.typed
    async def cancel(self, session_id: str, reason: str = "", tenant: str = "") -> WorkflowStatus:
        status = await self.status(session_id, tenant)
        if status.state.terminal:
            raise InvalidStateTransition(
                f"workflow {session_id} is already {status.state.value}; "
                "only queued or running workflows can be cancelled"
            )
        message = "cancelled by request" + (f": {reason}" if reason else "")
        event, after = await self._emit(
            session_id, EventDraft("cancelled", EventType.WORKFLOW_CANCELLED, message=message), cancel=True
        )
        if event is None:
            assert after is not None
            raise InvalidStateTransition(
                f"workflow {session_id} finished ({after.state.value}) before it could be cancelled"
            )
        # Keeps a queued workflow from ever starting and marks a running one CANCELLED in DBOS.
        try:
            await DBOS.cancel_workflow_async(session_id)
        except Exception:
            logger.warning("DBOS could not cancel %s; its body will see the cancel event", session_id, exc_info=True)
        self._interrupt(session_id)
        assert after is not None
        return after

    # Queries ------------------------------------------------------------------------------------------------

    @dbfaults.typed
    async def status(self, session_id: str, tenant: str = "") -> WorkflowStatus:
        status = self._finished.get(session_id)
        if status is None:
            status = await self._read(self.store.status, session_id)
            if status is not None and status.state.terminal:
                self._finished.put(session_id, status)
        if status is None or status.tenant != tenant:
            raise SessionNotFound(session_id)
        return status

    @dbfaults.typed
    async def list_workflows(self, query: ListQuery) -> WorkflowPage:
        if query.workflow_type:
            self.catalog.get(query.workflow_type)
        return await self._read(self.store.list, query)

    def workflow_types(self) -> list[WorkflowDefinition]:
        return list(self.catalog)

    async def health(self) -> HealthReport:
        """The health report, computed at most once per HEALTH_TTL_SECONDS: Health is unauthenticated, and each
        check pings the database and the model providers (with the server's keys), so a flood of health calls
        must not become a flood of provider calls."""
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_TTL_SECONDS:
            return self._health[1]
        async with self._health_lock:  # one check in flight; the others wait and take its result
            if self._health is None or time.monotonic() - self._health[0] >= HEALTH_TTL_SECONDS:
                self._health = (time.monotonic(), await self._check_health())
            return self._health[1]

    async def _check_health(self) -> HealthReport:
        deps = [await self._database_health()]
        engine_ok = self._accepting and _current is self
        deps.append(
            DependencyHealth(
                name="engine",
                status=ServingStatus.SERVING if engine_ok else ServingStatus.NOT_SERVING,
                message=f"{len(self._local)} workflows running on this replica" if engine_ok else "not accepting work",
            )
        )
        try:
            ok, message = await asyncio.wait_for(self.runner.check(), timeout=5)
        except Exception as exc:
            ok, message = False, f"check failed: {type(exc).__name__}"
        offline = self.runner.describe_model({}) == "offline"
        model_status = (
            ServingStatus.NOT_SERVING if not ok else ServingStatus.DEGRADED if offline else ServingStatus.SERVING
        )
        deps.append(DependencyHealth(name="model_provider", status=model_status, message=message))
        if any(d.status is ServingStatus.NOT_SERVING for d in deps[:2]):
            overall = ServingStatus.NOT_SERVING
        elif any(d.status is not ServingStatus.SERVING for d in deps):
            overall = ServingStatus.DEGRADED
        else:
            overall = ServingStatus.SERVING
        return HealthReport(
            status=overall,
            dependencies=deps,
            version=VERSION,
            replica_id=self.settings.replica_id,
            time=datetime.now(UTC),
        )

    async def _database_health(self) -> DependencyHealth:
        """Whether the database takes writes, not only reads (a full disk or a read-only standby still answers a
        SELECT): a tiny write transaction, at most one per health report, so as cached as the report is. On SQLite
        also the free space of its disk, since a tiny write can still fit in pages SQLite already has."""
        kind = "SQLite" if self.settings.is_sqlite else "PostgreSQL"  # the kind only: health is public
        if self._probe is None or self._probe.done():
            probe = asyncio.get_running_loop().run_in_executor(
                self._probes, self.store.write_probe, self.settings.replica_id
            )
            # A probe that outlives its report is still awaited by nobody: take its outcome, so none is "never
            # retrieved".
            probe.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._probe = probe
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), timeout=WRITE_PROBE_TIMEOUT_SECONDS)
        except TimeoutError:
            message = f"{kind} did not take a write within {WRITE_PROBE_TIMEOUT_SECONDS:g}s"
            return DependencyHealth(name="database", status=ServingStatus.NOT_SERVING, message=message)
        except Exception as exc:
            outage = dbfaults.classify(exc)
            message = f"{kind} cannot take writes: {outage.message if outage else type(exc).__name__}"
            return DependencyHealth(name="database", status=ServingStatus.NOT_SERVING, message=message)
        if self.settings.is_sqlite:
            free = shutil.disk_usage(self.settings.data_dir).free
            if free < LOW_DISK_BYTES:
                message = f"SQLite cannot take writes: its disk is full ({free // 1024} KiB free)"
                return DependencyHealth(name="database", status=ServingStatus.NOT_SERVING, message=message)
        return DependencyHealth(name="database", status=ServingStatus.SERVING, message=f"{kind} takes writes")

    def running_count(self) -> int:
        """Workflows whose body runs on this replica now."""
        return len(self._local)

    def queued_counts(self) -> dict[str, int]:
        """QUEUED workflows by type across all replicas, read from the store now. Blocking: for callers on
        another thread (a metrics scrape), never the event loop. Empty while the engine is not running."""
        if _current is not self:
            return {}
        return self.store.queued_counts()

    @dbfaults.typed
    async def watch(self, session_id: str, after_sequence: int = 0, tenant: str = "") -> AsyncIterator[WorkflowEvent]:
        """Stored events after `after_sequence`, then live ones, with heartbeats while idle; ends after the
        terminal event. Subscribes before reading the store, then drops what it already sent: no gap, no
        duplicate, whichever replica writes the events."""
        if after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        status = await self.status(session_id, tenant)
        # Events are stored before anyone is sent them, so no client has seen a sequence past the stored last one.
        # Following from there would skip the terminal event and never end (found by the fuzz tests).
        if after_sequence > status.last_sequence:
            raise InvalidArgument.field(
                "after_sequence", f"is past the last event of this session ({status.last_sequence})"
            )
        if status.state.terminal and after_sequence == status.last_sequence:
            return _no_events()  # it has ended, and the client has seen its terminal event
        if self._watches_ended:
            raise ServerShuttingDown("this replica is shutting down; watch on another replica or after the restart")
        # Database outages while following are typed too: the watch says in-band why it ended.
        return dbfaults.typed_events(self._follow(status, after_sequence))

    async def _follow(self, status: WorkflowStatus, after: int) -> AsyncIterator[WorkflowEvent]:
        session_id = status.session_id
        last = after
        with self.hub.subscribe(session_id) as inbox:
            idle_since = time.monotonic()
            pending = self.hub.replay(session_id, last)
            if pending is None:
                pending = await self._read(self.store.events_after, session_id, last)
            while True:
                if self._watches_ended:
                    raise ServerShuttingDown(f"this replica is shutting down; resume the watch after sequence {last}")
                for event in pending:
                    if event.sequence <= last:
                        continue
                    if event.sequence > last + 1:
                        # A live event overtook stored ones (another writer): fill the gap from the store first.
                        for missed in await self._read(self.store.events_after, session_id, last):
                            if missed.sequence < event.sequence:
                                last = missed.sequence
                                yield missed
                                if missed.type.terminal:
                                    return
                    if event.sequence != last + 1:
                        continue
                    last = event.sequence
                    idle_since = time.monotonic()
                    yield event
                    if event.type.terminal:
                        return
                # Events of a workflow running on this replica are pushed the moment they are stored; the store
                # is read again only when nudged (the workflow stopped running here), for a heartbeat, or every
                # remote_poll_seconds while the workflow is queued or runs on another replica.
                wait = (
                    self.settings.watch_heartbeat_seconds
                    if session_id in self._local
                    else self.settings.remote_poll_seconds
                )
                heartbeat_due = idle_since + self.settings.watch_heartbeat_seconds - time.monotonic()
                try:
                    first = await asyncio.wait_for(inbox.get(), timeout=max(0.0, min(wait, heartbeat_due)))
                    received = [first, *inbox.drain()]
                    pending = [e for e in received if e is not None]
                    if len(pending) < len(received):
                        pending = await self._read(self.store.events_after, session_id, last)
                except TimeoutError:
                    pending = await self._read(self.store.events_after, session_id, last)
                    if not pending and time.monotonic() - idle_since >= self.settings.watch_heartbeat_seconds:
                        idle_since = time.monotonic()
                        yield await self._heartbeat(status, last)

    async def _heartbeat(self, watched: WorkflowStatus, last: int) -> WorkflowEvent:
        """A heartbeat carries the session's state, progress and phase as the store has them now (the same fold
        a status call reads), so a client that shows a progress bar never drops to 0 while it waits."""
        status = await self._read(self.store.status, watched.session_id) or watched
        return WorkflowEvent(
            session_id=status.session_id,
            sequence=last,
            type=EventType.HEARTBEAT,
            time=datetime.now(UTC),
            phase=status.current_phase,
            state=status.state,
            progress=status.progress,
            message="waiting for the next event",
        )

    # The workflow itself --------------------------------------------------------------------------------------

    async def _run_workflow(self, session_id: str) -> str:
        request = await self._durably("reading the workflow's request", self._reads, self.store.request, session_id)
        if request is None:
            logger.warning("workflow %s has no session (purged?); nothing to run", session_id)
            return "missing"
        task = asyncio.current_task()
        assert task is not None
        # The body runs in a task of its own (DBOS's queue starts it): the ids set here reach every log line of
        # its phases, the agents' included, and no other workflow's.
        logcontext.session_id.set(session_id)
        logcontext.request_id.set("")
        # The durable engine's ownership token of this execution: checked before each phase and model call.
        claim = self._claims[session_id] = self.membership.claim(session_id, _owner_token(session_id))
        fencing.bind(claim)
        self._local[session_id] = task
        try:
            return await self._run_phases(session_id, request)
        finally:
            self._local.pop(session_id, None)
            if self._claims.get(session_id) is claim:
                del self._claims[session_id]
            # Watchers stop waiting for pushes: whatever else happens to this session is written elsewhere.
            self.hub.nudge(session_id)
            self.hub.forget(session_id)
            self.store.forget(session_id)

    async def _run_phases(self, session_id: str, request: dict[str, Any]) -> str:
        """The workflow body. Events that can wait are batched with the next one that cannot (a phase's
        completion goes with the next phase's start): one store transaction per phase instead of two."""
        workflow_type = request["workflow_type"]
        pending = [EventDraft("started", EventType.WORKFLOW_STARTED)]
        try:
            definition = self.catalog.get(workflow_type)
        except OrchestratorError as exc:
            await self._emit_many(session_id, [*pending, _failed(exc.message)])
            return "failed"
        configuration: dict[str, Any] = request["configuration"]
        skip = set(configuration.get("skip_phases", []))
        outputs: dict[str, dict[str, Any]] = {}
        usage = Usage()
        for phase in definition.phases:
            if phase.name in skip:
                pending.append(
                    EventDraft(
                        f"phase:{phase.name}:skipped",
                        EventType.PHASE_SKIPPED,
                        phase=phase.name,
                        message="skipped by configuration",
                    )
                )
                continue
            start = EventDraft(f"phase:{phase.name}:started", EventType.PHASE_STARTED, phase=phase.name)
            claim = fencing.current()
            if claim is not None:
                await claim.verify()  # never start a phase of a workflow another replica has taken over
            written, status = await self._emit_events(session_id, [*pending, start])
            pending = []
            if status is None or status.state.terminal:
                return "interrupted"
            # Started before and not finished: this body replays after a crash or a takeover, and the phase runs
            # again, unless its result was saved just before the crash (then the step returns that).
            resumed = not any(e.type is EventType.PHASE_STARTED and e.phase == phase.name for e in written)
            if resumed and phase.name not in status.phases_completed:
                self.observer.phase_reexecuted(workflow_type, phase.name)
                logger.warning("phase %s of %s runs again: it had started before", phase.name, session_id)
            payload = PhaseRequest(
                session_id=session_id,
                workflow_type=workflow_type,
                phase=phase.name,
                role=phase.role,
                requirements=request["requirements"],
                configuration=configuration,
                inputs={dep: outputs[dep] for dep in phase.depends_on if dep in outputs},
                budget_remaining=_remaining(configuration, usage),
            ).model_dump(mode="json")
            started = time.monotonic()
            try:
                raw = await DBOS.run_step_async(
                    {
                        "name": f"phase:{phase.name}",
                        "retries_allowed": phase.max_attempts > 1,
                        "max_attempts": phase.max_attempts,
                        "interval_seconds": 1.0,
                        "backoff_rate": 2.0,
                        "should_retry": _no_retry,
                        "timeout_seconds": phase.timeout_seconds,
                    },
                    _phase_step,
                    session_id,
                    payload,
                    resumed,
                )
            except PhaseCancelled:
                return "cancelled"
            except Exception as exc:
                if await self._is_cancelled(session_id):
                    return "cancelled"
                outage = dbfaults.classify(exc)
                if outage is not None:
                    # DBOS could not read or record the step, even after waiting out what it can: the phase did not
                    # fail, its record did. The workflow ends in error, and the repair pass fails it with this reason.
                    message = f"the result of phase {phase.name} could not be recorded: {outage.message}"
                    raise StoreUnavailable(message) from exc
                reason = _phase_error(exc, phase.max_attempts, phase.timeout_seconds)
                self.observer.phase_finished(workflow_type, phase.name, "failed", time.monotonic() - started)
                failed_phase = EventDraft(
                    f"phase:{phase.name}:failed",
                    EventType.PHASE_FAILED,
                    phase=phase.name,
                    message=reason,
                    usage=_usage_of_failure(exc),
                )
                failed = _failed(f"phase {phase.name} failed: {reason}", _failure_code(exc))
                await self._emit_many(session_id, [failed_phase, failed])
                return "failed"
            result = PhaseResult.model_validate(raw)
            completed, phase_usage = _phase_completed(phase.name, result)
            usage = usage.plus(phase_usage)
            outputs[phase.name] = result.output
            self.observer.phase_finished(workflow_type, phase.name, "completed", time.monotonic() - started)
            pending = [completed]
            over = _over_budget(configuration, usage)
            if over:
                await self._emit_many(session_id, [*pending, _failed(over, WorkflowErrorCode.BUDGET_EXCEEDED)])
                return "failed"
        final = assemble_result(definition, outputs, usage)
        done = EventDraft("completed", EventType.WORKFLOW_COMPLETED, message=_completed_message(final), result=final)
        await self._emit_many(session_id, [*pending, done])
        self._durations.pop(workflow_type, None)
        return "completed"

    async def _run_phase(self, session_id: str, payload: dict[str, Any], resumed: bool = False) -> dict[str, Any]:
        """The phase step: the model's work, saved with the phase's completion event in one transaction before
        it returns, so a crash before the durable engine records the step loses nothing that cost money."""
        request = PhaseRequest.model_validate(payload)
        if resumed and (saved := await self._saved_phase(session_id, request.phase)) is not None:
            logger.info("phase %s of %s had finished and saved its result; not run again", request.phase, session_id)
            return saved.model_dump(mode="json")
        claim = fencing.current()
        if claim is not None:
            await claim.check()
        call = asyncio.ensure_future(self.runner.run(request))
        self._running[session_id] = call
        try:
            result = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if session_id in self._interrupted and not (current and current.cancelling()):
                raise PhaseCancelled(f"phase {request.phase} interrupted by cancel") from None
            raise
        finally:
            self._running.pop(session_id, None)
            self._interrupted.discard(session_id)
        completed, _ = _phase_completed(request.phase, result)
        save = functools.partial(
            self.store.append_many, session_id, [completed], phase_usage=(request.phase, result.usage.model_dump_json())
        )

        async def verified_save() -> tuple[list[WorkflowEvent], WorkflowStatus | None]:
            # Before every attempt, also one after a database outage: a replica that was taken over meanwhile
            # does not finish the phase.
            if claim is not None:
                await claim.verify()
            return await asyncio.get_running_loop().run_in_executor(self._writes, save)

        limit = self.settings.database_retry_limit_seconds
        events, status = await retry.wait_out(verified_save, what="saving a phase's result", limit_seconds=limit)
        self._published(events, status)
        return result.model_dump(mode="json")

    async def _saved_phase(self, session_id: str, phase: str) -> PhaseResult | None:
        """The result a finished phase saved with its completion event, or None."""
        usage = await self._read(self.store.phase_usage, session_id, phase)
        status = await self._read(self.store.status, session_id) if usage is not None else None
        if usage is None or status is None or phase not in status.partial_results:
            return None
        return PhaseResult(output=status.partial_results[phase], usage=PhaseUsage.model_validate_json(usage))

    async def _workflow_owner(self, session_id: str) -> str | None:
        return await self._read(_stored_owner, session_id)

    async def _emit(
        self, session_id: str, draft: EventDraft, *, cancel: bool = False
    ) -> tuple[WorkflowEvent | None, WorkflowStatus | None]:
        append = functools.partial(self.store.append_many, cancel=cancel)
        events, status = await self._write(append, session_id, [draft])
        self._published(events, status)
        return (events[0] if events else None), status

    async def _emit_many(self, session_id: str, drafts: list[EventDraft]) -> WorkflowStatus | None:
        """The workflow body's writes: a database outage is waited out, so it never ends a workflow early."""
        return (await self._emit_events(session_id, drafts))[1]

    async def _emit_events(
        self, session_id: str, drafts: list[EventDraft]
    ) -> tuple[list[WorkflowEvent], WorkflowStatus | None]:
        """`_emit_many`, also returning the events it wrote (drafts already stored are not among them)."""
        append = self.store.append_many
        events, status = await self._durably(
            "recording the workflow's progress", self._writes, append, session_id, drafts
        )
        self._published(events, status)
        return events, status

    async def _durably(self, what: str, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on `pool`, repeated while the database is unavailable, up to database_retry_limit_seconds
        (orchestrator/retry.py). Only for the workflow body: a client's call gets UNAVAILABLE at once instead."""
        loop, call = asyncio.get_running_loop(), functools.partial(fn, *args)
        limit = self.settings.database_retry_limit_seconds
        return await retry.wait_out(lambda: loop.run_in_executor(pool, call), what=what, limit_seconds=limit)

    def _published(self, events: list[WorkflowEvent], status: WorkflowStatus | None) -> None:
        """Pushes stored events to local watchers and tells the observer about starts and ends."""
        for event in events:
            self.hub.publish(event)
            if status is None:
                continue
            if event.type is EventType.WORKFLOW_STARTED:
                self.observer.workflow_started(status.workflow_type, (event.time - status.created_at).total_seconds())
            elif event.type.terminal:
                self.observer.workflow_finished(status.workflow_type, event.state.value)

    async def _is_cancelled(self, session_id: str) -> bool:
        requested = self.store.cancel_requested
        return bool(await self._durably("checking for a cancel", self._reads, requested, [session_id]))

    def _interrupt(self, session_id: str) -> None:
        call = self._running.get(session_id)
        if call is not None and not call.done():
            self._interrupted.add(session_id)
            call.cancel()
            logger.info("interrupted the running phase of %s", session_id)

    # Background duties -------------------------------------------------------------------------------------

    async def _interrupt_cancelled(self) -> None:
        """Cancels arriving at another replica mark the session; the replica running it interrupts it here."""
        if self._running:
            for session_id in await self._read(self.store.cancel_requested, list(self._running)):
                self._interrupt(session_id)

    async def _heartbeat_duty(self) -> None:
        """Its own task, so a slow recovery never delays it past replica_dead_after_seconds."""
        await self.membership.heartbeat()

    def _taken_over(self) -> None:
        """Declared dead while alive (paused or cut off longer than replica_dead_after_seconds): another replica
        has re-enqueued this one's workflows. Those it took stop here at once; the others go on."""
        self.observer.replica_taken_over()
        self._background.append(asyncio.create_task(self._hand_back(), name="hand-back"))

    async def _hand_back(self) -> None:
        handed = 0
        for session_id, claim in list(self._claims.items()):
            body = self._local.get(session_id)
            if body is not None and not body.done() and not await claim.owned():
                body.cancel()
                handed += 1
        logger.error("handed back %d running workflows that another replica took over", handed)

    async def _recovery_duty(self) -> None:
        if time.monotonic() - self._orphans_checked > ORPHAN_CHECK_SECONDS:
            self._orphans_checked = time.monotonic()
            # The start-up pass covers this replica's own crashes; this one covers a replica that never returns.
            await self._requeue_orphans(created_before=time.time() - ORPHAN_CHECK_SECONDS, limit=100)
        for dead, last_seen, incarnation in await self.membership.dead_replicas():
            token = await self.membership.take_over(dead, last_seen, incarnation)
            if token is None:
                continue  # it beat (or another survivor took it) since it was watched
            logger.warning("replica %s is silent; recovering its pending workflows here", dead)
            # DBOS's open-source core has no failover of its own; this private call re-enqueues the dead
            # executor's PENDING workflows, and the queue's atomic dequeue admits exactly one runner for each.
            # Only after it succeeded is the replica forgotten; if it fails, its row keeps the takeover token, and
            # a survivor takes it over again after another dead interval.
            handles = await self._read(DBOS._recover_pending_workflows, [dead])
            await self._write(self.store.forget_replica, dead, token)
            logger.warning("re-enqueued %d workflows of replica %s", len(handles), dead)

    async def _repair_duty(self) -> None:
        await self.repair_stranded()

    async def repair_stranded(self, tenant: str | None = None) -> int:
        """Finishes the sessions (of one tenant, or all) whose durable workflow ended without a terminal event
        (orchestrator/repair.py); returns how many it finished. Safe to run anywhere at any time: each terminal
        event is keyed as the body's own, and nothing is written once a session has finished."""
        finished, after = 0, ""
        while ids := await self._read(self.store.unfinished_session_ids, after, REPAIR_PAGE, tenant):
            after = ids[-1]
            for ended in await repair.ended_workflows(ids):
                drafts = await self._completed_from_steps(ended.session_id) if ended.completed else None
                drafts = drafts or [repair.terminal_event(ended)]
                events, status = await self._write(self.store.append_many, ended.session_id, drafts)
                self._published(events, status)
                if events:
                    finished += 1
                    logger.warning(
                        "session %s: its workflow ended (%s) without a final event; repaired: %s",
                        ended.session_id,
                        ended.status,
                        events[-1].message,
                    )
            if len(ids) < REPAIR_PAGE:
                break
        return finished

    async def _completed_from_steps(self, session_id: str) -> list[EventDraft] | None:
        """The events a workflow that returned "completed" wrote before it did, rebuilt from its recorded phase
        results (so nothing runs again); None when they cannot be rebuilt."""
        request = await self._read(self.store.request, session_id)
        if request is None or request["workflow_type"] not in self.catalog.names():
            return None
        definition = self.catalog.get(request["workflow_type"])
        steps = await DBOS.list_workflow_steps_async(session_id)
        recorded = {step["function_name"]: step["output"] for step in steps if step["error"] is None}
        drafts, outputs, usage = [], {}, Usage()
        for phase in definition.phases:
            raw = recorded.get(f"phase:{phase.name}")
            if isinstance(raw, dict):
                result = PhaseResult.model_validate(raw)
                draft, used = _phase_completed(phase.name, result)
                drafts.append(draft)
                outputs[phase.name] = result.output
                usage = usage.plus(used)
        final = assemble_result(definition, outputs, usage)
        done = EventDraft("completed", EventType.WORKFLOW_COMPLETED, message=_completed_message(final), result=final)
        return [*drafts, done]

    async def _purge(self) -> None:
        before = time.time() - self.settings.retention_hours * 3600
        while ids := await self._write(self.store.purge_finished, before):
            for session_id in ids:
                self._finished.pop(session_id)
            with contextlib.suppress(Exception):
                await DBOS.delete_workflows_async(ids)
            logger.info("purged %d finished sessions older than %.0f hours", len(ids), self.settings.retention_hours)

    async def _requeue_orphans(self, created_before: float | None = None, limit: int | None = None) -> None:
        """A crash (or a failed enqueue) between storing a session and enqueueing it leaves it QUEUED with no DBOS
        workflow; enqueueing under the session's id again is a no-op for the ones that have one."""
        for session_id in await self._read(self.store.queued_session_ids, created_before, limit):
            status = await self._read(self.store.status, session_id)
            if status is not None:
                await self._enqueue(session_id, status.workflow_type, status.priority)

    def _nominal_estimate(self, definition: WorkflowDefinition, configuration: dict[str, Any]) -> float:
        """Seconds a type's run should take before any run of it finished: its phases that will run, each at
        the operator's nominal_phase_seconds. The phase definitions carry only timeouts, which are upper
        bounds; a setting lets an operator whose models are much faster or slower say so."""
        skipped = configuration.get("skip_phases", [])
        running = [p for p in definition.phases if p.name not in skipped]
        return len(running) * self.settings.nominal_phase_seconds

    async def _estimate(self, workflow_type: str) -> float | None:
        cached = self._durations.get(workflow_type)
        if cached is not None and time.monotonic() - cached[0] < 10:
            return cached[1]
        value = await self._read(self.store.mean_duration, workflow_type)
        self._durations[workflow_type] = (time.monotonic(), value)
        return value

    async def purge_now(self) -> None:
        """Runs the retention purge at once (operators, tests)."""
        await self._purge()


def assemble_result(definition: WorkflowDefinition, outputs: dict[str, dict[str, Any]], usage: Usage) -> WorkflowResult:
    """The documented result from the role outputs: the tester's final files win over the engineer's."""
    by_role = {phase.role: outputs[phase.name] for phase in definition.phases if phase.name in outputs}
    code = by_role.get("tester", {}).get("files") or by_role.get("engineer", {}).get("files") or []
    tests = by_role.get("tester", {}).get("test_files") or []
    report = by_role.get("tester", {}).get("report")
    review = by_role.get("reviewer")
    return WorkflowResult(
        generated_code=[GeneratedFile.model_validate(f) for f in [*code, *tests]],
        test_report=TestReport.model_validate(report) if report else None,
        review=Review.model_validate(review, strict=False) if review else None,
        documentation=str(by_role.get("documenter", {}).get("documentation", "")),
        usage=usage,
        outputs=outputs,
    )


def _owner_token(workflow_id: str) -> str | None:
    """The durable engine's ownership token of the execution running in this task (DBOS writes a fresh one at
    each dequeue, also the one after a takeover); None outside a workflow."""
    from dbos._context import current_owner_xid  # private: dbos is pinned, and the fencing tests cover it

    token: str | None = current_owner_xid(workflow_id)
    return token


def _stored_owner(workflow_id: str) -> str | None:
    """The ownership token the durable engine has stored for a workflow now (blocking: a database read)."""
    from dbos._dbos import _get_dbos_instance  # private, as above

    owner: str | None = _get_dbos_instance()._sys_db.get_workflow_owner(workflow_id)
    return owner


def _phase_completed(name: str, result: PhaseResult) -> tuple[EventDraft, Usage]:
    """A finished phase's event, and what it used."""
    used = Usage(
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        requests=result.usage.requests,
        cost_usd=result.usage.cost_usd,
        models=[result.usage.model],
    )
    message = _phase_message(result.output)
    draft = EventDraft(
        f"phase:{name}:completed",
        EventType.PHASE_COMPLETED,
        phase=name,
        message=message,
        data=result.output,
        usage=used,
    )
    return draft, used


def _completed_message(result: WorkflowResult) -> str:
    """Says plainly when the generated tests failed or never ran: "completed" alone would read as a clean run."""
    if result.test_report is None:
        return "workflow completed"
    outcome = classify_test_report(result.test_report)
    return f"workflow completed{'; ' if outcome.kind == 'passed' else ', but '}{outcome.message}"


def _phase_message(output: dict[str, Any]) -> str:
    """A phase that ran tests (the tester's) says how they went in its completion event."""
    report = output.get("report")
    return classify_test_report(TestReport.model_validate(report)).message if isinstance(report, dict) else ""


def _usage_of_failure(exc: BaseException) -> Usage | None:
    """What a failed phase consumed before it failed, when the agents could tell (tokens spent still count)."""
    cause: BaseException | None = exc
    while cause is not None:
        used = getattr(cause, "usage", None)
        if isinstance(cause, PhaseFailed | BudgetExceeded) and used is not None:
            return Usage(
                input_tokens=used.input_tokens,
                output_tokens=used.output_tokens,
                requests=used.requests,
                cost_usd=used.cost_usd,
                models=[used.model],
            )
        cause = cause.__cause__
    return None


def _failed(message: str, code: WorkflowErrorCode | None = None) -> EventDraft:
    data = failure_data(code) if code is not None else None
    return EventDraft("failed", EventType.WORKFLOW_FAILED, message=message, data=data)


def _failure_code(exc: BaseException) -> WorkflowErrorCode:
    """budget_exceeded when the budget is why the phase failed (DBOS may wrap the agents' error), else
    phase_failed."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BudgetExceeded):
            return WorkflowErrorCode.BUDGET_EXCEEDED
        cause = cause.__cause__
    return WorkflowErrorCode.PHASE_FAILED


def _remaining(configuration: dict[str, Any], usage: Usage) -> Budget | None:
    tokens, usd = configuration.get("budget_tokens"), configuration.get("budget_usd")
    if tokens is None and usd is None:
        return None
    return Budget(
        tokens=None if tokens is None else max(0, tokens - usage.input_tokens - usage.output_tokens),
        usd=None if usd is None else max(0.0, usd - usage.cost_usd),
    )


def _over_budget(configuration: dict[str, Any], usage: Usage) -> str | None:
    tokens, usd = configuration.get("budget_tokens"), configuration.get("budget_usd")
    used = usage.input_tokens + usage.output_tokens
    if tokens is not None and used > tokens:
        return f"token budget exceeded: used {used} tokens of {tokens}"
    if usd is not None and usage.cost_usd > usd:
        return f"cost budget exceeded: spent ${usage.cost_usd:.4f} of ${usd:.4f}"
    return None


def _phase_error(exc: BaseException, attempts: int, timeout: float) -> str:
    root: BaseException = exc
    # DBOS wraps the last error of an exhausted retry loop; the user wants the first typed cause in the chain.
    while not isinstance(root, PhaseFailed | BudgetExceeded | OrchestratorError) and root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, PhaseFailed | BudgetExceeded | OrchestratorError):
        return str(root)
    name = type(root).__name__
    if "Timeout" in name or isinstance(root, TimeoutError):
        return f"timed out after {timeout:g}s (attempts: {attempts})"
    logger.error("phase failed with an unexpected error", exc_info=exc)
    return f"internal error ({name}) after {attempts} attempt(s); see the server log"


def _safe_url(settings: Settings) -> str:
    if settings.is_sqlite:
        return f"sqlite:{settings.data_dir}"
    return sa.engine.make_url(settings.store_url()).render_as_string(hide_password=True)


def _dbos_sqlite_engine(url: str, busy_timeout_seconds: float = 30.0) -> sa.Engine:
    """DBOS's own SQLite settings plus WAL and synchronous=NORMAL: about 1 ms per step instead of 16."""
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


async def _no_events() -> AsyncIterator[WorkflowEvent]:
    return
    yield  # an async generator that yields nothing
