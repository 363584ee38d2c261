"""Fuzz every operation of /openapi.json with schemathesis, through the WSGI app (AUTH on, a key sent).

Two runs, both with schemathesis's default checks and the exceptions of schemathesis.toml
(whose `hooks`, tests/schemathesis_hooks.py, fit valid cases to the rules JSON Schema cannot
state; without BACKPROP_FUZZ_IDS they leave the ids alone, which this test mixes in itself):
- each operation gets generated requests, valid and invalid by its schema, with real ids of
  each kind mixed into the id paths (so they are exercised beyond 404);
- the stateful run follows the document's `links` from the list and create operations to
  those taking the ids they answer (a dataset to its reads, deletes and a job; a job to its
  metrics, events and model; a model to predict and export).
Every answer must be no 5xx and conform to the document: a documented status code, its
content type, its schema, an Allow header naming the route's methods. Derandomized, so CI
sees the same examples as a laptop; FUZZ_EXAMPLES sets the examples per operation and mode.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.conftest import csv_text, pets_rows

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "40"))
# Path parameter -> the kind of resource whose real id it gets (besides generated ones).
ID_PARAMETERS = {"dataset_id": "dataset", "network_id": "network", "job_id": "job", "model_id": "model"}
# Operations whose JSON body refers to other resources by id.
BODY_IDS = {"POST /v1/jobs"}
# Keeps a run reproducible and as short as a passing one (a failure is reported as generated).
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                phases=["explicit", "generate"])


@pytest.fixture
def resources(client: Any, app: Any, upload_csv: Any) -> dict[str, str]:
    """One real dataset, network, finished job and model, made through the API."""
    from workers.training import run_job

    dataset = upload_csv(csv_text(["weight", "color", "pet"], pets_rows(40))).get_json()
    network = client.post("/v1/networks", json={"layers": [{"type": "dense", "units": 2}]}).get_json()
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network_id": network["id"],
                                        "training": {"epochs": 1}}).get_json()
    assert run_job(job["id"], sessions=app.extensions["backprop.sessions"], owner="fuzz") == "succeeded"
    model_id = client.get(f"/v1/jobs/{job['id']}").get_json()["model_id"]
    # A finished job's event stream ends at once; a generated id is a 404 before it starts.
    app.config["EVENTS_MAX_S"] = 1.0
    return {"dataset": dataset["id"], "network": network["id"], "job": job["id"], "model": model_id}


def _headers(client: Any) -> dict[str, str]:
    auth = client.environ_base.get("HTTP_AUTHORIZATION")
    return {"Authorization": auth} if auth else {}


def _operations(schema: Any) -> list[Any]:
    """Every operation, deletions last so that the real ids live as long as possible."""
    operations = [result.ok() for result in schema.get_all_operations()]
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))


def _strategies(operation: Any, mode: GenerationMode, resources: dict[str, str]) -> list[Any]:
    """Generated requests, and the same with real ids where ids go: in the path, in the query
    (`dataset_id` for widths), in a body (a job's `dataset_id` and `network_id`)."""
    strategies = [operation.as_strategy(generation_mode=mode)]
    path = {p.name: resources[ID_PARAMETERS[p.name]] for p in operation.path_parameters
            if p.name in ID_PARAMETERS}
    if path and operation.path.startswith("/v1/"):
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=path))
    if any(p.name == "dataset_id" for p in operation.query):
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=path or None,
                                                query={"dataset_id": resources["dataset"]}))

    def real_body_ids(case: Any) -> Any:
        if isinstance(case.body, dict):
            for key in ("dataset_id", "network_id"):
                if key in case.body:
                    case.body[key] = resources[ID_PARAMETERS[key]]
        return case

    if operation.label in BODY_IDS:
        strategies.append(operation.as_strategy(generation_mode=mode).map(real_body_ids))
    return strategies


def _fuzz(strategy: Any, headers: dict[str, str], excluded: list[Any]) -> None:
    """Call the app with each generated case and run schemathesis's default checks but `excluded`."""

    @settings(max_examples=EXAMPLES, **SETTINGS)
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    run()


def test_fuzz_every_operation(app: Any, client: Any, resources: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    headers = _headers(client)
    operations = _operations(schema)
    assert len(operations) >= 20, [op.label for op in operations]
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not (list(operation.body) or list(operation.query)):
                continue  # only a free-form id in the path: no request is invalid by the schema

            # The default checks. Negative cases made through the Python API may differ from a
            # valid request only by unknown query keys (ignored, as the CLI knows) or by a missing
            # Authorization header, which `headers` puts back: negative_data_rejection would call
            # those accepted invalid requests. The CLI run (docs/service.md) keeps the check.
            excluded = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
            try:
                _fuzz(st.one_of(_strategies(operation, mode, resources)), headers, excluded)
            except (Exception, BaseExceptionGroup) as error:  # report every operation's failures at once
                failures.append(f"{operation.label} ({mode.name}): {error}")
    assert not failures, "\n\n".join(failures)


def test_stateful_links(app: Any, client: Any, resources: dict[str, str]) -> None:
    """Follow the document's links with the default checks, from real resources of the tenant."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # The key as configuration, so that the ignored_auth check knows it is the real one.
    schema.config.update(headers=_headers(client))
    called: set[str] = set()

    sessions = app.extensions["backprop.sessions"]

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        # Each scenario starts from the fixture's rows: Hypothesis replays choices, and a scenario
        # whose requests met rows an earlier one made, deleted or changed (a tenant's job limit
        # reached, a link's target deleted, a dataset deleted once a job on it was cancelled) would
        # draw differently from the same choices (FlakyStrategyDefinition).
        def setup(self) -> None:
            self.rows_before = _rows(sessions)

        def teardown(self) -> None:
            _restore_rows(sessions, self.rows_before)

        def after_call(self, response: Any, case: Any) -> None:
            if response.status_code < 300:
                called.add(case.operation.label)

    Workflow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=8, **SETTINGS))
    # The links reach operations that take ids with real ones: a resource read by the id a link gave.
    by_id = {"GET /v1/models/{model_id}", "GET /v1/jobs/{job_id}", "GET /v1/datasets/{dataset_id}",
             "GET /v1/networks/{network_id}", "GET /v1/evaluations/{evaluation_id}",
             "GET /v1/batch-predictions/{batch_prediction_id}"}
    assert by_id & called, sorted(called)


def _rows(sessions: Any) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every table's rows now, by primary key."""
    from sqlalchemy import select

    from service.core.db.tables import Base

    with sessions() as session:
        return {table.name: {tuple(row[c.name] for c in table.primary_key.columns): dict(row)
                             for row in session.execute(select(table)).mappings()}
                for table in Base.metadata.sorted_tables}


def _restore_rows(sessions: Any, before: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> None:
    """Put every table back as `before` (_rows) held it: the rows made since deleted, children
    before parents; then the rows deleted or changed since written back, parents before children."""
    from sqlalchemy import delete, insert, select, tuple_, update

    from service.core.db.tables import Base

    with sessions() as session:
        for table in reversed(Base.metadata.sorted_tables):
            key = list(table.primary_key.columns)
            made = {tuple(row) for row in session.execute(select(*key))} - set(before[table.name])
            if made:
                session.execute(delete(table).where(tuple_(*key).in_(list(made))))
        for table in Base.metadata.sorted_tables:
            key = list(table.primary_key.columns)
            now = {tuple(row[c.name] for c in key): dict(row) for row in session.execute(select(table)).mappings()}
            for primary, row in before[table.name].items():
                if primary not in now:
                    session.execute(insert(table).values(**row))
                elif now[primary] != row:
                    session.execute(update(table).where(tuple_(*key) == tuple_(*primary)).values(**row))
        session.commit()
