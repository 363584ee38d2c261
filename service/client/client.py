"""A small Python client for the backprop-service REST API.

A plain HTTP client (requests): it imports nothing else of the service, so it
works from a notebook or a script on any machine that can reach the API.

    from service.client import Client

    api = Client("http://127.0.0.1:8000")
    dataset = api.upload_dataset("iris.csv", target="species")
    job = api.create_job(dataset["id"], {"layers": [{"type": "dense", "units": 3}]},
                         training={"epochs": 50})
    job = api.wait_job(job["id"])
    api.predict(job["model_id"], records=[{"sepal_length": 5.1, ...}])

Every method returns the API's JSON (dicts and lists, as docs/service.md shows
them). An error response raises :class:`ApiError` with the problem document's
fields. docs/cli.md describes the client and the ``backprop`` command built on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
# A job's statuses, as the API answers them, and those it never leaves. The client is a
# distributable of its own that imports nothing of the server, and a choice of --status must
# be known without asking the API, so they are spelled here: tests/service/test_client_contract.py
# pins them to the server's service.core.statuses.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
# A batch prediction's file formats (the choices of `predict-batch --format`), spelled here for
# the same reason; pinned to the server's service.core.schemas.BATCH_PREDICTION_FORMATS, the first
# the server's default.
BATCH_PREDICTION_FORMATS = ("csv", "parquet")


class ApiError(Exception):
    """An error response (problem+json): status, title, detail and the fields at fault."""

    def __init__(self, status: int, title: str, detail: str = "",
                 errors: list[dict[str, Any]] | None = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        super().__init__(self.message())

    def message(self) -> str:
        """Say what went wrong in a few lines: the detail, then one line per field at fault."""
        lines = [f"{self.status} {self.title}" + (f": {self.detail}" if self.detail and not self.errors else "")]
        for error in self.errors:
            field = error.get("field") or "(body)"
            node = f" (node {error['node']})" if error.get("node") else ""
            lines.append(f"  {field}{node}: {error.get('message', '')}")
        return "\n".join(lines)

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """Read a problem document, or make one from a response that is not one."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(response.status_code, response.reason or "Error", response.text[:500].strip())
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)] if isinstance(
            body.get("errors"), list) else []
        status = body["status"] if isinstance(body.get("status"), int) else response.status_code
        return cls(status, str(body.get("title") or response.reason),
                   str(body.get("detail") or ""), errors)


class Client:
    """The REST API of one backprop-service, over HTTP.

    ``api_key`` is sent as ``Authorization: Bearer KEY``. Network failures raise
    ``requests.RequestException``; error responses raise :class:`ApiError`.
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = session or requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """Send a request; return the JSON body (the bytes with ``raw``), or raise ApiError."""
        kwargs.setdefault("timeout", self.timeout)
        response = self.http.request(method, f"{self.url}{path}", **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        if raw:
            return response.content
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "Unexpected answer",
                           f"{method} {path} did not answer JSON; is {self.url} a backprop-service?") from None

    def _pages(self, path: str, params: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        """Follow `next_cursor` until `limit` items (all when None) are read."""
        return list(self._iterate(path, params, limit))

    def _iterate(self, path: str, params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
        cursor, seen = None, 0
        while True:
            page_size = min(1000, limit - seen) if limit is not None else 1000
            query = {**{k: v for k, v in params.items() if v is not None}, "limit": page_size}
            if cursor:
                query["cursor"] = cursor
            page = self.request("GET", path, params=query)
            for item in page["items"]:
                yield item
                seen += 1
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and seen >= limit):
                return

    # service -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Return /readyz: whether the database and the broker answer."""
        return self.request("GET", "/readyz")

    # datasets ------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, target: str | None = None, name: str | None = None,
                       task: str | None = None, format: str | None = None,
                       na_values: list[str] | None = None) -> dict[str, Any]:
        """Upload a table (CSV, JSON, JSON Lines or Parquet; the server tells which by `format`, else
        the file's extension, else its content); return the dataset.

        `na_values` replaces the CSV tokens that mean a missing cell (pandas' defaults).
        """
        path = Path(path)
        fields = {k: v for k, v in {"target": target, "name": name or path.stem, "task": task,
                                    "format": format}.items() if v}
        if na_values is not None:
            fields["na_values"] = json.dumps(na_values)
        with path.open("rb") as file:
            return self.request("POST", "/v1/datasets", files={"file": (path.name, file, _media_type(path))},
                                data=fields)

    def list_datasets(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the datasets, newest first (all of them, or the first `limit`)."""
        return self._pages("/v1/datasets", {}, limit)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/v1/datasets/{dataset_id}")

    # networks ------------------------------------------------------------------

    def validate_network(self, definition: dict[str, Any], input_dim: int | None = None,
                         output_dim: int | None = None, dataset_id: str | None = None) -> dict[str, Any]:
        """Check a definition without storing it: ``{"valid", "problems", "parameter_count"}``."""
        params = {"input_dim": input_dim, "output_dim": output_dim, "dataset_id": dataset_id}
        return self.request("POST", "/v1/networks/validate", json=definition,
                            params={k: v for k, v in params.items() if v is not None})

    def create_network(self, definition: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """Store a definition; return it with its id."""
        body = {**definition, "name": name} if name else definition
        return self.request("POST", "/v1/networks", json=body)

    def get_network(self, network_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/networks/{network_id}")

    # jobs ----------------------------------------------------------------------

    def create_job(self, dataset_id: str, network: dict[str, Any] | None = None, *,
                   network_id: str | None = None, training: dict[str, Any] | None = None,
                   device: str = "cpu", init_from_model: str | None = None,
                   time_limit_s: float | None = None, features: list[str] | None = None,
                   ignored_columns: list[str] | None = None) -> dict[str, Any]:
        """Start training `network` (a definition) or `network_id` on a dataset; return the job.

        `init_from_model` starts from a model's weights (its network when neither
        network is given); `time_limit_s` ends the job `failed` once it has run that long;
        `features` (the columns to use) or `ignored_columns` change the dataset's default columns.
        """
        body: dict[str, Any] = {"dataset_id": dataset_id, "training": training or {}, "device": device}
        if features is not None:
            body["features"] = features
        if ignored_columns is not None:
            body["ignored_columns"] = ignored_columns
        if network_id is not None:
            body["network_id"] = network_id
        elif network is not None or init_from_model is None:
            body["network"] = network
        if init_from_model is not None:
            body["init_from_model"] = init_from_model
        if time_limit_s is not None:
            body["time_limit_s"] = time_limit_s
        return self.request("POST", "/v1/jobs", json=body)

    def list_jobs(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return jobs, newest first, optionally only those with one `status`."""
        return self._pages("/v1/jobs", {"status": status}, limit)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def job_metrics(self, job_id: str, after_epoch: int = 0, page_size: int = 1000) -> dict[str, Any]:
        """Return the per-epoch history with per-layer diagnostics: ``{"epochs": [...]}``.

        Follows the pages (`page_size` epochs each) from the epoch after `after_epoch`
        to the last: ``epochs`` holds every record, ``next_cursor`` is None.
        """
        history: dict[str, Any] | None = None
        cursor = str(after_epoch) if after_epoch else None
        while True:
            query: dict[str, Any] = {"limit": page_size} | ({"cursor": cursor} if cursor else {})
            page = self.request("GET", f"/v1/jobs/{job_id}/metrics", params=query)
            if history is None:
                history = page
            else:
                history["epochs"] += page["epochs"]
                history["status"] = page["status"]
            cursor = page.get("next_cursor")
            if not cursor:
                history["next_cursor"] = None
                return history

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def wait_job(self, job_id: str, poll_s: float = 0.5, timeout: float | None = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll a job until it succeeds, fails or is cancelled; return it.

        ``on_update`` sees every polled state. Raises TimeoutError after `timeout` seconds.
        """
        return self._poll(lambda: self.get_job(job_id), f"job {job_id}", poll_s, timeout, on_update)

    # models --------------------------------------------------------------------

    def list_models(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._pages("/v1/models", {}, limit)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/models/{model_id}")

    def predict(self, model_id: str, inputs: list[list[Any]] | None = None,
                records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Score raw rows: `inputs` (feature columns in training order) or `records` (by column name)."""
        body = {"inputs": inputs} if inputs is not None else {"records": records}
        return self.request("POST", f"/v1/models/{model_id}/predict", json=body)

    def export_model(self, model_id: str, format: str = "onnx") -> bytes:
        """Return the model as ONNX (preprocessing included) or as a backprop .npz."""
        return self.request("GET", f"/v1/models/{model_id}/export", params={"format": format}, raw=True)

    # batch predictions ---------------------------------------------------------

    def create_batch_prediction(self, model_id: str, dataset_id: str,
                                format: str = BATCH_PREDICTION_FORMATS[0]) -> dict[str, Any]:
        """Start a batch prediction of a stored dataset (run on the workers): its rows with the predictions."""
        return self.request("POST", f"/v1/models/{model_id}/batch-predictions",
                            json={"dataset_id": dataset_id, "format": format})

    def get_batch_prediction(self, batch_prediction_id: str) -> dict[str, Any]:
        """Return a batch prediction: its status and, once it succeeded, its file's size and `download` path."""
        return self.request("GET", f"/v1/batch-predictions/{batch_prediction_id}")

    def cancel_batch_prediction(self, batch_prediction_id: str) -> dict[str, Any]:
        """Cancel a queued batch prediction, or ask a running one to stop; return it."""
        return self.request("POST", f"/v1/batch-predictions/{batch_prediction_id}/cancel")

    def delete_batch_prediction(self, batch_prediction_id: str) -> None:
        """Delete a batch prediction that has ended, and its file (a 409 ApiError while it is queued or running)."""
        self.request("DELETE", f"/v1/batch-predictions/{batch_prediction_id}")

    def wait_batch_prediction(self, batch_prediction_id: str, poll_s: float = 0.5, timeout: float | None = None,
                              on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll a batch prediction until it ends (succeeded, failed or cancelled); return it.

        ``on_update`` sees every polled state. Raises TimeoutError after `timeout` seconds.
        """
        return self._poll(lambda: self.get_batch_prediction(batch_prediction_id),
                          f"batch prediction {batch_prediction_id}", poll_s, timeout, on_update)

    def download_batch_prediction(self, batch_prediction_id: str, path: str | Path) -> int:
        """Stream a succeeded batch prediction's file to `path` (never whole in memory); return its bytes.

        The file is written to `path`.part first and renamed once complete, so `path`
        never holds a partial download.
        """
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        with self.http.get(f"{self.url}/v1/batch-predictions/{batch_prediction_id}/download",
                           stream=True, timeout=self.timeout) as response:
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            size = 0
            with partial.open("wb") as handle:
                for piece in response.iter_content(chunk_size=1 << 20):
                    handle.write(piece)
                    size += len(piece)
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) != size:
            partial.unlink(missing_ok=True)
            raise ApiError(502, "Incomplete download", f"got {size:,} of {int(expected):,} bytes; download again")
        partial.replace(target)
        return size

    # evaluations ---------------------------------------------------------------

    def create_evaluation(self, model_id: str, dataset_id: str, permutation_repeats: int | None = None,
                          seed: int | None = None) -> dict[str, Any]:
        """Start an evaluation of a model on a stored dataset (run on the workers); return it.

        `permutation_repeats` shuffles each feature column that many times for permutation
        importance (0: none; the server's default when None); `seed` seeds the shuffles.
        """
        body: dict[str, Any] = {"dataset_id": dataset_id}
        if permutation_repeats is not None:
            body["permutation_repeats"] = permutation_repeats
        if seed is not None:
            body["seed"] = seed
        return self.request("POST", f"/v1/models/{model_id}/evaluations", json=body)

    def get_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        """Return an evaluation: its status and, once it succeeded, its `report`."""
        return self.request("GET", f"/v1/evaluations/{evaluation_id}")

    def cancel_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        """Cancel a queued evaluation, or ask a running one to stop; return it."""
        return self.request("POST", f"/v1/evaluations/{evaluation_id}/cancel")

    def list_evaluations(self, model_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Return a model's evaluations, newest first, each with the report's `metrics` only."""
        return self._pages(f"/v1/models/{model_id}/evaluations", {}, limit)

    def wait_evaluation(self, evaluation_id: str, poll_s: float = 0.5, timeout: float | None = None,
                        on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll an evaluation until it ends (succeeded, failed or cancelled); return it, report included.

        ``on_update`` sees every polled state. Raises TimeoutError after `timeout` seconds.
        """
        return self._poll(lambda: self.get_evaluation(evaluation_id), f"evaluation {evaluation_id}", poll_s,
                          timeout, on_update)

    def _poll(self, get: Callable[[], dict[str, Any]], what: str, poll_s: float, timeout: float | None,
              on_update: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        """Call `get` every `poll_s` seconds until the state it returns is terminal; return that state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = get()
            if on_update is not None:
                on_update(state)
            if state["status"] in TERMINAL:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what} is still {state['status']} after {timeout} s")
            time.sleep(poll_s)


# What a file's extension says it holds (the server reads the extension too; the type is for proxies).
MEDIA_TYPES = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/x-ndjson",
               ".ndjson": "application/x-ndjson", ".parquet": "application/vnd.apache.parquet",
               ".pq": "application/vnd.apache.parquet"}


def _media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
