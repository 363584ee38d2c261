"""Celery workers: `celery -A workers worker -Q cpu --concurrency 1`.

The package sets each process's BLAS threads before anything loads numpy, then
exposes the Celery app of workers/app.py, whose `include` loads workers/tasks.py.
"""

from __future__ import annotations

import os
import sys


def _concurrency(argv: list[str]) -> int | None:
    """Read --concurrency/-c from the worker's command line, if given."""
    for index, arg in enumerate(argv):
        if arg.startswith("--concurrency="):
            value = arg.split("=", 1)[1]
        elif arg in ("--concurrency", "-c") and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("-c") and arg[2:].isdigit():
            value = arg[2:]
        else:
            continue
        return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def _set_blas_threads() -> None:
    """Give each training process cores // concurrency BLAS threads (before numpy loads).

    Celery's default concurrency is one process per core, hence one thread each.
    An explicit setting in the environment (OMP_NUM_THREADS ...) wins.
    """
    from service.core.settings import get_settings  # pydantic only: numpy is not loaded yet

    cores = os.cpu_count() or 1
    concurrency = _concurrency(sys.argv) or get_settings().CELERY_CONCURRENCY or cores
    threads = str(max(1, cores // concurrency))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_set_blas_threads()

from workers.app import celery  # noqa: E402  (after the BLAS threads are set)

__all__ = ["celery"]
