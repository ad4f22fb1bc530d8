"""Finding sessions whose durable workflow ended without a terminal event, and saying how each ended.

A session's state is a fold over its events; whether its body still runs is DBOS's to say. When the body ended
without writing a terminal event (an error escaped it: the database stayed unavailable past the retry limit, or a
bug; or an operator cancelled it in DBOS itself), the session would show `running` or `queued` forever, its
watchers would get heartbeats only, and it would count against its tenant's active cap. The engine's repair duty
finds such sessions here and writes the terminal event the body could not:

- ERROR, or MAX_RECOVERY_ATTEMPTS_EXCEEDED: failed, with the recorded error as the reason;
- CANCELLED: cancelled;
- SUCCESS: the body returned, so its outcome is recorded: a completed workflow is finished from its recorded phase
  results (the engine rebuilds them), anything else is failed.

They are finished, not resumed: DBOS 3.4 resumes only PENDING, ENQUEUED and CANCELLED workflows (its
resume_workflows skips SUCCESS and ERROR), and a session's workflow id is its session id, so a fork would be a
different session. A workflow still PENDING or ENQUEUED is left alone: it runs, or recovery resumes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dbos import DBOS

from orchestrator import dbfaults
from orchestrator.errors import OrchestratorError
from orchestrator.models import EventType, WorkflowErrorCode
from orchestrator.progress import EventDraft, failure_data

logger = logging.getLogger(__name__)

ENDED = ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED", "CANCELLED", "SUCCESS")


@dataclass(frozen=True)
class Ended:
    """A session's durable workflow that has ended: DBOS's status, and what the body returned or raised."""

    session_id: str
    status: str
    output: Any
    error: Any

    @property
    def completed(self) -> bool:
        """The body returned after writing a completed workflow (its return value says how it ended)."""
        return self.status == "SUCCESS" and self.output == "completed"


async def ended_workflows(session_ids: list[str]) -> list[Ended]:
    """Of these sessions, the ones whose durable workflow has ended (one query)."""
    if not session_ids:
        return []
    found = await DBOS.list_workflows_async(
        workflow_ids=session_ids, status=list(ENDED), load_input=False, load_output=True
    )
    return [Ended(w.workflow_id, str(w.status), w.output, w.error) for w in found]


def terminal_event(ended: Ended) -> EventDraft:
    """The terminal event of a session whose workflow ended without one (all but a completed one). Its key is the
    one the body would have used, so if the body did write it meanwhile, this one is skipped."""
    if ended.status == "CANCELLED":
        return EventDraft(
            "cancelled",
            EventType.WORKFLOW_CANCELLED,
            message="cancelled in the durable engine (not through this API); the workflow stopped there",
        )
    if ended.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED":
        why = "it was recovered after a crash too many times without finishing"
    elif ended.status == "SUCCESS":
        why = f"its run ended ({ended.output}) without recording its outcome"
    else:
        why = reason(ended.error)
    return EventDraft(
        "failed",
        EventType.WORKFLOW_FAILED,
        message=f"the workflow stopped before it finished: {why}",
        data=failure_data(WorkflowErrorCode.WORKFLOW_FAILED),
    )


def reason(error: Any) -> str:
    """What a client may read about why a workflow's body raised: our own errors and database outages say it in
    words meant for clients; anything else is named by type only (its text may hold internals), and logged."""
    if isinstance(error, OrchestratorError):
        return error.message
    if isinstance(error, BaseException):
        outage = dbfaults.classify(error)
        if outage is not None:
            return outage.message
        logger.error("a workflow ended with an unexpected error", exc_info=error)
        return f"internal error ({type(error).__name__}); see the server log"
    if error is None:
        return "no error was recorded"
    return "internal error (not readable); see the server log"  # DBOS could not unpickle it and gives its text
