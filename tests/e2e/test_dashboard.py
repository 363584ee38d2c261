"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a live stack.

One backend (SQLite) is enough here: the pages only read the API, which the other
end-to-end tests run on both. Every test saves a screenshot of its page to
var/screenshots/ (or $BACKPROP_SCREENSHOTS), named after the test, for people to look at.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.client import TERMINAL
from tests.conftest import csv_text, pets_rows
from tests.e2e.conftest import ROOT, chromium_path

pytestmark = pytest.mark.slow

SQLITE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)

KEY_STORAGE = "backprop.apiKey"  # the localStorage key dashboard.js keeps the API key under
WAIT_MS = 60_000
# A graph with a skip connection: topological layers h1 | h2 | sum | out, and an edge input -> out.
GRAPH = {"nodes": [
    {"name": "h1", "type": "dense", "units": 12, "activation": "tanh", "inputs": ["input"]},
    {"name": "h2", "type": "dense", "units": 12, "activation": "tanh", "inputs": ["h1"]},
    {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
    {"name": "out", "type": "dense", "units": 2, "inputs": ["sum", "input"]},
], "output": "out"}


def screenshot_dir() -> Path:
    """Where the screenshots go: $BACKPROP_SCREENSHOTS, else var/screenshots (git-ignored)."""
    path = Path(os.environ.get("BACKPROP_SCREENSHOTS") or ROOT / "var" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_key(stack: Any) -> str | None:
    """The key the stack's API wants, when it runs with AUTH on."""
    return getattr(stack, "api_key", None)


# --- the browser --------------------------------------------------------------------------------


# `browser` (one chromium for the session, in tests/e2e/conftest.py: test_dashboard_reports.py drives it too).


def new_page(browser: Any, stack: Any, key: str | None) -> Any:
    """A page in a fresh browser context; with `key`, the key is in localStorage before any script runs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack.base_url)
    if key:
        context.add_init_script(f"localStorage.setItem({json.dumps(KEY_STORAGE)}, {json.dumps(key)})")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    # What the pages' Content-Security-Policy (service/api/browser.py) blocks, chromium logs as an error.
    page.csp_violations = []
    page.on("console", lambda message: page.csp_violations.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text else None)
    return page


@pytest.fixture
def page(browser: Any, stack: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page that carries the stack's key; screenshotted at the end, then checked for script errors
    and for anything its Content-Security-Policy blocked."""
    page = new_page(browser, stack, api_key(stack))
    yield page
    save_screenshot(page, request)
    errors, violations = page.js_errors, page.csp_violations
    page.context.close()
    assert not errors, f"the page's JavaScript failed: {errors}"
    assert not violations, f"the page's Content-Security-Policy blocked: {violations}"


def save_screenshot(page: Any, request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    path = screenshot_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def points(page: Any, chart: str) -> int:
    """How many epochs a uPlot chart holds (its x values)."""
    return page.evaluate("name => { const c = window.dashboard.charts[name]; return c ? c.data[0].length : 0 }",
                         chart)


# --- jobs to look at ----------------------------------------------------------------------------


def upload(stack: Any, tmp_path: Path, name: str, header: list[str], rows: list[list[Any]], target: str) -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text(csv_text(header, rows))
    return stack.upload_csv(path, name=name, target=target)["id"]


@pytest.fixture(scope="module")
def slow_job(stack: Any, finished: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A job that runs for minutes (many epochs, tiny batches) and saturates; cancelled at the end.

    It holds the stack's one worker, so `finished` trains first.
    """
    rng = np.random.default_rng(0)
    rows = [[*np.round(rng.normal(size=40), 3), i % 2] for i in range(1200)]
    dataset_id = upload(stack, tmp_path_factory.mktemp("slow"), "wide", [f"x{k}" for k in range(40)] + ["label"],
                        rows, "label")
    # Weights of std 1 on 40 standardized inputs: the sigmoid layer saturates (a flag every epoch).
    network = {"layers": [{"type": "dense", "units": 24, "activation": "sigmoid", "init": "normal"},
                          {"type": "dense", "units": 12, "activation": "tanh"},
                          {"type": "dense", "units": 2}]}
    job = stack.start_job({"dataset_id": dataset_id, "network": network, "time_limit_s": 600,
                           "training": {"epochs": 20000, "batch_size": 4, "optimizer": "sgd",
                                        "learning_rate": 0.001, "early_stopping_patience": 0}})
    try:
        stack.wait_job(job["id"], until=("running",))
        yield job
    finally:
        stack.request("POST", f"/v1/jobs/{job['id']}/cancel", expect=(202, 409))
        stack.wait_job(job["id"], until=TERMINAL)


@pytest.fixture(scope="module")
def finished(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A succeeded job on pets (a string target, a categorical colour) with a graph network; its model."""
    dataset_id = upload(stack, tmp_path_factory.mktemp("pets"), "pets", ["weight", "colour", "animal"],
                        pets_rows(160), "animal")
    job = stack.train({"dataset_id": dataset_id, "network": GRAPH,
                       "training": {"epochs": 8, "learning_rate": 0.02, "seed": 1}})
    return {"job": job, "model": stack.request("GET", f"/v1/models/{job['model_id']}")}


# --- tests --------------------------------------------------------------------------------------


@SQLITE
def test_the_jobs_list_shows_a_running_job_with_a_progress_bar(stack, page, slow_job):
    page.goto("/ui")
    row = page.locator(f'#jobs tr[data-job-id="{slow_job["id"]}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "running"
    assert row.locator(".status").inner_text() == "running"
    bar = row.locator('[role="progressbar"]')
    # The bar follows the epochs: its value grows while the list refreshes.
    page.wait_for_function(
        "id => { const b = document.querySelector(`#jobs tr[data-job-id='${id}'] [role=progressbar] span`);"
        " return b && parseFloat(b.style.width) > 0 }", arg=slow_job["id"])
    first = row.locator(".muted").inner_text()
    assert re.fullmatch(r"\d+/20000", first), first
    page.wait_for_function(
        "([id, first]) => document.querySelector(`#jobs tr[data-job-id='${id}'] .muted`).textContent !== first",
        arg=[slow_job["id"], first])
    assert int(row.locator(".muted").inner_text().split("/")[0]) > int(first.split("/")[0])
    assert bar.get_attribute("aria-valuemax") == "100"


@SQLITE
def test_the_job_page_draws_curves_that_grow_while_epochs_finish(stack, page, slow_job):
    events: list[str] = []
    page.on("request", lambda r: events.append(r.url) if r.url.endswith("/events") else None)
    page.goto(f"/ui/jobs/{slow_job['id']}")
    page.wait_for_function("() => window.dashboard.charts.loss && window.dashboard.charts.loss.data[0].length > 0")
    first = points(page, "loss")
    page.wait_for_function("n => window.dashboard.charts.loss.data[0].length > n", arg=first)
    second = points(page, "loss")
    assert second > first
    assert events, "the page did not read the job's event stream"
    # train against validation, one point per epoch, epochs in order
    loss = page.evaluate("() => { const c = window.dashboard.charts.loss;"
                         " return {labels: c.series.slice(1).map(s => s.label), x: c.data[0],"
                         " shown: document.querySelector('#loss-chart').dataset.points} }")
    assert loss["labels"] == ["loss", "val_loss"]
    assert loss["x"] == list(range(1, len(loss["x"]) + 1))
    assert loss["shown"] == str(len(loss["x"]))
    assert page.locator("#status").inner_text() == "running"
    assert page.locator("#cancel").is_visible()
    accuracy = page.evaluate("() => window.dashboard.charts.metric.series.slice(1).map(s => s.label)")
    assert accuracy == ["accuracy", "val_accuracy"]


@SQLITE
def test_the_job_page_polls_when_the_event_stream_fails(stack, page, slow_job):
    # A proxy that breaks streaming, say: the page falls back to reading /metrics every second.
    page.route("**/events", lambda route: route.abort())
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.partition("?")[0].endswith("/metrics") else None)
    page.goto(f"/ui/jobs/{slow_job['id']}")
    page.wait_for_function("() => document.querySelector('#live').textContent.startsWith('Polling')")
    first = points(page, "loss")
    page.wait_for_function("n => window.dashboard.charts.loss.data[0].length > n", arg=first)
    assert len(polls) >= 2


@SQLITE
def test_the_gradient_chart_has_a_log_axis_and_one_series_per_layer(stack, page, slow_job):
    page.goto(f"/ui/jobs/{slow_job['id']}")
    page.wait_for_function("() => window.dashboard.charts.grad && window.dashboard.charts.grad.data[0].length > 1")
    grad = page.evaluate("() => { const c = window.dashboard.charts.grad;"
                         " return {distr: c.scales.y.distr, labels: c.series.slice(1).map(s => s.label),"
                         " values: c.data.slice(1).map(ys => ys[ys.length - 1])} }")
    assert grad["distr"] == 3, "uPlot's distr 3 is a log scale"
    assert grad["labels"] == ["dense_0", "dense_1", "dense_2"]
    assert all(value > 0 for value in grad["values"]), grad
    # The saturating sigmoid layer raises a flag, explained by the engine's sentence.
    from backprop import FLAG_EXPLANATIONS

    flag = page.locator('#flags li[data-flag="saturation"]')
    flag.wait_for()
    assert FLAG_EXPLANATIONS["saturation"] in flag.inner_text()


@SQLITE
def test_a_finished_job_shows_its_final_metrics(stack, page, finished):
    job = finished["job"]
    page.goto(f"/ui/jobs/{job['id']}")
    page.locator("#final-metrics tr").first.wait_for()
    shown = {row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
             for row in page.locator("#final-metrics tr").all()}
    for key in ("loss", "val_loss", "accuracy", "val_accuracy", "epochs_run"):
        assert key in shown, shown
        assert float(shown[key]) == pytest.approx(job["metrics"][key], rel=1e-4, abs=1e-5)
    assert page.locator("#status").inner_text() == "succeeded"
    assert not page.locator("#cancel").is_visible()
    assert page.locator("#model-link a").inner_text() == job["model_id"]
    page.wait_for_function("n => window.dashboard.charts.loss && window.dashboard.charts.loss.data[0].length === n",
                           arg=job["metrics"]["epochs_run"])


@SQLITE
def test_the_model_page_draws_the_graph_and_predicts_a_label(stack, page, finished):
    model = finished["model"]
    page.goto(f"/ui/models/{model['id']}")
    page.locator("#graph svg").wait_for()
    names = page.eval_on_selector_all("#graph g.node:not(.input)", "nodes => nodes.map(n => n.dataset.node)")
    assert names == [node["name"] for node in GRAPH["nodes"]]
    edges = page.eval_on_selector_all("#graph path.edge", "paths => paths.map(p => [p.dataset.from, p.dataset.to])")
    assert sorted(edges) == sorted([source, node["name"]] for node in GRAPH["nodes"] for source in node["inputs"])
    assert "dense 12 · tanh" in page.locator('#graph g[data-node="h1"]').text_content()
    # Topological layers go left to right: the skip edge input -> out spans them all.
    x = {name: float(page.get_attribute(f'#graph g[data-node="{name}"] rect', "x"))
         for name in ("input", "h1", "h2", "sum", "out")}
    assert x["input"] < x["h1"] < x["h2"] < x["sum"] < x["out"]

    colour = page.locator('#predict-form select[name="colour"]')
    assert sorted(colour.locator("option").all_inner_texts()) == ["black", "brown", "grey"]
    page.fill('#predict-form input[name="weight"]', "24.5")
    colour.select_option("brown")
    page.click('#predict-form button[type="submit"]')
    label = page.locator("#predicted-label")
    label.wait_for()
    expected = stack.predict(model["id"], {"records": [{"weight": 24.5, "colour": "brown"}]})
    assert label.inner_text() == expected["predictions"][0] == "dog"
    shown = page.eval_on_selector_all("#prediction .prob", "rows => rows.map(r => r.dataset.class)")
    assert shown == expected["classes"]


@SQLITE
def test_the_cancel_button_cancels_a_job(stack, page, slow_job):
    # Queued behind the slow job on the one worker, or running: either way the button stops it.
    job = stack.start_job({"dataset_id": slow_job["dataset_id"], "network": slow_job["network"],
                           "training": {"epochs": 20000, "batch_size": 4}, "time_limit_s": 600})
    try:
        page.goto(f"/ui/jobs/{job['id']}")
        page.locator("#cancel").click()
        page.wait_for_function("() => document.body.dataset.status === 'cancelled'")
        assert page.locator("#status").inner_text() == "cancelled"
        assert stack.wait_job(job["id"])["status"] == "cancelled"
    finally:
        stack.request("POST", f"/v1/jobs/{job['id']}/cancel", expect=(202, 409))


@SQLITE
def test_the_root_serves_the_dashboard_to_a_browser_and_json_to_anything_else(stack, page, slow_job):
    index = stack.request("GET", "/")
    assert index["links"]["dashboard"] == "/ui" and index["links"]["openapi"] == "/openapi.json"
    page.goto("/")
    page.locator(f'#jobs tr[data-job-id="{slow_job["id"]}"]').wait_for()
    assert page.title().startswith("Jobs")


@SQLITE
def test_the_page_asks_for_a_key_when_the_api_answers_401(stack, browser, request, slow_job):
    key = api_key(stack)
    page = new_page(browser, stack, None)
    if key is None:
        # A stack with AUTH off: stand in for the API's 401 so the browser side is tested all the same.
        key = "test-key-123"

        def guard(route: Any) -> None:
            if route.request.headers.get("authorization") == f"Bearer {key}":
                route.continue_()
            else:
                route.fulfill(status=401, content_type="application/problem+json", body=json.dumps(
                    {"type": "about:blank", "title": "Unauthorized", "status": 401,
                     "detail": "send Authorization: Bearer KEY"}))

        page.route("**/v1/**", guard)
    try:
        page.goto("/ui")
        form = page.locator("#key-form")
        form.wait_for(state="visible")
        save_screenshot(page, request)
        page.fill("#key-input", key)
        page.click('#key-form button[type="submit"]')
        page.locator(f'#jobs tr[data-job-id="{slow_job["id"]}"]').wait_for()
        assert not form.is_visible()
        assert page.evaluate(f"() => localStorage.getItem({json.dumps(KEY_STORAGE)})") == key
        assert not page.js_errors, page.js_errors
        assert not page.csp_violations, page.csp_violations
    finally:
        page.context.close()


# --- browser-facing defaults (service/api/browser.py) ------------------------------------------

OPEN_SQLITE = pytest.mark.parametrize("open_stack", ["sqlite"], indirect=True)


@SQLITE
def test_the_api_docs_page_renders_under_its_policy(stack, page):
    answer = page.goto("/docs")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.locator("#ops details.op").first.wait_for()
    assert page.locator("#ops details.op").count() >= 20
    assert page.locator("#schemas h3").count() >= 10


@pytest.fixture
def other_site() -> Iterator[str]:
    """The URL of a page of another origin on this machine (a plain page, of no policy)."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<!doctype html><title>another site</title><p>another site"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@OPEN_SQLITE
def test_with_auth_off_the_dashboard_changes_state_and_another_origins_page_cannot(open_stack, browser, request,
                                                                                   other_site):
    page = new_page(browser, open_stack, None)
    try:
        page.goto("/ui")  # http://127.0.0.1:PORT: the service's own origin
        page.locator("#jobs").wait_for(state="attached")
        created = page.evaluate("""async () => (await fetch("/v1/networks", {method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({layers: [{type: "dense", units: 2}]})})).status""")
        assert created == 201
        # Another site's page on the same machine posts a form there: the browser sends it
        # (its answer hidden from the page), the service refuses it.
        before = len(open_stack.request("GET", "/v1/datasets")["items"])
        page.goto(other_site)
        kind = page.evaluate("""async (url) => {
            const body = new FormData();
            body.append("file", new Blob(["a,b\\n1,2\\n3,4\\n"], {type: "text/csv"}), "x.csv");
            return (await fetch(url, {method: "POST", body, mode: "no-cors"})).type; }""",
                             open_stack.url("/v1/datasets"))
        assert kind == "opaque"  # sent, and its answer hidden from the page
        assert len(open_stack.request("GET", "/v1/datasets")["items"]) == before
        assert re.search(r'"POST /v1/datasets HTTP/1\.1" 403 ', open_stack.log_text()), open_stack.log_text()
        save_screenshot(page, request)
        assert not page.js_errors and not page.csp_violations, (page.js_errors, page.csp_violations)
    finally:
        page.context.close()


@OPEN_SQLITE
def test_with_auth_off_a_page_that_reaches_the_service_by_another_name_is_refused(open_stack, browser):
    """DNS rebinding: the browser resolves a name of the attacker's to 127.0.0.1."""
    rebinding = browser.browser_type.launch(executable_path=chromium_path(), args=[
        "--no-sandbox", "--host-resolver-rules=MAP rebound.test 127.0.0.1"])
    try:
        page = rebinding.new_page()
        answer = page.goto(f"http://rebound.test:{open_stack.port}/ui")
        assert answer.status == 421
        assert answer.json()["type"] == "urn:backprop:problem:host-not-allowed"
        assert page.goto(f"http://127.0.0.1:{open_stack.port}/ui").status == 200
    finally:
        rebinding.close()
