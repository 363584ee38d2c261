"""Request ids: X-Request-ID taken from the client (when well formed) or made, logged with, echoed."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from service.core.logs import REQUEST_ID

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed into headers and logs: printable, short, no separators that could forge lines.
GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(header: str | None) -> str:
    """Return the client's request id when it is well formed, else a new one."""
    if header and GOOD_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def init_app(app: Flask) -> None:
    """Give every request an id (X-Request-ID in, or a new one), log with it, and echo it."""

    @app.before_request
    def _take_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_id_token = REQUEST_ID.set(g.request_id)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response

    @app.teardown_request
    def _forget_request_id(_error: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                REQUEST_ID.reset(token)
            except ValueError:  # set in another context (a streamed response's generator); harmless
                REQUEST_ID.set(None)
