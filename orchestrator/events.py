"""In-process fan-out of stored events to the watchers on this replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.models import WorkflowEvent


class Inbox:
    """One watcher's queue. Unbounded: a session has a few dozen events at most, and the watcher drops
    what it already sent, so a slow watcher costs memory briefly, never correctness. None is a nudge: read
    the store, events may have been written where this inbox cannot hear them."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[WorkflowEvent | None] = asyncio.Queue()

    async def get(self) -> WorkflowEvent | None:
        return await self._queue.get()

    def drain(self) -> list[WorkflowEvent | None]:
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def put(self, event: WorkflowEvent | None) -> None:
        self._queue.put_nowait(event)


MAX_HISTORIES = 10_000


class EventHub:
    """Fan-out of stored events to local watchers, plus the history of each session this replica accepted and
    is running, so a crowd of watchers joining at once replays from memory instead of the database."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Inbox]] = {}
        self._history: dict[str, list[WorkflowEvent]] = {}

    @contextmanager
    def subscribe(self, session_id: str) -> Iterator[Inbox]:
        inbox = Inbox()
        self._subscribers.setdefault(session_id, set()).add(inbox)
        try:
            yield inbox
        finally:
            subscribers = self._subscribers.get(session_id)
            if subscribers is not None:
                subscribers.discard(inbox)
                if not subscribers:
                    del self._subscribers[session_id]

    def publish(self, event: WorkflowEvent) -> None:
        self._remember(event)
        for inbox in self._subscribers.get(event.session_id, ()):
            inbox.put(event)

    def _remember(self, event: WorkflowEvent) -> None:
        # Only a history that is complete from the first event is worth keeping; a finished session's events
        # are read from the store by whoever comes later.
        history = self._history.get(event.session_id)
        if event.sequence == 1:
            self._history[event.session_id] = [event]
            while len(self._history) > MAX_HISTORIES:  # sessions accepted here but run elsewhere age out
                del self._history[next(iter(self._history))]
        elif history is not None and event.sequence == history[-1].sequence + 1:
            history.append(event)
        elif history is not None:
            del self._history[event.session_id]  # another replica wrote in between: not complete any more
        if event.type.terminal:
            self._history.pop(event.session_id, None)

    def forget(self, session_id: str) -> None:
        self._history.pop(session_id, None)

    def replay(self, session_id: str, after: int) -> list[WorkflowEvent] | None:
        """The session's events after `after` from memory, or None when this replica does not have them all."""
        history = self._history.get(session_id)
        if history is None:
            return None
        return [event for event in history if event.sequence > after]

    def nudge(self, session_id: str) -> None:
        for inbox in self._subscribers.get(session_id, ()):
            inbox.put(None)

    def nudge_all(self) -> None:
        """Wakes every watcher on this replica (a shutdown ending them)."""
        for inboxes in self._subscribers.values():
            for inbox in inboxes:
                inbox.put(None)

    def close(self) -> None:
        self._subscribers.clear()
        self._history.clear()
