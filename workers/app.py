"""The Celery app of the workers, its shutdown flag, and the signals that start each process.

`include` names workers.tasks: Celery loads it as the worker starts, so nothing
here imports the tasks and there is no import cycle. Importing this module loads
no numpy: the Celery main process (which runs the reaper) never trains.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutting_down

from service.core import logs
from service.core.db.engine import make_engine, make_session_factory
from service.core.jobs.publishing import CeleryJobQueue, celery_settings
from service.core.settings import get_settings, load_config
from workers.lease import JobSettings
from workers.reaper import Reaper

log = logging.getLogger(__name__)

celery = Celery("backprop", set_as_current=False, include=["workers.tasks"])
celery.conf.update(celery_settings(load_config()))
# How the task, a stopping worker and the reaper hand a job id to the cpu or gpu queue.
publish_job = CeleryJobQueue(celery).publish

# Set when the worker shuts down (SIGTERM): shared memory made before the pool forks,
# so the training loop in a pool process sees the main process's decision and hands
# its job back instead of being killed mid-epoch or holding up the shutdown.
_shutting_down = multiprocessing.RawValue("b", 0)


def shutdown_requested() -> bool:
    """Say whether this worker is shutting down."""
    return bool(_shutting_down.value)



@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_kwargs: object) -> None:
    """Log as the API does (service/core/logs.py) instead of Celery's own format."""
    celery_level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    logs.configure(level=get_settings().LOG_LEVEL or celery_level)

# The main process's reaper (started when the worker is ready) and its database engine.
_reaper: Any = None
_reaper_engine: Any = None


@worker_process_init.connect
def _init_pool_process(**_kwargs: object) -> None:
    """Let a pool process forked after the reaper started leave the reaper's connections alone.

    (workers/tasks.py loads the training code in each pool process: workers.training
    imports this module, so importing it from here would make a cycle.)
    """
    if _reaper_engine is not None:
        _reaper_engine.dispose(close=False)


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
    config = load_config()
    _reaper_engine = make_engine(config["DATABASE_URL"])
    _reaper = Reaper(make_session_factory(_reaper_engine), publish_job,
                     JobSettings.from_config(config))
    _reaper.start()
    log.info("reaper started: every %gs, lease timeout %gs", config["REAPER_INTERVAL_S"],
             config["LEASE_TIMEOUT_S"])
