"""Log configuration for `main`: one JSON object per line, with the request and session ids of the call."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from orchestrator import logcontext


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = logcontext.request_id.get()
        record.session_id = logcontext.session_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "session_id"):
            if value := getattr(record, key, ""):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s %(session_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # DBOS logs a warning or an ERROR traceback for every cancelled workflow task (a cancel, a shutdown): expected
    # here, not an error of ours. Its real failures surface through the engine.
    logging.getLogger("dbos").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
