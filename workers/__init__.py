"""Celery workers: `celery -A workers worker -Q cpu --concurrency 1`."""

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
    An explicit setting in the environment wins.
    """
    cores = os.cpu_count() or 1
    concurrency = _concurrency(sys.argv) or int(os.environ.get("CELERY_CONCURRENCY", "0") or 0) or cores
    threads = str(max(1, cores // concurrency))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_set_blas_threads()

import logging  # noqa: E402
import multiprocessing  # noqa: E402
from typing import Any  # noqa: E402

from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutting_down  # noqa: E402

from service.config import load_config  # noqa: E402  (after the BLAS threads are set)
from service.queue import CeleryJobQueue, make_celery  # noqa: E402

log = logging.getLogger(__name__)

celery = make_celery(load_config())
# How the task, a stopping worker and the reaper hand a job id to the cpu or gpu queue.
publish_job = CeleryJobQueue({}, app=celery).publish

# Set when the worker shuts down (SIGTERM): shared memory made before the pool forks,
# so the training loop in a pool process sees the main process's decision and hands
# its job back instead of being killed mid-epoch or holding up the shutdown.
_shutting_down = multiprocessing.RawValue("b", 0)


def shutdown_requested() -> bool:
    """Say whether this worker is shutting down."""
    return bool(_shutting_down.value)


from workers import tasks  # noqa: E402,F401  (registers train_job)


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_kwargs: object) -> None:
    """Log as the API does (service/logs.py) instead of Celery's own format."""
    from service import logs

    celery_level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    logs.configure(level=os.environ.get("LOG_LEVEL") or celery_level)

# The main process's reaper (started when the worker is ready) and its database engine.
_reaper: Any = None
_reaper_engine: Any = None


@worker_process_init.connect
def _init_pool_process(**_kwargs: object) -> None:
    """Load the training code in each pool process before its first job."""
    if _reaper_engine is not None:  # forked after the reaper started: leave its connections alone
        _reaper_engine.dispose(close=False)
    import workers.training  # noqa: F401


@worker_shutting_down.connect
def _tell_pool_processes(**_kwargs: object) -> None:
    """Ask running jobs to hand themselves back (a warm shutdown would wait for them); stop reaping."""
    _shutting_down.value = 1
    if _reaper is not None:
        _reaper.stop()


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    """Start this worker's reaper thread in the main process (docs/jobs.md: why not Celery beat)."""
    global _reaper_engine, _reaper
    from service.db import make_engine, make_session_factory
    from workers.lease import JobSettings, Reaper

    config = load_config()
    _reaper_engine = make_engine(config["DATABASE_URL"])
    _reaper = Reaper(make_session_factory(_reaper_engine), publish_job,
                     JobSettings.from_config(config))
    _reaper.start()
    log.info("reaper started: every %gs, lease timeout %gs", config["REAPER_INTERVAL_S"],
             config["LEASE_TIMEOUT_S"])
