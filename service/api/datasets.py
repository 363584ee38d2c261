"""Datasets: upload (a multipart file: CSV, JSON, JSON Lines or Parquet; or a JSON body), list, read, delete."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from service.api import responses
from service.api.auth import current_tenant
from service.api.common import cancel_hint, get_or_404, json_body, page_args, validate_body
from service.api.db import get_session, get_session_factory
from service.api.models import MAX_PREDICT_ROWS  # one limit on rows in a JSON body
from service.core.data import formats
from service.core.data.parsing import ParsedTable, TableError, describe_target, parse_json_rows
from service.core.db.store import dataset_input_width, delete_dataset, paginate, save_dataset
from service.core.db.tables import Dataset, DatasetPayload, Job
from service.core.ids import isoformat
from service.core.jobs.creation import hold_dataset
from service.core.problems import ApiError, invalid
from service.core.schemas import DatasetJson
from service.core.statuses import ACTIVE_STATUSES
from service.core.tenancy import limits

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")

TASKS = ("classification", "regression")


def _described(dataset: Dataset) -> dict[str, Any]:
    """What both a dataset's answer and its entry in a list say about it."""
    return {
        "id": dataset.id,
        "name": dataset.name,
        "n_rows": dataset.n_rows,
        "n_columns": len(dataset.columns),
        "targets": dataset.targets,
        "task": dataset.task,
        "classes": dataset.classes,
        "input_width": dataset_input_width(dataset),
        "source": dataset.source,
        "n_rows_without_target": dataset.n_rows_without_target,
        "sha256": dataset.payload_sha256,
        "created_at": isoformat(dataset.created_at),
    }


def dataset_answer(dataset: Dataset, size_bytes: int | None = None) -> responses.Dataset:
    """Build the answer describing a dataset, its columns and features (its payload's size when given)."""
    body = {**_described(dataset), "columns": dataset.columns, "features": dataset.features,
            "warnings": dataset.warnings}
    if size_bytes is not None:
        body["size_bytes"] = size_bytes
    return responses.Dataset.model_validate(body)


def dataset_summary(dataset: Dataset) -> responses.DatasetSummary:
    """Build a dataset's entry in a list: counts instead of its columns and features."""
    return responses.DatasetSummary.model_validate({**_described(dataset), "n_features": len(dataset.features)})


def dataset_json(dataset: Dataset, size_bytes: int | None = None) -> dict[str, Any]:
    """Render a dataset."""
    return dataset_answer(dataset, size_bytes).answer()


def _table_error(error: TableError) -> ApiError:
    return invalid(error.errors)


def _from_file() -> tuple[ParsedTable, dict[str, Any], str, str]:
    """Parse a multipart upload's `file` in its format (the `format` field, else its name, else its content)."""
    upload = request.files.get("file")
    if upload is None:
        raise invalid([{"field": "file", "message": "a multipart field 'file' with the table (CSV, JSON, "
                                                    "JSON Lines or Parquet) is required"}])
    task = request.form.get("task") or None
    if task is not None and task not in TASKS:
        raise invalid([{"field": "task", "message": "must be classification or regression"}])
    given_na = request.form.get("na_values")
    try:
        na_values = None if given_na is None else formats.parse_na_values(given_na)
        with _upload_path(upload) as path:
            fmt = formats.detect_format(path, upload.filename, request.form.get("format"))
            table = formats.parse_upload(path, fmt, limits=formats.Limits.from_config(current_app.config),
                                         na_values=na_values)
        description = describe_target(table, request.form.get("target"), task)
    except TableError as error:
        raise _table_error(error) from None
    finally:
        upload.close()
    name = request.form.get("name") or name_from_filename(upload.filename)
    return table, description, name[:200], fmt


@contextmanager
def _upload_path(upload: FileStorage) -> Iterator[Path]:
    """Give the uploaded file's path on disk: where the request streamed it, else spilled to DATA_DIR/tmp."""
    stream_path = getattr(upload.stream, "name", None)
    if isinstance(stream_path, str) and Path(stream_path).is_file():
        upload.stream.flush()
        yield Path(stream_path)
        return
    # Small parts may arrive in memory (another stream factory).
    path = Path(current_app.config["DATA_DIR"]) / "tmp" / f"upload-{id(upload)}.part"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        upload.save(path)
        yield path
    finally:
        path.unlink(missing_ok=True)


def name_from_filename(filename: str | None) -> str:
    """Return a dataset name from a client's file name: its last part only, never a path.

    The name is a label; nothing is ever written or read under it.
    """
    last = re.split(r"[/\\]", filename or "")[-1]
    last = "".join(c for c in last if c.isprintable()).strip()
    return last if last not in ("", ".", "..") else "dataset"


def _from_json() -> tuple[ParsedTable, dict[str, Any], str]:
    # JSON rows are limited as predict's are (file uploads are not): counted before validation.
    body = validate_body(DatasetJson, json_body(max_rows={"data": MAX_PREDICT_ROWS, "records": MAX_PREDICT_ROWS}))
    limits = formats.Limits.from_config(current_app.config)
    try:
        if body.records is not None:
            table = formats.parse_records(body.records, limits=limits)
        else:
            assert body.columns is not None and body.data is not None  # DatasetJson's rule: one shape
            table = parse_json_rows(body.columns, body.data, max_columns=limits.max_columns,
                                    max_distinct_strings=limits.max_distinct_strings,
                                    max_categories=limits.max_categories)
        description = describe_target(table, body.target, body.task)
    except TableError as error:
        raise _table_error(error) from None
    return table, description, body.name or "dataset"


@bp.post("")
def create_dataset() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Upload a dataset as a multipart file (CSV, JSON, JSON Lines, Parquet) or a JSON body."""
    if request.mimetype == "multipart/form-data":
        table, description, name, source = _from_file()
    elif request.is_json:
        table, description, name = _from_json()
        source = "json"
    else:
        raise ApiError(415, "Unsupported Media Type",
                       "send multipart/form-data with a 'file' field, or application/json")
    tenant = current_tenant()

    def within_storage_limit(session: Session, key: str, size: int) -> None:
        limits.check_room_for_payload(session, tenant, current_app.config, key, size)

    dataset = save_dataset(get_session_factory(), table, description, name, source, tenant_id=tenant,
                           check_room=within_storage_limit)
    location = url_for("datasets.get_dataset", dataset_id=dataset.id)
    return dataset_json(dataset), 201, {"Location": location}


@bp.get("")
def list_datasets() -> dict[str, Any]:
    """List datasets, newest first."""
    limit, cursor = page_args()
    with get_session() as session:
        statement = select(Dataset).where(Dataset.tenant_id == current_tenant())
        rows, next_cursor = paginate(session, statement, Dataset.id, limit, cursor)
        return responses.DatasetPage(items=[dataset_summary(d) for d in rows], next_cursor=next_cursor).answer()


@bp.get("/<dataset_id>")
def get_dataset(dataset_id: str) -> dict[str, Any]:
    """Read one dataset."""
    with get_session() as session:
        dataset = get_or_404(session, Dataset, dataset_id, "dataset")
        size = session.scalar(select(DatasetPayload.size_bytes)
                              .where(DatasetPayload.sha256 == dataset.payload_sha256))
        return dataset_json(dataset, size)


@bp.delete("/<dataset_id>")
def remove_dataset(dataset_id: str) -> Response:
    """Delete a dataset unless a queued or running job still needs it."""
    with get_session() as session:
        # Held before the check, as job creation holds it: a job being created on it either
        # commits first (and is found here) or finds the dataset gone.
        hold_dataset(session, current_tenant(), dataset_id)
        dataset = get_or_404(session, Dataset, dataset_id, "dataset")
        busy = session.execute(select(Job.id, Job.kind).where(Job.dataset_id == dataset_id,
                                                              Job.status.in_(ACTIVE_STATUSES)).limit(1)).first()
        if busy:
            # Any kind uses it (a training job, an evaluation, a batch prediction): each can be cancelled.
            raise ApiError(409, "Conflict", f"dataset {dataset_id} is used by the queued or running "
                                            f"{cancel_hint(busy.kind, busy.id)}; cancel it first",
                           slug="dataset-in-use")
        delete_dataset(session, dataset)
        session.commit()
    return Response(status=204)
