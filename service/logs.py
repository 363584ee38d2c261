"""Structured logs: one JSON object per line, with the request id and the job id when known.

LOG_FORMAT=json|text picks the format; unset, it is json when stderr is not a
terminal (gunicorn, Celery, containers) and text in a terminal (`make run`).
LOG_LEVEL sets the level (INFO by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

from flask import Flask, Response, g, request

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed into headers and logs: printable, short, no separators that could forge lines.
GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
FORMATS = ("json", "text")
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
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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


def log_format(environ: Any = None) -> str:
    """Return the configured format: LOG_FORMAT, else json unless stderr is a terminal."""
    env = os.environ if environ is None else environ
    chosen = (env.get("LOG_FORMAT") or "").lower()
    if chosen in FORMATS:
        return chosen
    if chosen:
        raise ValueError(f"LOG_FORMAT must be json or text, not {chosen!r}")
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
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "INFO").upper())


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line written inside with this job id."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


def request_id_from(header: str | None) -> str:
    """Return the client's request id when it is well formed, else a new one."""
    if header and GOOD_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def init_app(app: Flask) -> None:
    """Give every request an id (X-Request-ID in, or a new one), log with it, and echo it."""

    @app.before_request
    def _take_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_id_token = REQUEST_ID.set(g.request_id)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response

    @app.teardown_request
    def _forget_request_id(_error: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                REQUEST_ID.reset(token)
            except ValueError:  # set in another context (a streamed response's generator); harmless
                REQUEST_ID.set(None)
