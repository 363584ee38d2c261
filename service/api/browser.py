"""Browser-facing defaults: what a web page in the user's browser can make the service do.

With AUTH=off the service answers anyone who reaches it, and a page the user opens
can reach a service on their machine in two ways:

- DNS rebinding: a name of the page's (``evil.example``) comes to resolve to 127.0.0.1,
  so the page reads and writes the service as its own origin. Its requests still carry
  ``Host: evil.example``: only the machine's own names (127.0.0.1, localhost, [::1], any
  port) are answered, anything else gets 421.
- Cross-origin requests: a form post or a ``no-cors`` fetch from another origin reaches the
  service (the page cannot read the answer, but the dataset is created, the job cancelled).
  Such a request carries the page's ``Origin`` (and ``Sec-Fetch-Site``): a POST, PUT, PATCH
  or DELETE whose Origin is not the service's own, or whose Sec-Fetch-Site is neither
  ``same-origin`` nor ``none``, gets 403. The dashboard's own requests are same-origin;
  the CLI, the client and curl send neither header.

With AUTH=on neither check applies: a page cannot send the key (it lives in the
dashboard's own storage), and behind a proxy the Host is the deployment's name.

Every answer says ``X-Content-Type-Options: nosniff``; an HTML answer (the dashboard,
/docs) also carries a Content-Security-Policy that allows scripts and styles from the
service's own files only (data rides in ``<script type="application/json">``, which is
never run) and no framing, and ``Referrer-Policy: no-referrer``.

The checks and headers wrap the whole WSGI app, so /predict's fast lane, which answers
before Flask routes a request, gets them too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from service.api.errors import problem_response
from service.api.request_ids import REQUEST_ID_HEADER, request_id_from

log = logging.getLogger(__name__)

# The Host names of the machine itself, with any port: all AUTH=off answers.
LOCAL_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::\d{1,5})?", re.IGNORECASE)
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of a request the service's own page, or the user, made.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": "80", "https": "443"}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # the pages' empty icon is a data: URL
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# Added to every answer, and to HTML answers (pages), unless the answer sets them itself.
EVERY_ANSWER_HEADERS = {"X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY"}  # frame-ancestors for browsers that predate it

StartResponse = Callable[..., Any]


def _authority(authority: str, scheme: str) -> str:
    """Return host:port in lower case, the scheme's default port added when none is given."""
    authority = authority.lower()
    if re.search(r":\d+$", authority) and not authority.endswith("]"):
        return authority
    return f"{authority}:{DEFAULT_PORTS.get(scheme, '80')}"


def same_origin(origin: str, host: str | None) -> bool:
    """Say whether an Origin header names the service's own origin: the Host it was reached at.

    The scheme is not compared (behind a TLS proxy the service sees http); ``null`` and
    anything but an http(s) origin are another origin.
    """
    parts = urlsplit(origin.strip())
    if host is None or parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return False
    return _authority(parts.netloc, parts.scheme) == _authority(host, parts.scheme)


class BrowserGuard:
    """WSGI middleware: the Host and Origin checks of AUTH=off, and the security headers."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            html = any(name.lower() == "content-type" and value.split(";")[0].strip() == "text/html"
                       for name, value in headers)
            for name, value in (EVERY_ANSWER_HEADERS | (PAGE_HEADERS if html else {})).items():
                if name.lower() not in present:
                    headers.append((name, value))
            return start_response(status, headers, exc_info)

        refusal = self.refusal(environ) if self.app.config["AUTH"] == "off" else None
        if refusal is not None:
            return refusal(environ, with_headers)
        return self.wsgi_app(environ, with_headers)

    def refusal(self, environ: dict[str, Any]) -> Any:
        """Return the problem answer of a request a web page may have made behind the user's back, or None."""
        host = environ.get("HTTP_HOST")
        if host is not None and not LOCAL_HOST.fullmatch(host.strip()):
            return self._problem(environ, 421, "Misdirected Request", "host-not-allowed", "Host",
                                 f"with AUTH=off the service answers only its own host names "
                                 f"(127.0.0.1, localhost, [::1]), not Host {host!r}: a web page may be "
                                 f"reaching it by DNS rebinding. Use http://127.0.0.1:PORT, or run "
                                 f"with AUTH=on to serve other names")
        if environ.get("REQUEST_METHOD", "GET").upper() not in STATE_CHANGING_METHODS:
            return None
        site = environ.get("HTTP_SEC_FETCH_SITE")
        if site is not None and site.strip().lower() not in OWN_FETCH_SITES:
            return self._problem(environ, 403, "Forbidden", "cross-origin-request", "Sec-Fetch-Site",
                                 f"with AUTH=off the service takes no {environ['REQUEST_METHOD']} from "
                                 f"another site's page (Sec-Fetch-Site: {site}); use the dashboard, "
                                 f"the CLI or the client")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and not same_origin(origin, host):
            return self._problem(environ, 403, "Forbidden", "cross-origin-request", "Origin",
                                 f"with AUTH=off the service takes no {environ['REQUEST_METHOD']} from "
                                 f"another origin's page (Origin: {origin}); use the dashboard, "
                                 f"the CLI or the client")
        return None

    def _problem(self, environ: dict[str, Any], status: int, title: str, slug: str, field: str,
                 detail: str) -> Any:
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        log.warning("refused %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), slug,
                    extra={"request_id": request_id})
        with self.app.app_context():
            response = problem_response(status, title, detail, [{"field": field, "message": detail}], slug,
                                        {REQUEST_ID_HEADER: request_id})
        return response


def init_app(app: Flask) -> None:
    """Put the guard in front of everything the app serves (call it last: it wraps the fast lane too)."""
    app.wsgi_app = BrowserGuard(app.wsgi_app, app)  # type: ignore[method-assign]
