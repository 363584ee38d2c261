"""The app factory and its request class (streamed uploads)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any

from flask import Flask, Request
from werkzeug.formparser import FormDataParser, MultiPartParser

from service import ui
from service.api import auth, browser, cli, db, errors, metrics, request_ids
from service.api import init_app as init_api
from service.api.json_provider import ServiceJSONProvider
from service.api.queue import celery_job_queue
from service.core import logs
from service.core.models.cache import ModelCache
from service.core.settings import get_settings
from service.core.tenancy.limits import MB

# How much of a multipart body werkzeug's decoder takes per step (its default: 64 KiB).
# Each step costs a fixed amount of Python work: a 100 MB CSV took ~0.46 s of CPU to
# receive at 64 KiB, ~0.28 s at 256 KiB (docs/performance.md, "Uploads").
MULTIPART_READ_BYTES = 256 * 1024


class UploadFormDataParser(FormDataParser):
    """werkzeug's form parser, reading multipart bodies in larger steps."""

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> tuple[IO[bytes], Any, Any]:
        # The decoder refuses (413) a step that would take its buffer past max_form_memory_size:
        # keep a step at most half of it.
        limit = self.max_form_memory_size
        step = MULTIPART_READ_BYTES if limit is None else max(min(MULTIPART_READ_BYTES, limit // 2), 1024)
        parser = MultiPartParser(stream_factory=self.stream_factory, max_form_memory_size=limit,
                                 max_form_parts=self.max_form_parts, cls=self.cls, buffer_size=step)
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(stream, boundary, content_length)
        return stream, form, files


class UploadRequest(Request):
    """A request whose file uploads stream to DATA_DIR/tmp on disk, never into memory."""

    upload_dir: str | None = None
    form_data_parser_class = UploadFormDataParser

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        # A named file, so the CSV parser can reopen it by path; deleted when closed.
        return tempfile.NamedTemporaryFile("wb+", dir=self.upload_dir, prefix="upload-", suffix=".part")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the API app; `test_config` overrides the environment's configuration.

    Besides the keys of service.core.settings, `test_config` may give `QUEUE` (an object with
    publish(job_id, queue) and ping()) in place of Celery, and `UPGRADE_ON_START`.
    """
    app = Flask(__name__)
    settings = get_settings().with_overrides(test_config) if test_config else get_settings()
    app.config.from_mapping(test_config or {})
    app.config.from_mapping(settings.as_config())  # the settings as validated, overrides included
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_UPLOAD_MB"]) * MB
    app.json = ServiceJSONProvider(app)

    upload_dir = Path(app.config["DATA_DIR"]) / "tmp"
    upload_dir.mkdir(parents=True, exist_ok=True)
    app.request_class = type("AppUploadRequest", (UploadRequest,), {"upload_dir": str(upload_dir)})

    logs.configure()
    request_ids.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    cli.init_app(app)
    app.extensions["backprop.queue"] = app.config.get("QUEUE") or celery_job_queue(app.config)
    app.extensions["backprop.models"] = ModelCache(app.config["MODEL_CACHE_SIZE"])
    init_api(app)
    app.register_blueprint(ui.bp)  # the dashboard: page shells that read the API
    metrics.init_app(app)
    auth.init_app(app)  # after the request id and the timer: a 401 is logged and counted too
    browser.init_app(app)  # last: its Host/Origin checks and headers wrap everything, the fast lane too
    return app
