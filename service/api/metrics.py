"""Prometheus metrics at /metrics: HTTP traffic, jobs, queues, training throughput, the model cache.

Each app has its own registry. HTTP and cache counters are per process: under
gunicorn with several workers each scrape sees the worker that answered it, so
sum them in Prometheus only over a scrape of each worker, or read them as a
sample (docs/operations.md). Jobs, queue depth and throughput are read from the
database and the broker at scrape time, so every process reports the same values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from service.core.db.tables import Job, JobEpoch
from service.core.settings import DEVICES
from service.core.statuses import JobStatus

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

# The route label of requests that matched no URL rule (404s): raw paths would explode the label set.
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """Request counters and latency histograms, labelled by URL rule, method and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("backprop_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("backprop_http_request_duration_seconds",
                                 "Time to produce the response (a stream's first byte)",
                                 ["method", "route"], registry=registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class StoreCollector(Collector):
    """Read jobs by status, queue depth, training throughput and cache counts at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._broker_engine: Engine | None = None

    def collect(self) -> Iterator[Any]:
        sessions = self.app.extensions["backprop.sessions"]
        jobs = GaugeMetricFamily("backprop_jobs", "Jobs by status", labels=["status"])
        throughput = GaugeMetricFamily("backprop_training_samples_per_second",
                                       "Samples per second of the latest epoch, summed over running jobs")
        with sessions() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            latest = (select(JobEpoch.job_id, func.max(JobEpoch.epoch).label("epoch"))
                      .join(Job, Job.id == JobEpoch.job_id).where(Job.status == JobStatus.RUNNING)
                      .group_by(JobEpoch.job_id).subquery())
            records = session.scalars(select(JobEpoch.record).join(
                latest, (JobEpoch.job_id == latest.c.job_id) & (JobEpoch.epoch == latest.c.epoch)))
            rate = sum(float(r.get("samples_per_second") or 0.0) for r in records)
        for status in JobStatus:
            jobs.add_metric([status], counts.get(status, 0))
        throughput.add_metric([], rate)
        yield jobs
        yield throughput

        depth = self._queue_depth()
        if depth is not None:
            queued = GaugeMetricFamily("backprop_queue_depth", "Messages waiting in the broker",
                                       labels=["queue"])
            for name, value in depth.items():
                queued.add_metric([name], value)
            yield queued

        cache = self.app.extensions["backprop.models"]
        for name, value in (("hits", cache.hits), ("misses", cache.misses)):
            counter = CounterMetricFamily(f"backprop_model_cache_{name}", f"Model cache {name} (this process)")
            counter.add_metric([], value)
            yield counter

    def _queue_depth(self) -> dict[str, int] | None:
        """Return messages waiting per queue, or None when the broker is not one we can read cheaply."""
        url = str(self.app.config.get("CELERY_BROKER_URL") or "")
        try:
            if url.startswith(("redis://", "rediss://")):
                import redis

                client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    # No priority steps are configured, so each queue is one list named after it.
                    return {queue: int(client.llen(queue)) for queue in DEVICES}
                finally:
                    client.close()
            if url.startswith("sqla+"):
                return self._sqla_depth(url.removeprefix("sqla+"))
        except Exception:  # noqa: BLE001 - a broken broker must not break the scrape; /readyz reports it
            log.warning("queue depth unavailable", exc_info=True)
        return None

    def _sqla_depth(self, url: str) -> dict[str, int] | None:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            return None  # no worker has created the broker yet; do not create it here
        if self._broker_engine is None:
            self._broker_engine = create_engine(url, pool_pre_ping=True)
        with self._broker_engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                "ON m.queue_id = q.id AND m.visible GROUP BY q.name")).all()
        depth = {queue: 0 for queue in DEVICES}
        depth.update({name: int(count) for name, count in rows if name in DEVICES})
        return depth


@bp.get("/metrics")
def metrics() -> Response:
    """Serve the metrics in Prometheus' text format."""
    return Response(generate_latest(current_app.extensions["backprop.metrics.registry"]),
                    content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Give the app a registry, count every request, and serve /metrics."""
    registry = CollectorRegistry()
    http = HttpMetrics(registry)
    registry.register(StoreCollector(app))
    app.extensions["backprop.metrics.registry"] = registry
    app.extensions["backprop.metrics.http"] = http

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
            http.observe(request.method, route, response.status_code, time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
