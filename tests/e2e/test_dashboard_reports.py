"""The dashboard's evaluation report, its evaluate and batch-predict actions, and the compare view,
in a real browser (Debian's chromium driven by Playwright) against a live SQLite stack.

The pages read the real endpoints: a model trained with a test split, evaluations started
from the model page's dataset picker (with the default shuffles and with none) and through
the API, a batch prediction downloaded from its link, three jobs with test splits compared.
Besides the per-test screenshots of tests/e2e/test_dashboard.py, three are saved under the
names docs/img/ uses (model-report-classification.png, model-report-regression.png, compare.png).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.schemas import PERMUTATION_REPEATS_DEFAULT
from service.core.statuses import TERMINAL_STATUSES, JobStatus
from service.ui import COMPARE_MAX_JOBS, COMPARE_MIN_JOBS
from tests.e2e import test_dashboard as dashboard_tests
from tests.e2e.test_dashboard import screenshot_dir, upload

# test_dashboard's page (on the session's chromium): screenshotted, checked for script errors and CSP violations.
page = dashboard_tests.page

pytestmark = pytest.mark.slow

SQLITE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
CLASSES = ["low", "mid", "high"]
FEATURES = ["x1", "x2", "colour", "noise"]
NETWORK = {"layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 3}]}
WAIT_S = 240


def levels_rows(n: int, seed: int) -> list[list[Any]]:
    """Three overlapping classes: two informative numbers, a colour that leans with the class, noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % 3
        colour = ["red", "green", "blue"][k] if rng.random() < 0.6 else str(rng.choice(["red", "green", "blue"]))
        rows.append([round(float(rng.normal(k, 0.8)), 3), round(float(rng.normal(-k, 1.2)), 3), colour,
                     round(float(rng.normal()), 3), CLASSES[k]])
    return rows


def waves_rows(n: int, seed: int) -> list[list[Any]]:
    """A regression target in its own units: y = 100 + 20 sin(x0) + 8 x1 + noise; x2 is noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 3))
    y = 100 + 20 * np.sin(X[:, 0]) + 8 * X[:, 1] + rng.normal(0, 2, size=n)
    return [[*np.round(x, 4), round(float(t), 3)] for x, t in zip(X, y)]


def wait_scoring(stack: Any, path: str) -> dict[str, Any]:
    """Poll an evaluation or batch prediction until it ends; it must succeed."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        answer = stack.request("GET", path)
        if answer["status"] in TERMINAL_STATUSES:
            assert answer["status"] == JobStatus.SUCCEEDED, answer
            return answer
        time.sleep(0.3)
    raise AssertionError(f"{path} did not end in {WAIT_S} s:\n{stack.log_text()}")


def shoot(page: Any, name: str) -> None:
    """Save a full-page screenshot under the name docs/img/ gives it (copied there by hand)."""
    page.screenshot(path=str(screenshot_dir() / name), full_page=True)


def ready(page: Any) -> None:
    page.wait_for_function("() => document.body.dataset.ready")
    assert page.evaluate("() => document.body.dataset.ready") == "true"


def plot(page: Any, name: str) -> dict[str, Any]:
    """What an SVG chart of the report holds (dashboard.js registers each in window.dashboard.plots)."""
    return page.evaluate("name => window.dashboard.plots[name]", name)


def shown_matrix(page: Any) -> list[list[int]]:
    return page.eval_on_selector_all("#confusion table.heatmap tbody tr", "rows => rows.map(r => "
                                     "[...r.querySelectorAll('td.cell')].map(c => Number(c.dataset.count)))")


# --- models, jobs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A three-class model trained with a test split (its metrics.test is a report), and a second dataset."""
    tmp = tmp_path_factory.mktemp("levels")
    dataset_id = upload(stack, tmp, "levels", [*FEATURES, "level"], levels_rows(600, 0), "level")
    job = stack.train({"dataset_id": dataset_id, "network": NETWORK,
                       "training": {"epochs": 40, "learning_rate": 0.01, "seed": 0, "test_split": 0.25}})
    holdout = upload(stack, tmp, "levels-holdout", [*FEATURES, "level"], levels_rows(240, 7), "level")
    return {"job": job, "model": stack.request("GET", f"/v1/models/{job['model_id']}"), "holdout": holdout}


@pytest.fixture(scope="module")
def regressor(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A regression model and an evaluation of it on another dataset, started through the API."""
    tmp = tmp_path_factory.mktemp("waves")
    header = ["x0", "x1", "x2", "y"]
    dataset_id = upload(stack, tmp, "waves", header, waves_rows(600, 0), "y")
    job = stack.train({"dataset_id": dataset_id, "network": {"layers": [
        {"type": "dense", "units": 32, "activation": "tanh"}, {"type": "dense", "units": 1}]},
        "training": {"epochs": 60, "learning_rate": 0.01, "seed": 0}})
    holdout = upload(stack, tmp, "waves-holdout", header, waves_rows(300, 3), "y")
    created = stack.request("POST", f"/v1/models/{job['model_id']}/evaluations", expect=202,
                            json={"dataset_id": holdout})
    evaluation = wait_scoring(stack, f"/v1/evaluations/{created['id']}")
    return {"model": stack.request("GET", f"/v1/models/{job['model_id']}"), "evaluation": evaluation}


@pytest.fixture(scope="module")
def three_jobs(stack: Any, classifier: dict[str, Any]) -> list[dict[str, Any]]:
    """Three finished jobs on one dataset, each holding a quarter of the rows out as its test split (the
    same rows: same seed): the learning rate differs, and the third runs fewer epochs."""
    dataset_id = classifier["job"]["dataset_id"]
    return [stack.train({"dataset_id": dataset_id, "network": NETWORK,
                         "training": {"epochs": epochs, "learning_rate": rate, "seed": 0, "batch_size": 32,
                                      "test_split": 0.25}})
            for rate, epochs in ((0.01, 12), (0.02, 12), (0.05, 8))]


# --- the model page ------------------------------------------------------------------------------


@SQLITE
def test_the_model_page_shows_the_test_split_report(stack, page, classifier):
    model = classifier["model"]
    report = model["metrics"]["test"]
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    assert "test split" in page.locator("#report-source").inner_text()
    assert f"{report['n_rows']} rows scored" in page.locator("#report-source").inner_text()
    # The heatmap: a cell per (true, predicted) pair, labels as in the dataset, counts as reported.
    labels = page.eval_on_selector_all("#confusion th.predicted", "ths => ths.map(t => t.textContent)")
    assert labels == report["confusion_matrix"]["labels"] and sorted(labels) == sorted(CLASSES)
    assert shown_matrix(page) == report["confusion_matrix"]["matrix"]
    assert page.locator("#confusion td.cell.hit").count() == 3
    # A shade of its own for a cell that has rows, none for an empty one.
    shaded = page.eval_on_selector_all("#confusion td.cell", "cs => cs.map(c => [Number(c.dataset.count),"
                                       " c.style.backgroundColor !== ''])")
    assert all(has == (count > 0) for count, has in shaded)
    # ROC: one curve per class (one against the rest), each with its AUC in the legend.
    roc = plot(page, "roc")
    assert [s["label"].split(" (AUC")[0] for s in roc["series"]] == labels
    assert all(s["points"] >= 2 for s in roc["series"])
    assert page.locator("#roc g.series path").count() == 3
    # Reliability: a dot per bin with rows, the ECE in the title.
    bins = [b for b in report["calibration"]["bins"] if b["count"] > 0]
    assert plot(page, "calibration")["series"][0]["points"] == len(bins)
    assert page.locator("#calibration circle").count() == len(bins)
    assert "ECE" in page.locator("#report-charts h3", has_text="Reliability").inner_text()
    # Permutation importance: a bar per feature column, largest drop first, each with a whisker.
    importance = report["permutation_importance"]
    assert importance, "a test split's report has permutation importance by default"
    bars = plot(page, "importance")["bars"]
    assert sorted(bars) == sorted(FEATURES)
    assert bars[0] == max(importance, key=lambda f: f["mean"])["feature"]
    assert page.locator("#importance g.bar-row").count() == len(FEATURES)
    assert page.locator("#importance line.whisker").count() == 3 * len(FEATURES)
    shown = dict(zip(page.locator("#report-metrics td:first-child").all_inner_texts(),
                     page.locator("#report-metrics td:last-child").all_inner_texts()))
    assert float(shown["accuracy"]) == pytest.approx(report["metrics"]["accuracy"], rel=1e-3)
    assert "roc_auc_macro" in shown
    shoot(page, "model-report-classification.png")


@SQLITE
def test_an_evaluation_started_from_the_picker_ends_with_its_report_shown(stack, page, classifier):
    model = classifier["model"]
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    options = page.eval_on_selector_all("#dataset-picker option", "os => os.map(o => o.value)")
    assert classifier["holdout"] in options and model["dataset_id"] in options
    page.select_option("#dataset-picker", classifier["holdout"])
    # The shuffles field starts at the API's default, and the request sends it.
    assert page.input_value("#shuffles") == str(PERMUTATION_REPEATS_DEFAULT)
    page.click("#evaluate")
    # The report's source names the new evaluation once it ended.
    page.wait_for_function("() => (document.querySelector('#report-source code') || {}).textContent"
                           "?.startsWith('ev_')", timeout=WAIT_S * 1000)
    evaluation_id = page.locator("#report-source code").first.inner_text()
    evaluation = stack.request("GET", f"/v1/evaluations/{evaluation_id}")
    assert evaluation["status"] == JobStatus.SUCCEEDED
    assert evaluation["model_id"] == model["id"] and evaluation["dataset_id"] == classifier["holdout"]
    assert evaluation["permutation_repeats"] == PERMUTATION_REPEATS_DEFAULT
    assert page.locator("#importance g.bar-row").count() == len(FEATURES)
    assert page.locator("#action-status .status").inner_text() == JobStatus.SUCCEEDED
    assert shown_matrix(page) == evaluation["report"]["confusion_matrix"]["matrix"]
    assert sum(map(sum, shown_matrix(page))) == evaluation["report"]["n_rows"] == 240
    assert page.locator("#report-status").is_hidden()
    # The page's next visit shows the newest evaluation, not the test split.
    page.reload()
    ready(page)
    assert page.locator("#report-source code").first.inner_text() == evaluation_id


@SQLITE
def test_an_evaluation_with_no_shuffles_shows_no_importance(stack, page, classifier):
    model = classifier["model"]
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    shown_before = page.locator("#report-source code").first.inner_text() if page.locator(
        "#report-source code").count() else None
    page.select_option("#dataset-picker", classifier["holdout"])
    page.fill("#shuffles", "0")
    page.click("#evaluate")
    page.wait_for_function("before => { const c = document.querySelector('#report-source code');"
                           " return c && c.textContent.startsWith('ev_') && c.textContent !== before }",
                           arg=shown_before, timeout=WAIT_S * 1000)
    evaluation = stack.request("GET", f"/v1/evaluations/{page.locator('#report-source code').first.inner_text()}")
    assert evaluation["status"] == JobStatus.SUCCEEDED and evaluation["permutation_repeats"] == 0
    assert evaluation["report"]["permutation_importance"] is None
    # The report is drawn, but the importance card has no bars and says why.
    assert shown_matrix(page) == evaluation["report"]["confusion_matrix"]["matrix"]
    assert page.locator("#importance g.bar-row").count() == 0
    assert page.evaluate("() => 'importance' in window.dashboard.plots") is False
    card = page.locator("#report-charts section", has=page.locator("#importance")).inner_text()
    assert "Not computed for this report (permutation_repeats 0)" in card
    assert "no permutation importance" in page.locator("#report-source").inner_text()


@SQLITE
def test_the_model_page_pages_through_evaluations_to_the_newest_succeeded(stack, page, classifier):
    model = classifier["model"]
    created = stack.request("POST", f"/v1/models/{model['id']}/evaluations", expect=202,
                            json={"dataset_id": classifier["holdout"], "permutation_repeats": 0})
    newest_succeeded = wait_scoring(stack, f"/v1/evaluations/{created['id']}")
    # The list's first page holds only failed evaluations (newer than any real one); its cursor leads to
    # the real list. The page must read on to find the newest succeeded one.
    summary = {key: value for key, value in newest_succeeded.items() if key != "report"}
    failed = [{**summary, "id": f"ev_zzfailed{k:02d}", "status": JobStatus.FAILED, "error": "lost",
               "metrics": None} for k in range(3)]
    asked: list[str] = []

    def first_page_failed(route: Any, request: Any) -> None:
        asked.append(request.url)
        if "cursor=" not in request.url:
            route.fulfill(status=200, content_type="application/json",
                          body=json.dumps({"items": failed, "next_cursor": "ev_zzfailed00"}))
        else:
            route.continue_(url=re.sub(r"&?cursor=[^&]*", "", request.url))

    page.route(re.compile(rf"/v1/models/{model['id']}/evaluations\?"), first_page_failed)
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    assert len(asked) == 2 and "cursor=ev_zzfailed00" in asked[1], asked
    assert page.locator("#report-source code").first.inner_text() == newest_succeeded["id"]
    assert shown_matrix(page) == newest_succeeded["report"]["confusion_matrix"]["matrix"]
    assert page.locator("#action-status").is_hidden()  # the newest listed ended: nothing to follow


@SQLITE
def test_a_batch_prediction_ends_with_a_download_link(stack, page, classifier):
    model = classifier["model"]
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    page.select_option("#dataset-picker", classifier["holdout"])
    page.select_option("#batch-format", "csv")
    page.click("#batch-predict")
    link = page.locator("#download")
    link.wait_for(timeout=WAIT_S * 1000)
    batch_id = link.get_attribute("download").removesuffix(".csv")
    assert batch_id.startswith("bp_")
    assert page.locator("#batch-result .status").inner_text() == JobStatus.SUCCEEDED
    assert "240 rows" in page.locator("#batch-result").inner_text()
    with page.expect_download() as download:
        link.click()
    text = Path(download.value.path()).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [*FEATURES, "level", "prediction", *[f"probability_{c}" for c in model["classes"]]]
    assert len(rows) == 1 + 240
    assert all(row[len(FEATURES) + 1] in CLASSES for row in rows[1:])


@SQLITE
def test_the_model_page_shows_a_regression_report(stack, page, regressor):
    model, evaluation = regressor["model"], regressor["evaluation"]
    report = evaluation["report"]
    page.goto(f"/ui/models/{model['id']}")
    ready(page)
    assert page.locator("#report-source code").first.inner_text() == evaluation["id"]
    assert page.evaluate("() => document.body.dataset.report") == "regression"
    # Predicted against actual: a dot per sampled row, and the y = x line.
    (scatter,) = report["predicted_vs_actual"]
    assert plot(page, "pva_0")["series"] == [{"label": "y", "points": len(scatter["actual"])}]
    assert page.locator("#pva-0 circle").count() == len(scatter["actual"]) == 300
    assert page.locator("#pva-0 line.diagonal").count() == 1
    # The residual histogram: a bar per bin, the rows as counted.
    (histogram,) = report["residual_histogram"]
    counts = page.eval_on_selector_all("#residuals-0 rect.hist-bar", "bars => bars.map(b => Number(b.dataset.count))")
    assert counts == histogram["counts"] and sum(counts) == report["n_rows"]
    assert plot(page, "importance")["bars"][0] in ("x0", "x1")  # x2 is noise
    assert page.locator("#per-target tbody tr").count() == 1
    assert page.locator("#confusion").count() == 0
    shoot(page, "model-report-regression.png")


# --- the compare view ----------------------------------------------------------------------------


@SQLITE
def test_the_compare_view_overlays_three_jobs_and_marks_what_differs(stack, page, three_jobs):
    ids = [job["id"] for job in three_jobs]
    page.goto("/ui")
    for job_id in ids:
        page.check(f'#jobs tr[data-job-id="{job_id}"] input.pick')
    assert page.locator("#compare").is_enabled()
    page.click("#compare")
    page.wait_for_url("**/ui/compare?jobs=*")
    ready(page)
    for chart in ("compare_loss", "compare_val_loss"):
        labels = page.evaluate("name => window.dashboard.charts[name].series.slice(1).map(s => s.label)", chart)
        assert labels == ids, chart
        colours = page.evaluate("name => { const u = window.dashboard.charts[name]; return u.series.slice(1)"
                                ".map((s, i) => typeof s.stroke === 'function' ? s.stroke(u, i + 1) : s.stroke) }",
                                chart)
        assert len(set(colours)) == 3, colours
    # Epochs 1..12: the third job's curve stops at 8.
    data = page.evaluate("() => window.dashboard.charts.compare_loss.data")
    assert data[0] == list(range(1, 13))
    assert [sum(v is not None for v in ys) for ys in data[1:]] == [12, 12, 8]

    def marks(field: str) -> list[bool]:
        row = page.locator(f'#compare-table tr[data-field="{field}"] td')
        return [("differs" in (row.nth(k).get_attribute("class") or "")) for k in range(row.count())]

    assert marks("training.learning_rate") == [False, True, True]
    assert marks("training.epochs") == [False, False, True]
    assert marks("training.batch_size") == [False, False, False]
    assert marks("final.loss") == [False, True, True]
    assert marks("job.dataset") == [False, False, False]
    rate = page.locator('#compare-table tr[data-field="training.learning_rate"] td').nth(2).inner_text()
    assert rate == "0.05 (+0.04)"
    # The test section: each model's test-split metrics, a differing one marked with its signed difference.
    assert page.locator("#compare-table tr.section th").all_text_contents() == ["job", "training", "final", "test"]
    assert marks("training.test_split") == [False, False, False]
    tests = [stack.request("GET", f"/v1/models/{job['model_id']}")["metrics"]["test"]["metrics"] for job in three_jobs]
    assert len({t["log_loss"] for t in tests}) > 1, tests
    for field in ("accuracy", "balanced_accuracy", "log_loss", "roc_auc_macro"):
        values = [t[field] for t in tests]
        assert marks(f"test.{field}") == [v != values[0] for v in values], field
        cells = page.locator(f'#compare-table tr[data-field="test.{field}"] td').all_inner_texts()
        for value, text in zip(values, cells):
            shown, _, delta = text.partition(" (")
            assert float(shown) == pytest.approx(value, rel=1e-3), (field, text)
            if value == values[0]:
                assert delta == "", (field, text)
            else:
                assert re.fullmatch(r"[+-][0-9.e+-]+\)", delta), (field, text)
                assert float(delta[:-1]) == pytest.approx(value - values[0], rel=5e-3), (field, text)
                assert delta.startswith("+" if value > values[0] else "-"), (field, text)
    assert page.locator(".legend .differs").is_visible()
    shoot(page, "compare.png")


@SQLITE
@pytest.mark.parametrize("count", [COMPARE_MIN_JOBS - 1, COMPARE_MAX_JOBS + 1])
def test_the_compare_view_says_how_many_jobs_it_takes(stack, page, three_jobs, count):
    # Too few: a real job; too many: the count is refused before any job is read.
    ids = [three_jobs[0]["id"]] if count < COMPARE_MIN_JOBS else [f"job_{k}" for k in range(count)]
    page.goto(f"/ui/compare?jobs={','.join(ids)}")
    ready(page)
    message = page.locator("#compare-error").inner_text()
    assert f"{COMPARE_MIN_JOBS} to {COMPARE_MAX_JOBS} jobs" in message and f"names {count}." in message
    assert page.locator("#compare-charts").is_hidden()
    assert page.evaluate("() => Object.keys(window.dashboard.charts)") == []
    # ...and the jobs list's button only takes a number in range.
    page.goto("/ui")
    page.check(f'#jobs tr[data-job-id="{three_jobs[0]["id"]}"] input.pick')
    assert page.locator("#compare").is_disabled()
