"""Evaluate a trained model on rows of a stored dataset: the report of docs/evaluation.md.

The dataset may be another upload than the one the model was trained on: its
columns are matched by name (it may hold more), its category codes are its own, and
its class labels are matched to the model's by value. Rows are encoded and
predicted in passes of bounded size, the caller's `on_progress` called between
passes (the workers renew their lease there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from backprop.network import Network
from backprop.training import EVAL_CHUNK_ROWS
from service.core.data.parsing import ParsedTable, parse_number
from service.core.data.preprocessing import Preprocessor
from service.core.evaluation import metrics
from service.core.problems import FieldError, FieldErrors
from service.core.schemas import PERMUTATION_REPEATS_DEFAULT

# Where the errors point: the dataset the request names.
FIELD = "dataset_id"


class EvaluationError(FieldErrors):
    """The dataset cannot be evaluated with the model; `errors` say why (field `dataset_id`)."""


def _error(message: str) -> EvaluationError:
    return EvaluationError([{"field": FIELD, "message": message}])


def column_problems(features: list[dict[str, Any]], target: Mapping[str, Any], columns: list[dict[str, Any]],
                    *, with_targets: bool, where: str = "the dataset") -> list[FieldError]:
    """Return why a model cannot score a dataset's columns: the one rule of job creation and the workers.

    Parameters
    ----------
    features, target
        The model's preprocessing: its feature entries (name, kind) and its target entry
        (task, names).
    columns
        The dataset's columns (name, kind, and `encoded` false for one the upload
        stopped counting), matched to the model's by name.
    with_targets
        Whether the target columns must be there too (an evaluation needs the true values).
    where
        The dataset as the messages name it.

    Returns
    -------
    list of FieldError
        One per feature (or target) column that is missing, unreadable or of another
        kind than the model's (a target: numbers for a regression, labels of any kind
        but datetimes for a classification), each on field `dataset_id`.
    """
    by_name = {c["name"]: c for c in columns}
    wanted: list[tuple[str, str | None, str]] = [(f["name"], f["kind"], "feature") for f in features]
    if with_targets:
        target_kind = "numeric" if target["task"] == "regression" else None  # labels: numbers or strings
        wanted += [(name, target_kind, "target") for name in target["names"]]
    errors: list[FieldError] = []
    for name, kind, role in wanted:
        column = by_name.get(name)
        if column is None:
            errors.append({"field": FIELD, "message": f"the model's {role} column {name!r} is not in {where}"})
        elif column.get("encoded") is False:
            errors.append({"field": FIELD, "message": f"column {name!r} of {where} has too many distinct "
                                                      f"strings to be read"})
        elif (role == "target" and column["kind"] == "datetime") or (kind is not None and column["kind"] != kind):
            takes = f"{kind} values" if kind is not None else "labels"
            errors.append({"field": FIELD, "message": f"column {name!r} holds {column['kind']} values in {where}; "
                                                      f"the model's {role} takes {takes}"})
    return errors


def _check_columns(preprocessor: Preprocessor, table: ParsedTable) -> dict[str, int]:
    """Return each column's position; raise EvaluationError naming every feature or target that does not fit.

    The rule is job creation's (column_problems): the dataset of a job cannot change once
    uploaded, so this only guards what the creation checked, and a table without the
    datetimes its datetime features need.
    """
    errors = column_problems(preprocessor.features, preprocessor.target, table.columns, with_targets=True)
    position = {c["name"]: j for j, c in enumerate(table.columns)}
    if not errors and table.datetimes is None:
        errors = [{"field": FIELD, "message": f"column {f['name']!r} has no stored datetimes"}
                  for f in preprocessor.features if f["kind"] == "datetime"]
    if errors:
        raise EvaluationError(errors)
    return position


def _numeric_label(label: Any) -> float | None:
    if isinstance(label, bool):
        return None
    if isinstance(label, (int, float)):
        return float(label)
    return parse_number(str(label))


def class_indices(classes: list[Any], column: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    """Return the model's class index of each stored target cell: -1 for a label the model does not know.

    Labels are matched by value, not by the dataset's codes: a string column's
    categories by text (or, for a model of integer labels, by the number they spell),
    a numeric column's values by number (or, for a model of string labels, by their
    text). A missing cell (NaN) is -1 as well; callers count those apart.
    """
    text_index = {str(c): i for i, c in enumerate(classes)}
    number_index: dict[float, int] = {}
    for i, c in enumerate(classes):
        number = _numeric_label(c)
        if number is not None:
            number_index.setdefault(number, i)
    present = ~np.isnan(raw)
    out = np.full(raw.shape[0], -1, dtype=np.int64)
    if not present.any():
        return out
    values, inverse = np.unique(raw[present], return_inverse=True)
    if column["kind"] == "string":
        categories = column["categories"]
        lookup = []
        for code in values.astype(np.int64).tolist():
            label = categories[code]
            index = text_index.get(label)
            if index is None:
                number = parse_number(label)
                index = number_index.get(number, -1) if number is not None else -1
            lookup.append(index)
    else:
        lookup = []
        for value in values.astype(np.float64).tolist():
            index = number_index.get(value)
            if index is None:
                text = str(int(value)) if value.is_integer() else repr(value)
                index = text_index.get(text, -1)
            lookup.append(index)
    out[present] = np.array(lookup, dtype=np.int64)[inverse]
    return out


def evaluate_table(network: Network, preprocessor: Preprocessor, loss: str, table: ParsedTable,
                   rows: np.ndarray | None = None, *, permutation_repeats: int = PERMUTATION_REPEATS_DEFAULT,
                   seed: int = 0,
                   max_rows_per_pass: int | None = None,
                   on_progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Return the evaluation report of the model on rows of a stored table (docs/evaluation.md).

    Parameters
    ----------
    network, preprocessor, loss
        The model: its network, fitted preprocessing and training loss.
    table
        The dataset; its columns are matched to the model's by name.
    rows
        Row indices to evaluate (None: all). Rows without a target value (any target
        missing) are left out and counted in `n_rows_without_target`; for
        classification, rows whose label the model does not know are left out and
        counted in `n_rows_unknown_label`.
    permutation_repeats
        Shuffles per feature for permutation importance; 0 leaves it out (null).
    seed
        Seeds the shuffles and the predicted-vs-actual sample.
    max_rows_per_pass
        Rows encoded and predicted at once (None: backprop's EVAL_CHUNK_ROWS).
    on_progress
        Called after each pass; it may raise to stop the evaluation.

    Raises
    ------
    EvaluationError
        A feature or target column is missing or of another kind, or no row is left.
    """
    per_pass = EVAL_CHUNK_ROWS if max_rows_per_pass is None else int(max_rows_per_pass)
    if per_pass < 1:
        raise ValueError(f"max_rows_per_pass must be at least 1, not {per_pass}")
    if permutation_repeats < 0:
        raise ValueError(f"permutation_repeats must be 0 or more, not {permutation_repeats}")
    position = _check_columns(preprocessor, table)
    chosen = np.arange(table.n_rows) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    target_names: list[str] = preprocessor.target["names"]
    target_columns = np.array([position[t] for t in target_names], dtype=np.int64)
    target_values = table.values[np.ix_(chosen, target_columns)].astype(np.float64)
    with_target = ~np.isnan(target_values).any(axis=1)
    n_without = int((~with_target).sum())
    classification = preprocessor.task == "classification"
    n_unknown = 0
    if classification:
        classes = list(preprocessor.classes or [])
        indices = class_indices(classes, table.columns[position[target_names[0]]], target_values[:, 0])
        known = with_target & (indices >= 0)
        n_unknown = int((with_target & ~known).sum())
        with_target = known
        y: np.ndarray = indices[known]
    else:
        y = target_values[with_target]
    kept = chosen[with_target]
    if len(kept) == 0:
        why = (f" ({n_unknown:,} have a label the model does not know)" if n_unknown else "")
        raise _error(f"none of the {len(chosen):,} rows has a target value the model can be scored on{why}")

    def progress() -> None:
        if on_progress is not None:
            on_progress()

    def predict_rows(encode: Callable[[int, int], np.ndarray], n: int) -> np.ndarray:
        parts = []
        for start in range(0, n, per_pass):
            X = encode(start, min(n, start + per_pass))
            outputs = network.predict(X, loss=loss, max_rows=per_pass)
            parts.append(preprocessor.decode_arrays(outputs, loss)[1])
            progress()
        return np.concatenate(parts)

    predictions = predict_rows(lambda a, b: preprocessor.encode_table(table, kept[a:b]), len(kept))
    if classification:
        report = metrics.classification_report(y, predictions, classes, n_rows_without_target=n_without)
        report["n_rows_unknown_label"] = n_unknown
    else:
        report = metrics.regression_report(y, predictions, target_names, n_rows_without_target=n_without,
                                           seed=seed)
    if permutation_repeats > 0:
        report["permutation_importance"] = _permutation_importance(
            preprocessor, table, position, kept, y, predict_rows, permutation_repeats, seed)
    return report


def _permutation_importance(preprocessor: Preprocessor, table: ParsedTable, position: dict[str, int],
                            kept: np.ndarray, y: np.ndarray,
                            predict_rows: Callable[[Callable[[int, int], np.ndarray], int], np.ndarray],
                            repeats: int, seed: int) -> list[dict[str, Any]]:
    """Shuffle each model feature's stored column (a datetime's exact seconds) and score the drop.

    The raw matrix holds, per model feature, the dataset's stored cells as float64:
    numbers, the dataset's category codes, a datetime's seconds. Each pass turns a
    slice of it back into a table of those columns for Preprocessor.encode_table.
    """
    features = preprocessor.features
    raw = np.empty((len(kept), len(features)), dtype=np.float64)
    columns: list[dict[str, Any]] = []
    datetime_at: list[int] = []
    for k, feature in enumerate(features):
        column = dict(table.columns[position[feature["name"]]])
        if feature["kind"] == "datetime":
            assert table.datetimes is not None  # _check_columns made sure
            raw[:, k] = table.datetimes[kept, column["slot"]]
            column["slot"] = len(datetime_at)
            datetime_at.append(k)
        else:
            raw[:, k] = table.values[kept, position[feature["name"]]]
        columns.append(column)

    def encode(matrix: np.ndarray, start: int, stop: int) -> np.ndarray:
        part = matrix[start:stop]
        # A datetime column's values are not read by encode_table (its seconds are); any float will do.
        sub = ParsedTable(columns=columns, values=part.astype(np.float32),
                          datetimes=part[:, datetime_at] if datetime_at else None)
        return preprocessor.encode_table(sub)

    if preprocessor.task == "classification":
        def score(matrix: np.ndarray) -> float:
            probabilities = predict_rows(lambda a, b: encode(matrix, a, b), len(matrix))
            return metrics.accuracy(y, metrics.predicted_classes(probabilities))
    else:
        def score(matrix: np.ndarray) -> float:
            predictions = predict_rows(lambda a, b: encode(matrix, a, b), len(matrix))
            return float(np.mean(metrics.r2(y, predictions)))

    return metrics.permutation_importance(score, raw, list(range(len(features))),
                                          [f["name"] for f in features], repeats, seed)


def without_test_report(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return a job's or model's metrics with `test` cut to its counts and metrics (for lists).

    A whole report (curves, samples) is tens of KB: a list of models or jobs carries
    only its figures; GET the model or the job by id for the whole report.
    """
    if not metrics or not isinstance(metrics.get("test"), dict):
        return metrics
    test = metrics["test"]
    return {**metrics, "test": {key: test[key] for key in ("task", "n_rows", "metrics") if key in test}}
