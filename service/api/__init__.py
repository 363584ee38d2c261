"""The REST API: one blueprint per resource."""

from __future__ import annotations

from flask import Flask

from service.api import (
    batch_predictions,
    datasets,
    evaluations,
    events,
    export,
    health,
    jobs,
    models,
    networks,
    openapi,
)


def init_app(app: Flask) -> None:
    """Register every blueprint."""
    for module in (datasets, networks, jobs, events, models, evaluations, batch_predictions, export, health, openapi):
        app.register_blueprint(module.bp)
