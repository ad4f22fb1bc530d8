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


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Inbox]] = {}

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
        for inbox in self._subscribers.get(event.session_id, ()):
            inbox.put(event)

    def nudge(self, session_id: str) -> None:
        for inbox in self._subscribers.get(session_id, ()):
            inbox.put(None)

    def watcher_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def close(self) -> None:
        self._subscribers.clear()
