"""Read the service's configuration from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "gpu")
# Trainable scalars a network may have (weights and biases): 200 MB of float32, a few
# times that with gradients and Adam's moments. Checked before anything is allocated.
DEFAULT_MAX_PARAMETERS = 50_000_000

# Job recovery settings (docs/jobs.md): name -> default. Seconds unless named otherwise.
JOB_SETTINGS: dict[str, float] = {
    # A running job whose heartbeat is older than this is presumed lost and may be reclaimed.
    "LEASE_TIMEOUT_S": 60.0,
    # How often each worker's reaper looks for lost jobs.
    "REAPER_INTERVAL_S": 10.0,
    # A job still queued after this long is published again (its message may be lost).
    "REQUEUE_QUEUED_AFTER_S": 300.0,
    # Lost leases (or failed starts) after which a job fails instead of running again.
    "MAX_ATTEMPTS": 3,
    # Wall-clock limit of a job from its first start; 0 means none.
    "JOB_TIME_LIMIT_S": 24 * 3600.0,
    # At most one checkpoint write per this many seconds: a resume loses at most this much work.
    "CHECKPOINT_INTERVAL_S": 30.0,
    # At most one progress transaction (the epochs finished since, the heartbeat, the cancel
    # flag) per this many seconds while training: short epochs are not slowed by a write each.
    "PROGRESS_INTERVAL_S": 1.0,
    # Redis only: seconds before an unacknowledged message is delivered again.
    "VISIBILITY_TIMEOUT_S": 3600.0,
}


def _job_settings(env: Any) -> dict[str, Any]:
    """Read JOB_SETTINGS from the environment; a bad value is an error at start, not later."""
    settings: dict[str, Any] = {}
    for name, default in JOB_SETTINGS.items():
        raw = env.get(name)
        try:
            value = float(raw) if raw not in (None, "") else default
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, not {raw!r}")
        settings[name] = int(value) if isinstance(default, int) else value
    if settings["MAX_ATTEMPTS"] < 1:
        raise ValueError("MAX_ATTEMPTS must be at least 1")
    if settings["LEASE_TIMEOUT_S"] <= 0 or settings["REAPER_INTERVAL_S"] <= 0:
        raise ValueError("LEASE_TIMEOUT_S and REAPER_INTERVAL_S must be positive")
    return settings


def _positive_int(env: Any, name: str, default: int) -> int:
    """Read a positive integer setting; a bad value is an error at start, not later."""
    raw = env.get(name)
    try:
        value = int(raw) if raw else default  # int() reads 50_000_000 too
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, not {env.get(name)!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {env.get(name)!r}")
    return value


AUTH_MODES = ("on", "off")
# Per-tenant limits (docs/service.md); a tenant row may override each.
DEFAULT_TENANT_MAX_CONCURRENT_JOBS = 8
DEFAULT_TENANT_MAX_STORED_MB = 10240


def _auth_mode(env: Any) -> str:
    """Read AUTH (on or off); anything else is an error at start, never a silently open API."""
    raw = env.get("AUTH")
    mode = (raw or "on").strip().lower()
    if mode not in AUTH_MODES:
        raise ValueError(f"AUTH must be on or off, not {raw!r}")
    return mode


def load_config(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the configuration, with embedded-mode defaults for what is unset."""
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("DATA_DIR") or "./var").resolve()
    device = (env.get("WORKER_DEVICE") or "cpu").lower()
    if device not in DEVICES:
        raise ValueError(f"WORKER_DEVICE must be cpu or gpu, not {device!r}")
    return {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'backprop.db'}",
        "CELERY_BROKER_URL": env.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.db'}",
        "PORT": int(env.get("PORT") or 8000),
        "MAX_UPLOAD_MB": int(env.get("MAX_UPLOAD_MB") or 512),
        "MAX_PARAMETERS": _positive_int(env, "MAX_PARAMETERS", DEFAULT_MAX_PARAMETERS),
        "WORKER_DEVICE": device,
        "AUTH": _auth_mode(env),
        "TENANT_MAX_CONCURRENT_JOBS": _positive_int(env, "TENANT_MAX_CONCURRENT_JOBS",
                                                    DEFAULT_TENANT_MAX_CONCURRENT_JOBS),
        "TENANT_MAX_STORED_MB": _positive_int(env, "TENANT_MAX_STORED_MB", DEFAULT_TENANT_MAX_STORED_MB),
        **_job_settings(env),
    }


def is_sqlite(url: str) -> bool:
    """Say whether a database URL points at SQLite."""
    return url.startswith("sqlite")
