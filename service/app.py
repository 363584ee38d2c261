"""The app factory and its request class (streamed uploads)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any

from flask import Flask, Request

from service.config import load_config


class UploadRequest(Request):
    """A request whose file uploads stream to DATA_DIR/tmp on disk, never into memory."""

    upload_dir: str | None = None

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        # A named file, so the CSV parser can reopen it by path; deleted when closed.
        return tempfile.NamedTemporaryFile("wb+", dir=self.upload_dir, prefix="upload-", suffix=".part")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the API app; `test_config` overrides the environment's configuration.

    Besides the keys of service.config, `test_config` may give `QUEUE` (an object with
    publish(job_id, queue) and ping()) in place of Celery, and `UPGRADE_ON_START`.
    """
    app = Flask(__name__)
    app.config.from_mapping(load_config())
    if test_config:
        app.config.from_mapping(test_config)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]

    upload_dir = Path(app.config["DATA_DIR"]) / "tmp"
    upload_dir.mkdir(parents=True, exist_ok=True)
    app.request_class = type("AppUploadRequest", (UploadRequest,), {"upload_dir": str(upload_dir)})

    from service import db, errors, logs, metrics
    from service.api import init_app as init_api
    from service.model_cache import ModelCache
    from service.queue import CeleryJobQueue

    logs.configure()
    logs.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    app.extensions["backprop.queue"] = app.config.get("QUEUE") or CeleryJobQueue(app.config)
    app.extensions["backprop.models"] = ModelCache(int(app.config.get("MODEL_CACHE_SIZE", 32)))
    init_api(app)
    metrics.init_app(app)
    return app
