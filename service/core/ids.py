"""Identifiers and timestamps shared by the API and the workers."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    """Return a new id that sorts by creation time (microseconds, then random)."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(4)}"


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """Format a datetime as ISO 8601 UTC with a Z suffix (SQLite gives naive UTC back)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
