"""/metrics: HTTP traffic by route, jobs by status, queue depth, throughput, model cache counts."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp, run_job, set_row, submit

MLP = mlp((4,))


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Return {(sample name, sorted labels): value} of one scrape."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def requests(samples, route: str, status: str, method: str = "GET") -> float:
    key = ("backprop_http_requests_total", (("method", method), ("route", route), ("status", status)))
    return samples.get(key, 0.0)


def test_requests_are_counted_by_url_rule_and_status(client):
    client.get("/v1/jobs/job_a")
    client.get("/v1/jobs/job_b")
    client.get("/no/such/path")
    samples = scrape(client)
    assert requests(samples, "/v1/jobs/<job_id>", "404") == 2
    assert requests(samples, "<unmatched>", "404") == 1
    assert samples[("backprop_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/v1/jobs/<job_id>")))] == 2


def test_jobs_by_status_cache_and_fast_lane(client, app, upload_csv):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    job_ids = [submit(client, dataset["id"], MLP, epochs=2) for _ in range(2)]
    client.post(f"/v1/jobs/{job_ids[1]}/cancel")
    assert run_job(app, job_ids[0], owner="w") == "succeeded"
    samples = scrape(client)
    jobs = {dict(labels)["status"]: v for (name, labels), v in samples.items() if name == "backprop_jobs"}
    assert jobs == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1}
    assert samples[("backprop_training_samples_per_second", ())] == 0  # nothing running
    assert samples[("backprop_model_cache_misses_total", ())] == 0

    model_id = client.get(f"/v1/jobs/{job_ids[0]}").get_json()["model_id"]
    for _ in range(3):  # a miss (load), then fresh hits answered by the fast lane
        assert client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0, 0, 0, 0]]}).status_code == 200
    samples = scrape(client)
    assert samples[("backprop_model_cache_misses_total", ())] == 1
    assert samples[("backprop_model_cache_hits_total", ())] == 2
    assert requests(samples, "/v1/models/<model_id>/predict", "200", "POST") == 3


def test_running_jobs_report_their_latest_throughput(client, app, upload_csv):
    from service.core.db.tables import JobEpoch

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    job_id = submit(client, dataset["id"], MLP)
    set_row(app, job_id, status="running")
    with app.extensions["backprop.sessions"]() as session:
        session.add_all([JobEpoch(job_id=job_id, epoch=1, record={"epoch": 1, "samples_per_second": 10.0}),
                         JobEpoch(job_id=job_id, epoch=2, record={"epoch": 2, "samples_per_second": 250.0})])
        session.commit()
    assert scrape(client)[("backprop_training_samples_per_second", ())] == 250.0


def test_embedded_broker_depth_is_read_from_its_tables(client, app, tmp_path):
    from sqlalchemy import create_engine, text

    path = tmp_path / "broker.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE kombu_queue (id INTEGER PRIMARY KEY, name TEXT)"))
        connection.execute(text("CREATE TABLE kombu_message (id INTEGER PRIMARY KEY, queue_id INTEGER, "
                                "visible BOOLEAN)"))
        connection.execute(text("INSERT INTO kombu_queue VALUES (1, 'cpu'), (2, 'gpu')"))
        connection.execute(text("INSERT INTO kombu_message VALUES (1, 1, 1), (2, 1, 1), (3, 1, 0)"))
    engine.dispose()
    app.config["CELERY_BROKER_URL"] = f"sqla+sqlite:///{path}"
    samples = scrape(client)
    assert samples[("backprop_queue_depth", (("queue", "cpu"),))] == 2
    assert samples[("backprop_queue_depth", (("queue", "gpu"),))] == 0


def test_redis_queue_depth_is_the_list_length(client, app):
    import redis

    from tests.conftest import require_redis

    # Database 13, which no fixture uses, so no live worker's queue is touched.
    url = require_redis().rstrip("/") + "/13"
    connection = redis.Redis.from_url(url)
    connection.delete("cpu", "gpu")
    connection.rpush("gpu", "a", "b", "c")
    try:
        app.config["CELERY_BROKER_URL"] = url
        samples = scrape(client)
        assert samples[("backprop_queue_depth", (("queue", "gpu"),))] == 3
        assert samples[("backprop_queue_depth", (("queue", "cpu"),))] == 0
    finally:
        connection.delete("gpu")
        connection.close()
