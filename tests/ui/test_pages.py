"""The dashboard's page shells, without a browser (tests/e2e/test_dashboard.py drives one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backprop import FLAG_EXPLANATIONS

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "service" / "ui" / "static" / "vendor"


def test_the_root_serves_the_dashboard_to_a_browser(client):
    response = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert 'data-page="jobs"' in response.text
    assert "Accept" in response.headers["Vary"]


def test_the_root_gives_anything_else_a_json_index(client):
    for accept in (None, "*/*", "application/json", "application/json, text/html;q=0.5"):
        response = client.get("/", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200 and response.mimetype == "application/json", accept
        links = response.get_json()["links"]
        assert links["dashboard"] == "/ui" and links["docs"] == "/docs" and links["jobs"] == "/v1/jobs"
        assert "Accept" in response.headers["Vary"]


def test_pages_render_the_id_from_the_url_escaped_and_nothing_tenant_owned(client):
    response = client.get("/ui/jobs/%22%3E%3Cscript%3Ealert(1)%3C")
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.text
    assert 'data-job-id="&#34;&gt;&lt;script&gt;alert(1)&lt;"' in response.text
    response = client.get("/ui/models/mdl_x")
    assert response.status_code == 200 and 'data-model-id="mdl_x"' in response.text
    # A page does not look the id up: an unknown id is the page's JavaScript's 404 to show.
    assert client.get("/ui/jobs/job_nope").status_code == 200


def test_pages_say_whether_the_api_wants_a_key_and_need_none_themselves(app):
    bare = app.test_client()  # no Authorization header at all
    app.config["AUTH"] = "off"
    assert 'data-auth="off"' in bare.get("/ui").text
    app.config["AUTH"] = "on"
    for path in ("/ui", "/ui/jobs/job_x", "/ui/models/mdl_x", "/ui/compare?jobs=job_a,job_b", "/ui/static/dashboard.js",
                 "/ui/static/vendor/uplot/uPlot.iife.min.js"):
        response = bare.get(path)
        assert response.status_code == 200, path
    page = bare.get("/ui").text
    assert 'data-auth="on"' in page and 'id="key-form"' in page


def test_the_flag_sentences_come_from_the_engines_table(client):
    page = client.get("/ui/jobs/job_x").text
    embedded = re.search(r'<script type="application/json" id="flag-explanations">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == FLAG_EXPLANATIONS


def test_the_terminal_statuses_come_from_the_servers_list(client):
    from service.core.statuses import TERMINAL_STATUSES, JobStatus

    page = client.get("/ui/jobs/job_x").text
    embedded = re.search(r'<script type="application/json" id="terminal-statuses">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == ["succeeded", "failed", "cancelled"]
    assert set(json.loads(embedded.group(1))) == TERMINAL_STATUSES
    every = re.search(r'<script type="application/json" id="job-statuses">(.*?)</script>', page, re.S)
    assert json.loads(every.group(1)) == {status.name: status.value for status in JobStatus}
    script = (ROOT / "service" / "ui" / "static" / "dashboard.js").read_text()
    assert '"succeeded", "failed"' not in script  # the page's list is the only one
    # ...and no status is spelled in the script: each comes from the page (STATUS.RUNNING, ...).
    assert not [value for value in JobStatus if f'"{value}"' in script], script


def test_the_compare_views_limits_come_from_the_server(client):
    from service.ui import COMPARE_MAX_JOBS, COMPARE_MIN_JOBS

    for path in ("/ui", "/ui/compare?jobs=job_a"):
        page = client.get(path).text
        embedded = re.search(r'<script type="application/json" id="compare-limits">(.*?)</script>', page, re.S)
        assert json.loads(embedded.group(1)) == {"min": COMPARE_MIN_JOBS, "max": COMPARE_MAX_JOBS}
    page = client.get("/ui/compare?jobs=job_a").text
    assert 'data-page="compare"' in page
    assert f"{COMPARE_MIN_JOBS} to {COMPARE_MAX_JOBS} of them" in " ".join(page.split())
    # The page renders no job id of the query: its script reads them from the URL.
    assert "job_a" not in page


def test_the_pages_load_only_vendored_scripts_and_styles(client):
    for path in ("/ui", "/ui/jobs/job_x", "/ui/models/mdl_x", "/ui/compare"):
        page = client.get(path).text
        sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
        assert sources and all(s.startswith("/ui/static/") or s.startswith("data:") for s in sources), sources
        for source in sources:
            if source.startswith("/ui/static/"):
                assert client.get(source).status_code == 200, source


def test_the_vendored_chart_library_comes_with_its_licence_and_version():
    readme = (VENDOR / "README.md").read_text()
    version = re.search(r"uPlot (\d+\.\d+\.\d+)", readme).group(1)
    header = (VENDOR / "uplot" / "uPlot.iife.min.js").read_text()[:100]
    assert f"https://github.com/leeoniya/uPlot (v{version})" in header
    assert "MIT License" in (VENDOR / "uplot" / "LICENSE").read_text()


def test_one_table_explains_the_flags_for_the_engine_the_cli_and_the_docs():
    import numpy as np

    import backprop
    from service.client import cli

    assert set(FLAG_EXPLANATIONS) == {"vanishing_gradients", "exploding_gradients", "saturation"}
    # The CLI has no table (nor thresholds) of its own: the engine's epoch record says which
    # layers raised each flag and what the flag means.
    assert not hasattr(cli, "FLAG_EXPLANATIONS") and not hasattr(cli.Watcher, "layers_of")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 100)).astype(np.float32), np.arange(64) % 2
    # Weights of std 1 on 100 inputs: most sigmoid outputs sit at 0 or 1.
    network = backprop.build({"layers": [{"type": "dense", "units": 32, "activation": "sigmoid", "init": "normal"},
                                         {"type": "dense", "units": 2}]}, 100)
    (record,) = backprop.train(network, X, y, epochs=1)
    assert record["flags"] == ["saturation"]
    assert record["flag_details"] == {"saturation": {"layers": ["dense_0"],
                                                     "explanation": FLAG_EXPLANATIONS["saturation"]}}
    text = " ".join((ROOT / "docs" / "dashboard.md").read_text().split())
    for flag, sentence in FLAG_EXPLANATIONS.items():
        assert f"`{flag}`" in text and sentence in text, flag


def test_the_readme_and_docs_operations_give_the_same_prometheus_scrape():
    import yaml

    def snippet(path: Path) -> dict[str, Any]:
        blocks = re.findall(r"```yaml\n(.*?)```", path.read_text(), re.DOTALL)
        (block,) = [b for b in blocks if "prometheus" in b]
        return yaml.safe_load(block)

    readme, operations = snippet(ROOT / "README.md"), snippet(ROOT / "docs" / "operations.md")
    assert readme == operations
    scrape = yaml.safe_load(readme["configs"]["prometheus"]["content"])["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["api:8000"]
