"""The peer of /predict in benchmarks/predict.py: a bare Flask endpoint with the same JSON shape, no model."""

from __future__ import annotations

from typing import Any

from flask import Flask, request


def create_app() -> Flask:
    """Return an app whose POST /predict reads the JSON body and answers a fixed prediction."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict() -> dict[str, Any]:
        request.get_json()
        return {"predictions": [1], "probabilities": [[0.25, 0.5, 0.25]], "classes": [0, 1, 2],
                "model_id": "mdl_00000000000000000000000"}

    return app
