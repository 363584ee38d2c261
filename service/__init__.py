"""The Flask API of backprop-service: `flask --app service run`, `gunicorn 'service:create_app()'`.

The package imports nothing heavy itself, so that `service.client` (a plain HTTP
client) can be used without Flask, SQLAlchemy or numpy being loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the API app (see service.api.app.create_app)."""
    from service.api.app import create_app as create

    return create(test_config)
