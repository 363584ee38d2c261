"""Tenancy: keys, who sees what, per-tenant limits, AUTH=off, and the keys/tenants commands.

The route lists come from the app's url_map, so a new /v1 route that forgets the
tenant (or the key) fails here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from service.api import models as models_api
from service.core.db.tables import Dataset, DatasetPayload, Job, Network, TrainedModel
from tests.conftest import BLOBS_COLUMNS, blobs_rows, client_with_key, csv_text
from tests.helpers import both_databases, give_model, mlp, problem, run_job, submit

MLP = mlp((4,), "tanh")
TRAINING = {"epochs": 2, "batch_size": 16}
# Which of alice's resources a path parameter names.
PARAMETER_KINDS = {"dataset_id": "dataset", "network_id": "network", "job_id": "job", "model_id": "model",
                   "evaluation_id": "evaluation", "batch_prediction_id": "batch_prediction"}


def v1_rules(app: Any) -> list[tuple[str, str, Any]]:
    """Return (method, rule text, rule) of every /v1 route."""
    return sorted((method, rule.rule, rule) for rule in app.url_map.iter_rules()
                  if rule.rule.startswith("/v1/") for method in rule.methods - {"HEAD", "OPTIONS"})


def upload(client: Any, rows: list[list[Any]] | None = None, **fields: str) -> dict[str, Any]:
    import io

    data = csv_text(BLOBS_COLUMNS, rows or blobs_rows(60)).encode()
    response = client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.csv"), **fields},
                           content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def start_job(client: Any, dataset_id: str, **extra: Any) -> Any:
    """POST a job of MLP on the dataset; return the response (a test may expect it refused)."""
    return client.post("/v1/jobs", json={"dataset_id": dataset_id, "network": MLP, "training": TRAINING, **extra})


@pytest.fixture
def alice(client: Any, app: Any) -> dict[str, str]:
    """Alice's dataset, network, a job that is still queued, a finished job's model, and a queued
    evaluation and batch prediction of it."""
    dataset = upload(client)
    network = client.post("/v1/networks", json=MLP).get_json()
    done = submit(client, dataset["id"], MLP, **TRAINING)
    assert run_job(app, done) == "succeeded"
    model_id = client.get(f"/v1/jobs/{done}").get_json()["model_id"]
    queued = submit(client, dataset["id"], MLP, **TRAINING)
    evaluation = client.post(f"/v1/models/{model_id}/evaluations", json={"dataset_id": dataset["id"]}).get_json()
    batch = client.post(f"/v1/models/{model_id}/batch-predictions", json={"dataset_id": dataset["id"]}).get_json()
    return {"dataset": dataset["id"], "network": network["id"], "job": queued, "done_job": done,
            "model": model_id, "evaluation": evaluation["id"], "batch_prediction": batch["id"]}


def url_for_rule(rule: Any, ids: dict[str, str]) -> str:
    """Fill a rule's parameters with the ids of alice's resources."""
    unknown = set(rule.arguments) - set(PARAMETER_KINDS)
    assert not unknown, (f"{rule.rule} takes {unknown}: add the kind to PARAMETER_KINDS so that this test "
                         f"checks its tenancy")
    url = rule.rule
    for argument in rule.arguments:
        url = url.replace(f"<{argument}>", ids[PARAMETER_KINDS[argument]])
    return url


def call(client: Any, method: str, url: str) -> Any:
    """Send the request a route expects (a predict body, or a scoring job's, where it takes one)."""
    body = {"inputs": [[1.0, 2.0, 3.0, 4.0]]} if url.endswith("/predict") else None
    if method == "POST" and url.endswith(("/evaluations", "/batch-predictions")):
        body = {"dataset_id": "ds_0000nothere"}  # valid by the schema: the model is looked up next
    return client.open(url, method=method, json=body)


def state(app: Any) -> dict[str, Any]:
    """Everything stored, for checking that a refused request changed nothing."""
    with app.extensions["backprop.sessions"]() as session:
        return {
            "datasets": sorted(session.scalars(select(Dataset.id))),
            "payloads": sorted(session.scalars(select(DatasetPayload.sha256))),
            "networks": sorted(session.scalars(select(Network.id))),
            "jobs": sorted(session.execute(select(Job.id, Job.status, Job.cancel_requested)).all()),
            "models": sorted(session.scalars(select(TrainedModel.id))),
        }


# --- who sees what ------------------------------------------------------------------------------


@both_databases
def test_every_route_with_an_id_is_404_for_another_tenant(app, alice, client, bob_client):
    app.config["EVENTS_MAX_S"] = 0  # alice's own event stream ends after one poll
    routes = [(m, r) for m, _text, r in v1_rules(app) if r.arguments]
    checked = {text for _m, text, _r in v1_rules(app) if _r.arguments}
    assert {"/v1/datasets/<dataset_id>", "/v1/networks/<network_id>", "/v1/jobs/<job_id>",
            "/v1/jobs/<job_id>/metrics", "/v1/jobs/<job_id>/events", "/v1/jobs/<job_id>/cancel",
            "/v1/models/<model_id>", "/v1/models/<model_id>/predict",
            "/v1/models/<model_id>/export"} <= checked
    before = state(app)
    for method, rule in routes:
        url = url_for_rule(rule, alice)
        body = problem(call(bob_client, method, url), 404)
        # The very answer a missing id gets: nothing says the id exists.
        missing = url_for_rule(rule, {k: f"{k[:3]}_0000nothere" for k in alice})
        assert body["title"] == problem(call(bob_client, method, missing), 404)["title"]
        assert any(alice[PARAMETER_KINDS[a]] in body["detail"] for a in rule.arguments)
    assert state(app) == before  # bob's deletes and cancel changed nothing
    # The same requests from alice reach her resources: reads and predict first, deletes last.
    for method, rule in sorted(routes, key=lambda item: item[0] == "DELETE"):
        response = call(client, method, url_for_rule(rule, alice))
        assert response.status_code not in (401, 404) and response.status_code < 500, (
            method, rule.rule, response.status_code, response.get_data(as_text=True)[:300])


@both_databases
def test_lists_show_only_the_tenants_own(alice, client, bob_client):
    bob_dataset = upload(bob_client, blobs_rows(40, seed=3))
    for path, own in [("/v1/datasets", alice["dataset"]), ("/v1/networks", alice["network"]),
                      ("/v1/jobs", alice["job"]), ("/v1/jobs?status=queued", alice["job"]),
                      ("/v1/models", alice["model"])]:
        mine = [item["id"] for item in client.get(path).get_json()["items"]]
        theirs = [item["id"] for item in bob_client.get(path).get_json()["items"]]
        assert own in mine and own not in theirs, path
        assert not set(mine) & set(theirs), path
    assert [d["id"] for d in bob_client.get("/v1/datasets").get_json()["items"]] == [bob_dataset["id"]]


def test_a_job_cannot_use_another_tenants_dataset_network_or_model(app, alice, bob_client, queue):
    before = state(app)
    published = list(queue.published)
    body = problem(start_job(bob_client, alice["dataset"]), 422)
    assert body["errors"][0]["field"] == "dataset_id" and "no dataset" in body["errors"][0]["message"]
    assert state(app) == before and queue.published == published

    own = upload(bob_client, blobs_rows(40, seed=3))
    before = state(app)
    response = bob_client.post("/v1/jobs", json={"dataset_id": own["id"], "network_id": alice["network"]})
    assert problem(response, 422)["errors"][0]["field"] == "network_id"
    response = bob_client.post("/v1/jobs", json={"dataset_id": own["id"], "init_from_model": alice["model"]})
    assert problem(response, 422)["errors"][0]["field"] == "init_from_model"
    # A network checked against another tenant's dataset: the dataset is not there.
    response = bob_client.post(f"/v1/networks/validate?dataset_id={alice['dataset']}", json=MLP)
    assert problem(response, 422)["errors"][0]["field"] == "dataset_id"
    assert state(app) == before


def test_predict_fast_lane_checks_the_key_and_the_tenant(app, alice, client, bob_client, anonymous_client,
                                                         monkeypatch):
    app.extensions["backprop.models"].recheck_s = 3600  # the cached model stays fresh: the lane may answer
    view_calls: list[str] = []
    original = models_api._predictor
    monkeypatch.setattr(models_api, "_predictor", lambda model_id: view_calls.append(model_id) or original(model_id))
    url = f"/v1/models/{alice['model']}/predict"
    rows = {"inputs": [r[:4] for r in blobs_rows(3)]}
    first = client.post(url, json=rows)
    assert first.status_code == 200 and view_calls == [alice["model"]]  # loaded by the view
    assert client.post(url, json=rows).get_json() == first.get_json()
    assert view_calls == [alice["model"]]  # answered by the fast lane
    # Another tenant, no key, a bad key: the lane steps aside and the view refuses.
    problem(bob_client.post(url, json=rows), 404)
    problem(anonymous_client.post(url, json=rows), 401)
    problem(client_with_key(app, "bp_not-a-key").post(url, json=rows), 401)
    assert len(view_calls) == 2  # bob reached the view; 401s stop before it


def test_predict_through_flask_is_404_for_another_tenant(app, alice, client, bob_client):
    app.extensions["backprop.models"].recheck_s = 0  # never fresh: every request goes through the view
    url = f"/v1/models/{alice['model']}/predict"
    assert client.post(url, json={"records": [{"a": 1, "b": 2, "c": 3, "d": 4}]}).status_code == 200
    problem(bob_client.post(url, json={"records": [{"a": 1, "b": 2, "c": 3, "d": 4}]}), 404)
    problem(bob_client.post(url, data="a,b,c,d\n1,2,3,4\n", content_type="text/csv"), 404)


@both_databases
def test_deleting_a_dataset_keeps_a_payload_another_tenant_uses(app, client, bob_client):
    rows = blobs_rows(50, seed=7)
    mine, theirs = upload(client, rows), upload(bob_client, rows)
    assert mine["sha256"] != theirs["sha256"]  # payloads are addressed per tenant (tests/service/test_quotas.py)
    # Shared as payloads stored before that were: one payload for both tenants' datasets.
    with app.extensions["backprop.sessions"]() as session:
        session.get(Dataset, theirs["id"]).payload_sha256 = mine["sha256"]
        session.commit()
    assert bob_client.delete(f"/v1/datasets/{theirs['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{mine['id']}").get_json()["size_bytes"] > 0
    with app.extensions["backprop.sessions"]() as session:
        assert session.get(DatasetPayload, mine["sha256"]) is not None
    assert start_job(client, mine["id"]).status_code == 202
    assert client.delete(f"/v1/datasets/{mine['id']}").status_code == 409  # the job needs it


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6eA==", "bp_x",
                                    "Bearer two words", "Bearer bp_unknown"])
def test_every_v1_route_needs_a_good_key(app, header):
    anonymous = client_with_key(app, None)
    headers = {} if header is None else {"Authorization": header}
    rules = v1_rules(app)
    assert len(rules) >= 15
    for method, _text, rule in rules:
        url = url_for_rule(rule, {kind: f"{kind}_x" for kind in PARAMETER_KINDS.values()})
        response = anonymous.open(url, method=method, headers=headers, json={})
        body = problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert body["errors"] == [{"field": "Authorization", "message": body["detail"]}]
    problem(anonymous.get("/v1/nowhere", headers=headers), 401)  # no route is no excuse
    if not header:
        assert "Authorization: Bearer KEY" in body["detail"] and "keys create" in body["detail"]


def test_routes_outside_v1_need_no_key(anonymous_client):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/ui"):
        assert anonymous_client.get(path).status_code == 200, path


def test_keys_cli_create_list_revoke(app):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--tenant", "carol"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("bp_") and "\n" not in key and len(key) > 40  # the key alone on stdout
    assert "only this once" in created.stderr
    carol = client_with_key(app, key)
    assert carol.get("/v1/datasets").status_code == 200
    upload(carol)

    listed = runner.invoke(args=["keys", "list"])
    assert listed.exit_code == 0 and "carol" in listed.stdout and key not in listed.output
    key_id = next(line.split()[0] for line in listed.stdout.splitlines() if " carol " in line)
    assert key_id.startswith("key_")
    with app.extensions["backprop.sessions"]() as session:  # stored as its sha256, never itself
        from service.core.db.tables import ApiKey
        from service.core.tenancy.keys import hash_key

        assert session.get(ApiKey, key_id).key_hash == hash_key(key)
        assert session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.key_hash == key)) == 0

    revoked = runner.invoke(args=["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    body = problem(carol.get("/v1/datasets"), 401)
    assert "revoked" in body["detail"]
    line = next(line for line in runner.invoke(args=["keys", "list"]).stdout.splitlines()
                if line.startswith(key_id))
    assert line.split()[-1] != "-"  # the REVOKED column has a time
    unknown = runner.invoke(args=["keys", "revoke", "key_nothere"])
    assert unknown.exit_code == 1 and "no key" in unknown.output
    bad = runner.invoke(args=["keys", "create", "--tenant", "no spaces"])
    assert bad.exit_code == 2 and "tenant name" in bad.output


def test_a_revoked_key_works_until_the_cache_forgets_it(app, api_keys, client):
    """Revocation from another process takes effect within the key cache's TTL."""
    from service.core.db.tables import ApiKey
    from service.core.ids import utcnow

    assert client.get("/v1/jobs").status_code == 200  # alice's key is cached now
    with app.extensions["backprop.sessions"]() as session:
        for key in session.scalars(select(ApiKey).where(ApiKey.tenant_id == "alice")):
            key.revoked_at = utcnow()
        session.commit()
    assert client.get("/v1/jobs").status_code == 200  # within the TTL
    app.extensions["backprop.keys"].clear()  # the TTL passing
    problem(client.get("/v1/jobs"), 401)


def test_auth_off_needs_no_key_and_everything_is_the_default_tenant(app, alice, anonymous_client):
    app.config["AUTH"] = "off"
    assert anonymous_client.get("/v1/datasets").get_json()["items"] == []  # alice's are alice's
    dataset = upload(anonymous_client)
    assert [d["id"] for d in anonymous_client.get("/v1/datasets").get_json()["items"]] == [dataset["id"]]
    with app.extensions["backprop.sessions"]() as session:
        assert session.get(Dataset, dataset["id"]).tenant_id == "default"
    # A key is ignored, not refused.
    assert client_with_key(app, "bp_whatever").get(f"/v1/datasets/{dataset['id']}").status_code == 200


def test_start_up_says_how_requests_are_authenticated(app, caplog):
    from service.api.auth import _startup_notes

    with caplog.at_level(logging.WARNING, logger="service.api.auth"):
        _startup_notes(app)  # AUTH=on and no key yet
    assert "keys create --tenant NAME" in caplog.text and "401" in caplog.text
    caplog.clear()
    app.config["AUTH"] = "off"
    with caplog.at_level(logging.WARNING, logger="service.api.auth"):
        _startup_notes(app)
    assert "AUTH=off" in caplog.text and "'default'" in caplog.text and "127.0.0.1" in caplog.text


def test_start_up_is_quiet_about_keys_once_one_exists(app, api_keys, caplog):
    from service.api.auth import _startup_notes

    with caplog.at_level(logging.WARNING, logger="service.api.auth"):
        _startup_notes(app)
    assert caplog.text == ""


def test_a_bad_auth_setting_is_an_error_at_start():
    from service.core.settings import load_config

    with pytest.raises(ValueError, match="AUTH must be on or off"):
        load_config({"AUTH": "yes"})
    assert load_config({})["AUTH"] == "on" and load_config({"AUTH": "OFF"})["AUTH"] == "off"
    with pytest.raises(ValueError, match="TENANT_MAX_CONCURRENT_JOBS"):
        load_config({"TENANT_MAX_CONCURRENT_JOBS": "0"})


# --- limits -------------------------------------------------------------------------------------


@both_databases
def test_too_many_jobs_is_429_naming_the_limit(app, client, bob_client, queue):
    app.config["TENANT_MAX_CONCURRENT_JOBS"] = 2
    dataset = upload(client)
    first = start_job(client, dataset["id"]).get_json()
    assert start_job(client, dataset["id"]).status_code == 202
    before, published = state(app), list(queue.published)
    response = start_job(client, dataset["id"])
    body = problem(response, 429)
    assert int(response.headers["Retry-After"]) > 0
    assert "tenant alice has 2 jobs queued or running" in body["detail"]
    assert "the limit (TENANT_MAX_CONCURRENT_JOBS) is 2" in body["detail"]
    assert body["errors"][0]["field"] == "TENANT_MAX_CONCURRENT_JOBS"
    assert state(app) == before and queue.published == published
    # The limit is per tenant, and a slot frees up when a job ends.
    assert start_job(bob_client, upload(bob_client)["id"]).status_code == 202
    client.post(f"/v1/jobs/{first['id']}/cancel")
    assert start_job(client, dataset["id"]).status_code == 202


@both_databases
def test_concurrent_jobs_of_one_tenant_cannot_share_its_last_slot(app, api_keys, client, queue, monkeypatch):
    """Eight requests at once, each slowed between its count and its commit: exactly the limit pass."""
    from service.core.tenancy import limits

    app.config["TENANT_MAX_CONCURRENT_JOBS"] = 2
    dataset = upload(client)
    count = limits.active_jobs

    def slow_count(session: Any, tenant: str) -> int:
        counted = count(session, tenant)
        time.sleep(0.05)  # without the lock, every request would count 0 here
        return counted

    monkeypatch.setattr(limits, "active_jobs", slow_count)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def post_a_job() -> None:
        own_client = client_with_key(app, api_keys["alice"])
        start.wait()
        statuses.append(start_job(own_client, dataset["id"]).status_code)

    threads = [threading.Thread(target=post_a_job) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [202, 202] + [429] * 6
    assert len(queue.published) == 2


def test_a_tenants_own_limits_override_the_settings(app, client, bob_client):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["tenants", "set-limits", "alice", "--max-jobs", "1"])
    assert result.exit_code == 0 and "max jobs 1" in result.output, result.output
    dataset = upload(client)
    assert start_job(client, dataset["id"]).status_code == 202
    assert "is 1" in problem(start_job(client, dataset["id"]), 429)["detail"]
    other = upload(bob_client)
    assert start_job(bob_client, other["id"]).status_code == 202
    assert start_job(bob_client, other["id"]).status_code == 202  # bob: the setting (8)
    assert runner.invoke(args=["tenants", "set-limits", "alice", "--max-jobs", "default"]).exit_code == 0
    assert start_job(client, dataset["id"]).status_code == 202
    listed = runner.invoke(args=["tenants", "list"])
    assert "alice" in listed.output and "bob" in listed.output
    assert runner.invoke(args=["tenants", "set-limits", "alice", "--max-jobs", "0"]).exit_code == 2
    assert runner.invoke(args=["tenants", "set-limits", "alice"]).exit_code == 2


@both_databases
def test_storage_over_the_limit_is_413_naming_it(app, client, bob_client):
    app.config["TENANT_MAX_STORED_MB"] = 1
    dataset = upload(client)
    give_model(app, "alice", 1024 * 1024 - 1000)  # a little room left, less than a dataset
    before = state(app)
    import io

    data = csv_text(BLOBS_COLUMNS, blobs_rows(200, seed=5)).encode()
    response = client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.csv")},
                           content_type="multipart/form-data")
    body = problem(response, 413)
    assert "TENANT_MAX_STORED_MB" in body["detail"] and "1 MB (1,048,576 bytes)" in body["detail"]
    assert "tenant alice stores" in body["detail"]
    assert body["errors"][0]["field"] == "TENANT_MAX_STORED_MB"
    assert state(app) == before  # neither a dataset nor a payload

    # At the limit, a job (whose model would add weights) is refused too.
    give_model(app, "alice", 1000)
    before = state(app)
    body = problem(start_job(client, dataset["id"]), 413)
    assert "TENANT_MAX_STORED_MB" in body["detail"] and "a job's model" in body["detail"]
    assert state(app) == before
    # Bob's room is his own.
    assert start_job(bob_client, upload(bob_client, blobs_rows(200, seed=5))["id"]).status_code == 202


@both_databases
def test_stored_bytes_count_each_payload_once_and_the_models(app, alice):
    import json

    from service.core.db.tables import JobEpoch
    from service.core.tenancy.limits import stored_bytes

    with app.extensions["backprop.sessions"]() as session:
        payload = session.scalar(select(DatasetPayload.size_bytes))
        weights = session.scalar(select(func.length(TrainedModel.weights)))
        records = sum(len(json.dumps(record)) for record in session.scalars(select(JobEpoch.record)))
        assert records > 0  # and each epoch record as its JSON text
        assert stored_bytes(session, "alice") == payload + weights + records
        assert stored_bytes(session, "bob") == 0
