"""The dashboard: server-rendered page shells whose JavaScript reads the /v1 API.

The templates render nothing that belongs to a tenant: ids come from the URL and
everything else is fetched by the page with the user's API key, so tenancy stays
in the API (docs/dashboard.md).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, render_template, request, url_for

from backprop import FLAG_EXPLANATIONS
from service.core.schemas import MAX_PERMUTATION_REPEATS, PERMUTATION_REPEATS_DEFAULT
from service.core.statuses import TERMINAL_STATUSES, JobStatus

# For the page's JavaScript: every status by name, and those a job never leaves (JobStatus's order).
STATUSES = {status.name: status.value for status in JobStatus}
TERMINAL = [status.value for status in JobStatus if status in TERMINAL_STATUSES]
# How many jobs the compare view puts side by side: two to compare at all; ten curves stay tellable
# apart (the page's palette has ten colours).
COMPARE_MIN_JOBS = 2
COMPARE_MAX_JOBS = 10
COMPARE_LIMITS = {"min": COMPARE_MIN_JOBS, "max": COMPARE_MAX_JOBS}
# The model page's shuffles field starts at the API's default and takes what the API takes.
PERMUTATION_REPEATS = {"default": PERMUTATION_REPEATS_DEFAULT, "max": MAX_PERMUTATION_REPEATS}

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static",
               static_url_path="/ui/static")


def _page(template: str, **context: Any) -> Response:
    """Render a page shell; it says whether the API wants a key and carries the flag table and
    the terminal statuses."""
    response = Response(render_template(template, auth=current_app.config["AUTH"], flag_explanations=FLAG_EXPLANATIONS,
                                        job_statuses=STATUSES, terminal_statuses=TERMINAL,
                                        compare_limits=COMPARE_LIMITS, **context))
    # The shell is the same for everyone, but a stale one may load stale JavaScript.
    response.headers["Cache-Control"] = "no-cache"
    return response


def wants_html() -> bool:
    """Say whether the client prefers HTML to JSON (a browser does; curl and clients do not)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


@bp.get("/")
def index() -> Response | dict[str, Any]:
    """Serve the dashboard to a browser, a small JSON index with links to anything else."""
    if wants_html():
        response = _page("jobs.html")
    else:
        response = current_app.json.response({
            "name": "backprop-service",
            "links": {"dashboard": url_for("ui.jobs"), "docs": url_for("docs.docs_page"),
                      "openapi": url_for("docs.openapi_json"), "datasets": "/v1/datasets",
                      "networks": "/v1/networks", "jobs": "/v1/jobs", "models": "/v1/models",
                      "health": "/healthz", "ready": "/readyz", "metrics": "/metrics"},
        })
    response.vary.add("Accept")
    return response


@bp.get("/ui")
def jobs() -> Response:
    """The jobs list, with the datasets and models."""
    return _page("jobs.html")


@bp.get("/ui/jobs/<job_id>")
def job(job_id: str) -> Response:
    """One job: live progress, curves, gradient norms and health flags."""
    return _page("job.html", job_id=job_id)


@bp.get("/ui/models/<model_id>")
def model(model_id: str) -> Response:
    """One model: its latest evaluation report, evaluate and batch-predict actions, its network as a
    graph and a form that calls /predict."""
    return _page("model.html", model_id=model_id, permutation_repeats=PERMUTATION_REPEATS)


@bp.get("/ui/compare")
def compare() -> Response:
    """Jobs side by side (?jobs=ID,ID,...): their loss curves overlaid and a table of their fields."""
    return _page("compare.html")
