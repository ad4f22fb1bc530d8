"""The benchmark's 6-phase no-op workflow as a LangGraph graph: six sequential nodes, each stamping when it
finished (as bench.server's model stamps done_at), after an optional per-node delay from the input.

Served by `langgraph dev` from a copy of this file; it imports nothing from this project for that reason."""

from __future__ import annotations

import asyncio
import operator
import os
import time
from typing import Annotated, Any, TypedDict

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph

PHASES = ["requirements", "design", "implementation", "tests", "review", "documentation"]
CALLS = os.environ.get("BENCH_CALLS_FILE")


class State(TypedDict, total=False):
    delay: float
    done_at: float
    phases: Annotated[list[str], operator.add]


def _node(phase: str) -> Any:
    async def run(state: State) -> dict[str, Any]:
        if state.get("delay"):
            await asyncio.sleep(state["delay"])
        if CALLS:  # the kill -9 run counts phases completed twice from these lines
            with open(CALLS, "a") as calls:  # noqa: ASYNC230 - a short append, only in the kill run
                calls.write(f"{get_config()['configurable']['thread_id']} {phase}\n")
        return {"done_at": time.time(), "phases": [phase]}

    return run


builder = StateGraph(State)
previous = START
for name in PHASES:
    builder.add_node(name, _node(name))
    builder.add_edge(previous, name)
    previous = name
builder.add_edge(previous, END)
graph = builder.compile()
