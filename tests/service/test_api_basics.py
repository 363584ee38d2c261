"""Health, readiness, OpenAPI, /docs, and problem+json for every kind of error."""

from __future__ import annotations

from tests.helpers import problem


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_checks_database_and_broker(client, queue):
    body = client.get("/readyz").get_json()
    assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}
    queue.down = True
    body = problem(client.get("/readyz"), 503)
    assert "broker" in body["detail"]


def test_readyz_with_the_real_sqlalchemy_broker(tmp_path, sqlite_template):
    import shutil

    from service import create_app

    shutil.copy(sqlite_template, tmp_path / "backprop.db")
    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'backprop.db'}",
                      "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                      "UPGRADE_ON_START": False})
    assert app.test_client().get("/readyz").get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_is_generated_from_the_request_schemas(client):
    from service.core.schemas import JobCreate, TrainingSchema

    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    schemas = spec["components"]["schemas"]
    training = schemas["Training"]["properties"]
    assert training["batch_size"]["minimum"] == 1 and training["epochs"]["maximum"] == 100_000
    assert set(training) == set(TrainingSchema.model_fields)
    assert set(schemas["JobCreate"]["properties"]) == set(JobCreate.model_fields)
    assert "/v1/models/{model_id}/predict" in spec["paths"]
    refs = str(spec["paths"])
    for name in ("JobCreate", "PredictRequest", "DatasetJson", "DatasetUpload", "NetworkDefinition"):
        assert f"#/components/schemas/{name}" in refs


def test_docs_page_is_offline(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "openapi.json" in html and "http://" not in html and "https://" not in html


def test_http_errors_are_problems(client):
    assert problem(client.get("/v1/nothing"), 404)["type"] == "about:blank"
    response = client.delete("/healthz")
    problem(response, 405)
    assert "GET" in response.headers["Allow"]


def test_create_app_upgrades_sqlite_on_start(tmp_path):
    from sqlalchemy import inspect

    from service import create_app

    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"})
    names = set(inspect(app.extensions["backprop.engine"]).get_table_names())
    assert {"datasets", "dataset_payloads", "networks", "jobs", "job_epochs", "job_checkpoints",
            "models", "alembic_version"} <= names


def test_flask_db_upgrade_command(tmp_path):
    from sqlalchemy import create_engine, inspect

    from service import create_app

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": url, "UPGRADE_ON_START": False})
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "jobs" in inspect(create_engine(url)).get_table_names()


def test_openapi_lists_every_route(client):
    """The document is written per path: a route added without it would be invisible to users."""
    paths = client.get("/openapi.json").get_json()["paths"]
    for rule in client.application.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            path = rule.rule.replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in paths.get(path, {}), f"{method} {path} missing from /openapi.json"
