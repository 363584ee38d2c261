"""Read the service's configuration from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "gpu")


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
        "WORKER_DEVICE": device,
    }


def is_sqlite(url: str) -> bool:
    """Say whether a database URL points at SQLite."""
    return url.startswith("sqlite")
