"""Browser-facing defaults: what a web page in the user's browser can make the service do.

With AUTH=off any page the user opens could reach a service on their laptop: by DNS
rebinding (a name of the attacker's that resolves to 127.0.0.1; the request carries the
attacker's Host) or by a cross-origin form post or fetch (it carries the page's Origin).
The service answers only Host names of the machine itself, and refuses state changes
from another origin. Every answer says nosniff; the HTML pages also send a
Content-Security-Policy that forbids inline script and framing.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp, problem

LOCAL_HOSTS = ["localhost", "localhost:8000", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:5000", "[::1]",
               "[::1]:8000"]
FOREIGN_HOSTS = ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.evil.example:8000",
                 "192.168.1.20:8000", "0.0.0.0:8000", "[::2]:8000", "localhost:80:80", "localhost:x"]
PAGES = ["/", "/ui", "/ui/jobs/job_1", "/ui/models/model_1", "/docs"]


@pytest.fixture
def open_app(app: Any) -> Any:
    """The app with AUTH=off, as `make run` serves it on 127.0.0.1."""
    app.config["AUTH"] = "off"
    return app


@pytest.fixture
def browser_client(open_app: Any) -> Any:
    """A test client of the open app (Flask's test client sends `Host: localhost`)."""
    return open_app.test_client()


def upload(client: Any, **headers: str) -> Any:
    data = csv_text(BLOBS_COLUMNS, blobs_rows(20)).encode()
    return client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.csv")},
                       content_type="multipart/form-data", headers=headers)


def dataset_count(client: Any) -> int:
    return len(client.get("/v1/datasets").get_json()["items"])


# --- Host: DNS rebinding ----------------------------------------------------------------------


@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_with_auth_off_the_machines_own_host_names_are_answered(browser_client, host):
    assert browser_client.get("/v1/datasets", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_with_auth_off_any_other_host_is_refused_as_dns_rebinding(browser_client, host):
    body = problem(browser_client.get("/v1/datasets", headers={"Host": host}), 421)
    assert body["type"] == "urn:backprop:problem:host-not-allowed"
    assert "Host" in body["detail"] and "AUTH=off" in body["detail"]
    assert body["errors"][0]["field"] == "Host"
    # The dashboard and the predict fast lane (which answers before Flask routes) alike.
    problem(browser_client.get("/ui", headers={"Host": host, "Accept": "text/html"}), 421)
    problem(browser_client.post("/v1/models/model_1/predict", json={"inputs": [[1, 2, 3, 4]]},
                                headers={"Host": host}), 421)
    problem(upload(browser_client, Host=host), 421)
    assert dataset_count(browser_client) == 0


def test_with_auth_on_any_host_is_answered(client):
    """Behind a proxy the Host is the deployment's name; the key is what protects it."""
    assert client.get("/v1/datasets", headers={"Host": "backprop.example.com"}).status_code == 200


# --- Origin: cross-site requests ----------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://localhost:3000"},  # another port of the same machine is another origin
    {"Origin": "http://127.0.0.1"},  # so is another name of it
    {"Origin": "null"},  # a sandboxed frame, a file:// page
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
], ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()))
def test_with_auth_off_a_state_change_from_another_origin_is_refused(browser_client, headers):
    body = problem(upload(browser_client, **headers), 403)
    assert body["type"] == "urn:backprop:problem:cross-origin-request"
    assert body["errors"][0]["field"] in ("Origin", "Sec-Fetch-Site")
    assert dataset_count(browser_client) == 0
    dataset_id = upload(browser_client).get_json()["id"]
    job = browser_client.post("/v1/jobs", json={"dataset_id": dataset_id, "network": mlp()}).get_json()
    problem(browser_client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers), 403)
    problem(browser_client.delete(f"/v1/datasets/{dataset_id}", headers=headers), 403)
    problem(browser_client.post("/v1/networks", json=mlp(), headers=headers), 403)
    assert browser_client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "queued"
    assert dataset_count(browser_client) == 1
    # Reading is not a state change: a foreign page cannot read the answer anyway (no CORS).
    assert browser_client.get("/v1/datasets", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [
    {},  # the CLI, the client, curl: no Origin
    {"Origin": "http://localhost"},  # the dashboard itself
    {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # the user's own navigation
], ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()) or "no headers")
def test_with_auth_off_same_origin_and_non_browser_requests_change_state(browser_client, headers):
    assert upload(browser_client, **headers).status_code == 201


def test_the_origin_must_match_the_host_with_its_port(open_app):
    own = open_app.test_client()
    assert upload(own, Host="127.0.0.1:8000", Origin="http://127.0.0.1:8000").status_code == 201
    assert upload(own, Host="localhost:80", Origin="http://localhost").status_code == 201  # the default port
    problem(upload(own, Host="127.0.0.1:8000", Origin="http://127.0.0.1:8001"), 403)
    problem(upload(own, Host="127.0.0.1:8000", Origin="http://localhost:8000"), 403)


def test_with_auth_on_the_key_protects_and_origins_are_not_checked(client, anonymous_client):
    """A page cannot send the key (it lives in the dashboard's own storage); without it: 401."""
    problem(upload(anonymous_client, Origin="http://evil.example"), 401)
    assert upload(client, Origin="http://evil.example").status_code == 201


# --- Security headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["on", "off"])
@pytest.mark.parametrize("path", PAGES)
def test_the_pages_send_a_policy_that_forbids_inline_script_and_framing(app, path, auth):
    app.config["AUTH"] = auth
    response = app.test_client().get(path, headers={"Accept": "text/html"})
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";")
                  if part.strip())
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", PAGES)
def test_the_pages_hold_no_inline_script_or_style(client, path):
    """What the policy forbids: inline <script> and <style>, style= and on...= attributes.
    Data rendered into a page rides in <script type="application/json">, which is never run."""
    html = client.get(path, headers={"Accept": "text/html"}).get_data(as_text=True)
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert "<style" not in html
    assert not re.search(r"\s(style|on[a-z]+)\s*=", html), re.search(r"\s(style|on[a-z]+)\s*=.{0,40}", html)


def test_every_answer_says_nosniff(client, blobs_model):
    answers = [client.get("/v1/datasets"), client.get("/healthz"), client.get("/v1/nope"),
               client.get("/openapi.json"), client.get("/ui/static/dashboard.js"),
               client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[0, 0, 0, 0]]})]
    answers.append(client.post(f"/v1/models/{blobs_model}/predict", json={"inputs": [[0, 0, 0, 0]]}))  # fast lane
    for response in answers:
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.request.path
    assert "Content-Security-Policy" not in answers[0].headers  # JSON: the policy is for pages
