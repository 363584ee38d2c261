"""Structured logs: one JSON object per line, with the request id and the job id when known.

LOG_FORMAT=json|text picks the format; unset, it is json when stderr is not a
terminal (gunicorn, Celery, containers) and text in a terminal (`make run`).
LOG_LEVEL sets the level (INFO by default). Both are settings (service/core/settings.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from service.core.settings import Settings, get_settings

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(ids)s] %(message)s"


class ContextFilter(logging.Filter):
    """Put the current request id and job id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if not hasattr(record, "job_id"):
            record.job_id = JOB_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Format a record as a readable line, with the ids in brackets when known."""

    def format(self, record: logging.LogRecord) -> str:
        request_id, job_id = getattr(record, "request_id", None), getattr(record, "job_id", None)
        record.ids = " ".join(x for x in (request_id and f"request={request_id}", job_id and f"job={job_id}") if x)
        return super().format(record)


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """Return the configured format: LOG_FORMAT, else json unless stderr is a terminal.

    `environ` (a mapping of environment variables) replaces this process's settings.
    """
    settings = get_settings() if environ is None else Settings.from_environ(environ)
    if settings.LOG_FORMAT is not None:
        return settings.LOG_FORMAT
    return "text" if sys.stderr.isatty() else "json"


def configure(fmt: str | None = None, level: str | None = None, stream: IO[str] | None = None) -> None:
    """Send the root logger's output to stderr (or `stream`) in the chosen format (idempotent)."""
    fmt = fmt or log_format()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "backprop_handler", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.backprop_handler = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel((level or get_settings().LOG_LEVEL or "INFO").upper())


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line written inside with this job id."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)
