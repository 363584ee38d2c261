"""The evaluation metrics and report (service.core.evaluation) against scikit-learn's own functions, to 1e-9."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.inspection import permutation_importance as sk_permutation_importance

import backprop
from service.core.data.parsing import ParsedTable, describe_target, parse_datetime, parse_json_rows
from service.core.data.preprocessing import Preprocessor, fit
from service.core.evaluation import metrics
from service.core.evaluation.metrics import (
    MAX_CURVE_POINTS,
    MAX_SCATTER_POINTS,
    RESIDUAL_BINS,
    RESIDUAL_QUANTILES,
    classification_report,
    permutation_importance,
    regression_report,
)
from service.core.evaluation.report import EvaluationError, evaluate_table
from tests.helpers import mlp

TOLERANCE = 1e-9
SEEDS = (0, 1, 2)


def close(ours: Any, theirs: Any) -> None:
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64),
                               rtol=0, atol=TOLERANCE)


def predictions(seed: int, n_classes: int, n_rows: int = 300, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return labels holding every class and probabilities; `ties` draws them from few values, so scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n_rows)
    y[:n_classes] = np.arange(n_classes)
    weights = rng.integers(1, 5, (n_rows, n_classes)).astype(np.float64) if ties else rng.random((n_rows, n_classes))
    # Somewhat informative: the true class weighs more on most rows.
    weights[np.arange(n_rows), y] += rng.integers(0, 3, n_rows)
    return y, weights / weights.sum(axis=1, keepdims=True)


def json_numbers_only(report: dict[str, Any]) -> None:
    json.dumps(report, allow_nan=False)  # NaN or infinity anywhere raises


# -- classification metrics ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("ties", [True, False])
def test_classification_metrics_equal_sklearn(seed: int, n_classes: int, ties: bool) -> None:
    y, probabilities = predictions(seed, n_classes, ties=ties)
    labels = list(range(n_classes))
    predicted = metrics.predicted_classes(probabilities)
    np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))
    close(metrics.accuracy(y, predicted), skm.accuracy_score(y, predicted))
    close(metrics.balanced_accuracy(y, predicted, n_classes), skm.balanced_accuracy_score(y, predicted))
    close(metrics.log_loss(y, probabilities), skm.log_loss(y, probabilities, labels=labels))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, predicted, n_classes),
                                  skm.confusion_matrix(y, predicted, labels=labels))
    ours = metrics.precision_recall_f1_support(y, predicted, n_classes)
    theirs = skm.precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0.0)
    for mine, sklearn in zip(ours, theirs):
        close(mine, sklearn)
    if n_classes == 2:
        positive, score = y == 1, probabilities[:, 1]
        close(metrics.roc_auc(positive, score), skm.roc_auc_score(y, score))
        close(metrics.average_precision(positive, score), skm.average_precision_score(y, score))
    else:
        report = classification_report(y, probabilities, labels)["metrics"]
        close(report["roc_auc_macro"], skm.roc_auc_score(y, probabilities, multi_class="ovr", average="macro"))
        close(report["roc_auc_weighted"],
              skm.roc_auc_score(y, probabilities, multi_class="ovr", average="weighted"))
        close(report["pr_auc_macro"], skm.average_precision_score(y, probabilities, average="macro"))
    for c in range(n_classes):
        positive, score = y == c, probabilities[:, c]
        fpr, tpr = metrics.roc_curve(positive, score)
        sk_fpr, sk_tpr, _ = skm.roc_curve(positive, score)
        assert fpr.shape == sk_fpr.shape
        close(fpr, sk_fpr)
        close(tpr, sk_tpr)
        precision, recall = metrics.precision_recall_curve(positive, score)
        sk_precision, sk_recall, _ = skm.precision_recall_curve(positive, score)
        assert precision.shape == sk_precision.shape
        close(precision, sk_precision)
        close(recall, sk_recall)
        close(metrics.roc_auc(positive, score), skm.roc_auc_score(positive, score))
        close(metrics.average_precision(positive, score), skm.average_precision_score(positive, score))


def test_log_loss_clips_as_sklearn_does() -> None:
    y = np.array([0, 1, 1, 0])
    probabilities = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])  # a certain, wrong row
    close(metrics.log_loss(y, probabilities), skm.log_loss(y, probabilities))
    assert np.isfinite(metrics.log_loss(y, probabilities))


def test_a_class_never_predicted_scores_zero_as_sklearns_default() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    predicted = np.array([0, 0, 2, 2, 0, 0])  # class 1 never predicted: its precision is 0/0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        theirs = skm.precision_recall_fscore_support(y, predicted, labels=[0, 1, 2])
    for mine, sklearn in zip(metrics.precision_recall_f1_support(y, predicted, 3), theirs):
        close(mine, sklearn)
    assert metrics.precision_recall_f1_support(y, predicted, 3)[0][1] == 0.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_absent_from_the_rows() -> None:
    # Class 3 never occurs: its F1 is 0 (zero_division), its AUC undefined (null); averages skip it.
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    probabilities = rng.dirichlet(np.ones(4), 120)
    report = classification_report(y, probabilities, ["a", "b", "c", "d"])
    json_numbers_only(report)
    assert report["per_class"][3]["support"] == 0 and report["per_class"][3]["recall"] == 0.0
    assert report["roc"]["curves"][3]["auc"] is None and report["pr"]["curves"][3]["average_precision"] is None
    aucs = [skm.roc_auc_score(y == c, probabilities[:, c]) for c in range(3)]
    close(report["metrics"]["roc_auc_macro"], np.mean(aucs))
    support = np.bincount(y, minlength=3)
    close(report["metrics"]["roc_auc_weighted"], np.average(aucs, weights=support))
    close(report["metrics"]["balanced_accuracy"], skm.balanced_accuracy_score(y, probabilities.argmax(axis=1)))


@pytest.mark.parametrize("seed", SEEDS)
def test_calibration_bins_equal_sklearns_calibration_curve(seed: int) -> None:
    y, probabilities = predictions(seed, 5, n_rows=400)
    bins, ece = metrics.calibration_bins(y, probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    filled = [b for b in bins if b["count"]]
    close([b["accuracy"] for b in filled], prob_true)
    close([b["confidence"] for b in filled], prob_pred)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == len(y)
    assert [b["lower"] for b in bins] == pytest.approx(np.linspace(0, 0.9, 10).tolist())
    assert all(b["confidence"] is None and b["accuracy"] is None for b in bins if not b["count"])
    counts = np.array([b["count"] for b in filled])
    close(ece, np.sum(counts / len(y) * np.abs(prob_true - prob_pred)))


def test_a_confidence_on_an_edge_goes_to_the_lower_bin() -> None:
    bins, ece = metrics.calibration_bins(np.array([0, 0]), np.array([[0.7, 0.3], [0.5, 0.5]]))
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 1, 0, 1, 0, 0, 0]
    close(ece, 0.5 * abs(1 - 0.7) + 0.5 * abs(1 - 0.5))


# -- the classification report -------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 5])
def test_classification_report_shape_and_values(n_classes: int) -> None:
    y, probabilities = predictions(3, n_classes, n_rows=2000, ties=False)
    classes = ["no", "yes"] if n_classes == 2 else [10, 20, 30, 40, 50]
    report = classification_report(y, probabilities, classes, n_rows_without_target=7)
    json_numbers_only(report)
    assert report["task"] == "classification" and report["n_rows"] == 2000
    assert report["n_rows_without_target"] == 7
    assert report["permutation_importance"] is None and report["importance_metric"] == "accuracy"
    names = {"accuracy", "balanced_accuracy", "log_loss", "ece"}
    names |= {"roc_auc", "pr_auc"} if n_classes == 2 else {"roc_auc_macro", "roc_auc_weighted", "pr_auc_macro"}
    assert set(report["metrics"]) == names
    assert report["metrics"]["ece"] == report["calibration"]["ece"]
    predicted = probabilities.argmax(axis=1)
    assert report["confusion_matrix"] == {"labels": classes, "matrix": skm.confusion_matrix(y, predicted).tolist()}
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted)
    assert [c["label"] for c in report["per_class"]] == classes
    close([c["precision"] for c in report["per_class"]], precision)
    close([c["recall"] for c in report["per_class"]], recall)
    close([c["f1"] for c in report["per_class"]], f1)
    assert [c["support"] for c in report["per_class"]] == support.tolist()
    curves = report["roc"]["curves"]
    assert len(curves) == (1 if n_classes == 2 else n_classes)
    # Binary: the curve is the positive class's, the second label.
    assert [c["label"] for c in curves] == (["yes"] if n_classes == 2 else classes)
    for curve, pr in zip(curves, report["pr"]["curves"]):
        c = classes.index(curve["label"])
        fpr, tpr, _ = skm.roc_curve(y == c, probabilities[:, c])
        assert len(fpr) > MAX_CURVE_POINTS  # continuous scores: a long curve, down-sampled
        assert len(curve["fpr"]) == len(curve["tpr"]) == MAX_CURVE_POINTS
        assert curve["fpr"][0] == fpr[0] and curve["fpr"][-1] == fpr[-1] and curve["tpr"][-1] == tpr[-1]
        assert set(curve["fpr"]) <= set(fpr.tolist())
        close(curve["auc"], skm.roc_auc_score(y == c, probabilities[:, c]))
        sk_precision, sk_recall, _ = skm.precision_recall_curve(y == c, probabilities[:, c])
        assert len(pr["precision"]) == MAX_CURVE_POINTS and pr["label"] == curve["label"]
        assert pr["precision"][0] == sk_precision[0] and pr["recall"][-1] == sk_recall[-1] == 0.0
        close(pr["average_precision"], skm.average_precision_score(y == c, probabilities[:, c]))
    if n_classes == 2:
        close(report["metrics"]["roc_auc"], skm.roc_auc_score(y, probabilities[:, 1]))
        close(report["metrics"]["pr_auc"], skm.average_precision_score(y, probabilities[:, 1]))


def test_curve_indices_keep_the_ends() -> None:
    assert metrics.curve_indices(5).tolist() == [0, 1, 2, 3, 4]
    kept = metrics.curve_indices(10_001)
    assert len(kept) == MAX_CURVE_POINTS and kept[0] == 0 and kept[-1] == 10_000
    assert np.all(np.diff(kept) > 0)


# -- regression -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, (250, 3))
    predicted = y + rng.normal(0, 1, (250, 3))
    predicted[:, 2] = np.round(predicted[:, 2])  # ties do not matter here, but rounding is realistic
    close(metrics.rmse(y, predicted), skm.root_mean_squared_error(y, predicted, multioutput="raw_values"))
    close(metrics.mean_squared_error(y, predicted), skm.mean_squared_error(y, predicted, multioutput="raw_values"))
    close(metrics.mae(y, predicted), skm.mean_absolute_error(y, predicted, multioutput="raw_values"))
    close(metrics.r2(y, predicted), skm.r2_score(y, predicted, multioutput="raw_values"))
    close(np.mean(metrics.r2(y, predicted)), skm.r2_score(y, predicted))
    close(metrics.r2(y[:, 0], predicted[:, 0]), [skm.r2_score(y[:, 0], predicted[:, 0])])


def test_r2_of_a_constant_target_follows_sklearn() -> None:
    y = np.full((20, 2), 3.0)
    predicted = np.stack([np.full(20, 3.0), np.linspace(2, 4, 20)], axis=1)
    close(metrics.r2(y, predicted), skm.r2_score(y, predicted, multioutput="raw_values"))
    assert metrics.r2(y, predicted).tolist() == [1.0, 0.0]


def test_regression_report_shape_and_values() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(0, 5, (1200, 2))
    predicted = y + rng.normal(0, 1, (1200, 2))
    report = regression_report(y, predicted, ["a", "b"], n_rows_without_target=3, seed=9)
    json_numbers_only(report)
    assert report["task"] == "regression" and report["targets"] == ["a", "b"]
    assert report["n_rows"] == 1200 and report["n_rows_without_target"] == 3
    assert report["permutation_importance"] is None and report["importance_metric"] == "r2"
    close(report["metrics"]["rmse"], skm.root_mean_squared_error(y, predicted, multioutput="raw_values"))
    close(report["metrics"]["mae"], skm.mean_absolute_error(y, predicted, multioutput="raw_values"))
    close(report["metrics"]["r2"], skm.r2_score(y, predicted, multioutput="raw_values"))
    for t, (entry, scatter, histogram) in enumerate(zip(report["per_target"], report["predicted_vs_actual"],
                                                        report["residual_histogram"])):
        assert entry["target"] == scatter["target"] == histogram["target"] == "ab"[t]
        close(entry["r2"], skm.r2_score(y[:, t], predicted[:, t]))
        residuals = y[:, t] - predicted[:, t]
        assert list(entry["residual_quantiles"]) == ["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"]
        close(list(entry["residual_quantiles"].values()), np.quantile(residuals, RESIDUAL_QUANTILES))
        assert len(scatter["actual"]) == len(scatter["predicted"]) == MAX_SCATTER_POINTS
        rows = [int(np.flatnonzero(y[:, t] == value)[0]) for value in scatter["actual"]]
        assert len(set(rows)) == MAX_SCATTER_POINTS and rows == sorted(rows)
        close(scatter["predicted"], predicted[rows, t])
        counts, edges = np.histogram(residuals, bins=RESIDUAL_BINS)
        assert histogram["counts"] == counts.tolist() and len(histogram["edges"]) == RESIDUAL_BINS + 1
        close(histogram["edges"], edges)
    # Seeded: the same seed draws the same rows, another seed others.
    again = regression_report(y, predicted, ["a", "b"], seed=9)
    assert again["predicted_vs_actual"] == report["predicted_vs_actual"]
    assert regression_report(y, predicted, ["a", "b"], seed=10)["predicted_vs_actual"] != report["predicted_vs_actual"]


def test_one_target_reports_floats_and_every_row_when_few() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    report = regression_report(y, y + 0.5, ["price"])
    assert report["metrics"] == {"rmse": 0.5, "mae": 0.5, "r2": pytest.approx(skm.r2_score(y, y + 0.5))}
    assert report["predicted_vs_actual"][0]["actual"] == y.tolist()


def test_a_non_finite_prediction_is_null_in_the_report() -> None:
    y = np.array([1.0, 2.0, 3.0])
    report = regression_report(y, np.array([1.0, np.inf, 3.0]), ["v"])
    json_numbers_only(report)
    assert report["metrics"]["rmse"] is None and report["predicted_vs_actual"][0]["predicted"][1] is None


# -- permutation importance -------------------------------------------------------------------


class FixedModel:
    """An 'estimator' for sklearn.inspection that only carries our score: it is never fitted."""

    def fit(self, X: Any, y: Any) -> FixedModel:
        return self


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_permutation_importance_equals_sklearns(seed: int, task: str) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(150, 4))
    raw[:, 3] = np.round(raw[:, 3])  # ties within a column
    weights = np.array([[2.0, -1.0], [0.5, 0.5], [0.0, 0.0], [1.0, -2.0]])
    if task == "classification":
        y = (raw @ weights).argmax(axis=1)
        y[rng.random(150) < 0.2] ^= 1

        def score(matrix: np.ndarray) -> float:
            return metrics.accuracy(y, (matrix @ weights).argmax(axis=1))
    else:
        y = raw @ weights + rng.normal(0, 0.3, (150, 2))

        def score(matrix: np.ndarray) -> float:
            return float(np.mean(metrics.r2(y, matrix @ weights)))

    original = raw.copy()
    ours = permutation_importance(score, raw, [0, 1, 2, 3], ["a", "b", "c", "d"], repeats=5, seed=seed)
    np.testing.assert_array_equal(raw, original)  # restored
    theirs = sk_permutation_importance(FixedModel(), original.copy(), y, scoring=lambda _, X, __: score(X),
                                       n_repeats=5, random_state=seed)
    assert [entry["feature"] for entry in ours] == ["a", "b", "c", "d"]
    close([entry["mean"] for entry in ours], theirs.importances_mean)
    close([entry["std"] for entry in ours], theirs.importances_std)
    assert ours[2]["mean"] == 0.0 and ours[0]["mean"] > 0  # a column the score ignores, one it needs


def test_permutation_importance_of_a_subset_of_columns() -> None:
    raw = np.random.default_rng(0).normal(size=(60, 3))
    y = raw[:, 1].copy()  # not a view: raw is shuffled in place

    def score(matrix: np.ndarray) -> float:
        return float(metrics.r2(y, matrix[:, 1])[0])

    ours = permutation_importance(score, raw, [1], ["b"], repeats=3, seed=4)
    theirs = sk_permutation_importance(FixedModel(), raw.copy(), y, scoring=lambda _, X, __: score(X),
                                       n_repeats=3, random_state=4)
    close([ours[0]["mean"], ours[0]["std"]], [theirs.importances_mean[1], theirs.importances_std[1]])
    with pytest.raises(ValueError):
        permutation_importance(score, raw, [1], ["b"], repeats=0, seed=4)


# -- evaluate_table on a trained network ------------------------------------------------------------


def seconds(text: str) -> float:
    parsed = parse_datetime(text)
    assert parsed is not None
    return parsed[0]


def dated_rows(seed: int, n: int, colours: list[str], labels: list[str]) -> list[list[Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x = float(rng.normal())
        colour = colours[int(rng.integers(len(colours)))]
        day = f"2021-{1 + int(rng.integers(12)):02d}-{1 + int(rng.integers(28)):02d}T{int(rng.integers(24)):02d}:00"
        signal = x + (1.0 if colour == colours[0] else -0.5) + (0.8 if int(day[5:7]) > 6 else 0.0)
        label = labels[0] if signal < 0 else labels[1] if signal < 1.2 else labels[2]
        rows.append([x, colour, day, label, float(i)])
    return rows


def trained(rows: list[list[Any]], names: list[str], target: str, loss: str, outputs: int,
            features: list[str] | None = None) -> tuple[backprop.Network, Preprocessor, ParsedTable]:
    table = parse_json_rows(names, rows)
    described = describe_target(table, target, None)
    state = fit(table, features or described["features"], described["targets"], described["task"],
                described["classes"], np.arange(table.n_rows))
    preprocessor = Preprocessor(state)
    network = backprop.build(mlp((16,), outputs=outputs), preprocessor.input_width, seed=0)
    labels = preprocessor.targets_from_table(table)
    backprop.train(network, preprocessor.encode_table(table), labels, epochs=30, batch_size=32,
                   learning_rate=0.01, loss=loss, optimizer="adam", seed=0)
    return network, preprocessor, table


NAMES = ["x", "colour", "when", "label", "id"]


def sklearn_raw_score(preprocessor: Preprocessor, table: ParsedTable, rows: np.ndarray, y: np.ndarray,
                      network: backprop.Network, loss: str) -> tuple[np.ndarray, Any]:
    """The raw matrix of the model's features (a datetime's seconds) and a scorer of it, built here by hand."""
    position = {c["name"]: j for j, c in enumerate(table.columns)}
    columns, raw, slots = [], [], []
    for feature in preprocessor.features:
        column = dict(table.columns[position[feature["name"]]])
        if feature["kind"] == "datetime":
            raw.append(table.datetimes[rows, column["slot"]])
            column["slot"] = len(slots)
            slots.append(len(columns))
        else:
            raw.append(table.values[rows, position[feature["name"]]].astype(np.float64))
        columns.append(column)
    matrix = np.stack(raw, axis=1)

    def scorer(_: Any, X: np.ndarray, __: Any) -> float:
        encoded = preprocessor.encode_table(ParsedTable(columns, X.astype(np.float32), X[:, slots]))
        decoded = preprocessor.decode(network.predict(encoded, loss=loss), loss)
        if preprocessor.task == "classification":
            return skm.accuracy_score(y, np.array(decoded["probabilities"]).argmax(axis=1))
        return skm.r2_score(y, np.array(decoded["predictions"]).reshape(len(y), -1))

    return matrix, scorer


# float32 softmax rows sum to 1 within float32's precision, not within sklearn's sqrt(float64 eps).
@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_evaluate_table_classifies_another_upload_as_sklearn_scores_it() -> None:
    network, preprocessor, _ = trained(dated_rows(0, 300, ["red", "green", "blue"], ["low", "mid", "high"]),
                                       NAMES, "label", "cross_entropy", 3, features=["x", "colour", "when"])
    assert preprocessor.classes == ["high", "low", "mid"]
    # Another upload: other category codes (a colour the model never saw, a label it does not know), an
    # extra column, rows without a label.
    rows = dated_rows(1, 260, ["red", "blue", "amber", "green"], ["low", "mid", "high"])
    for i in range(0, 20, 2):
        rows[i][3] = None
    for i in range(1, 10, 2):
        rows[i][3] = "unheard"
    other = parse_json_rows(["extra", *NAMES], [[0.0, *row] for row in rows])
    calls: list[int] = []
    report = evaluate_table(network, preprocessor, "cross_entropy", other, permutation_repeats=3, seed=1,
                            max_rows_per_pass=64, on_progress=lambda: calls.append(1))
    json_numbers_only(report)
    assert report["n_rows_without_target"] == 10 and report["n_rows_unknown_label"] == 5
    assert report["n_rows"] == 245
    assert report["confusion_matrix"]["labels"] == ["high", "low", "mid"]
    # What sklearn says of the same predictions: through decode, the labels by value.
    kept = np.array([i for i, row in enumerate(rows) if row[3] in ("low", "mid", "high")])
    y = np.array([["high", "low", "mid"].index(rows[i][3]) for i in kept])
    decoded = preprocessor.decode(network.predict(preprocessor.encode_table(other, kept)), "cross_entropy")
    probabilities = np.array(decoded["probabilities"])
    close(report["metrics"]["accuracy"], skm.accuracy_score([rows[i][3] for i in kept], decoded["predictions"]))
    close(report["metrics"]["accuracy"], skm.accuracy_score(y, probabilities.argmax(axis=1)))
    close(report["metrics"]["log_loss"], skm.log_loss(y, probabilities, labels=[0, 1, 2]))
    close(report["metrics"]["roc_auc_macro"], skm.roc_auc_score(y, probabilities, multi_class="ovr"))
    assert report["metrics"]["accuracy"] > 0.6  # the network learned something: the test is not vacuous
    # Permutation importance: each model feature, against sklearn's on the same raw columns and shuffles.
    matrix, scorer = sklearn_raw_score(preprocessor, other, kept, y, network, "cross_entropy")
    theirs = sk_permutation_importance(FixedModel(), matrix, y, scoring=scorer, n_repeats=3, random_state=1)
    importance = report["permutation_importance"]
    assert [entry["feature"] for entry in importance] == ["x", "colour", "when"]
    close([entry["mean"] for entry in importance], theirs.importances_mean)
    close([entry["std"] for entry in importance], theirs.importances_std)
    # Every feature matters to this network, the datetime too: its seconds were shuffled.
    assert all(entry["mean"] > 0.05 for entry in importance)
    # Passes: 245 rows at 64 a pass is 4 passes; the baseline and 3 shuffles of 3 features add 10 x 4.
    assert len(calls) == 4 + 10 * 4
    # The pass size changes nothing but the passes.
    whole = evaluate_table(network, preprocessor, "cross_entropy", other, permutation_repeats=3, seed=1)
    assert whole == report


def test_evaluate_table_on_chosen_rows_of_a_binary_model() -> None:
    rows = [[row[0], row[1], row[2], "yes" if row[3] == "high" else "no", row[4]]
            for row in dated_rows(2, 240, ["red", "green"], ["low", "mid", "high"])]
    network, preprocessor, table = trained(rows, NAMES, "label", "binary_cross_entropy", 1,
                                           features=["x", "colour", "when"])
    held_out = np.arange(0, 240, 3)
    report = evaluate_table(network, preprocessor, "binary_cross_entropy", table, held_out, permutation_repeats=0)
    assert report["n_rows"] == 80 and report["permutation_importance"] is None
    y = preprocessor.targets_from_table(table, held_out)
    positive = network.predict(preprocessor.encode_table(table, held_out), loss="binary_cross_entropy").reshape(-1)
    positive = positive.astype(np.float64)
    assert [curve["label"] for curve in report["roc"]["curves"]] == ["yes"]
    close(report["metrics"]["roc_auc"], skm.roc_auc_score(y, positive))
    close(report["metrics"]["pr_auc"], skm.average_precision_score(y, positive))
    close(report["metrics"]["log_loss"], skm.log_loss(y, np.stack([1 - positive, positive], axis=1)))
    close(report["metrics"]["balanced_accuracy"], skm.balanced_accuracy_score(y, (positive > 0.5).astype(int)))


def test_evaluate_table_integer_labels_match_by_value() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    rows = [[float(v), int(v > 0) * 5 + 2] for v in x]  # labels 2 and 7
    network, preprocessor, _ = trained(rows, ["x", "label"], "label", "cross_entropy", 2)
    assert preprocessor.classes == [2, 7]
    # The same labels as strings in another upload, one of them unknown to the model.
    other = parse_json_rows(["x", "label"], [[row[0], str(row[1])] for row in rows[:50]] + [[0.5, "9"]])
    report = evaluate_table(network, preprocessor, "cross_entropy", other, permutation_repeats=0)
    assert report["n_rows"] == 50 and report["n_rows_unknown_label"] == 1
    assert report["confusion_matrix"]["labels"] == [2, 7]
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 50
    assert report["per_class"][0]["support"] == sum(1 for row in rows[:50] if row[1] == 2)


def test_evaluate_table_regression_in_target_units() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 2))
    rows = [[float(a), float(b), 100 + 30 * a - 10 * b, 5 * b + 0.1 * float(rng.normal())] for a, b in x]
    names = ["a", "b", "price", "size"]
    network, preprocessor, table = trained(rows, names, "price,size", "mse", 2)
    rows[4][2] = None  # a row without one of its targets is left out
    other = parse_json_rows(names, rows)
    report = evaluate_table(network, preprocessor, "mse", other, permutation_repeats=2, seed=3,
                            max_rows_per_pass=50)
    json_numbers_only(report)
    assert report["n_rows"] == 299 and report["n_rows_without_target"] == 1
    assert report["targets"] == ["price", "size"] and report["importance_metric"] == "r2"
    kept = np.array([i for i in range(300) if i != 4])
    y = other.values[kept][:, [2, 3]].astype(np.float64)
    predicted = np.array(preprocessor.decode(network.predict(preprocessor.encode_table(other, kept), "mse"),
                                             "mse")["predictions"])
    close(report["metrics"]["rmse"], skm.root_mean_squared_error(y, predicted, multioutput="raw_values"))
    close(report["metrics"]["mae"], skm.mean_absolute_error(y, predicted, multioutput="raw_values"))
    close(report["metrics"]["r2"], skm.r2_score(y, predicted, multioutput="raw_values"))
    assert min(report["metrics"]["r2"]) > 0.8
    matrix, scorer = sklearn_raw_score(preprocessor, other, kept, y, network, "mse")
    theirs = sk_permutation_importance(FixedModel(), matrix, y, scoring=scorer, n_repeats=2, random_state=3)
    close([entry["mean"] for entry in report["permutation_importance"]], theirs.importances_mean)
    close([entry["std"] for entry in report["permutation_importance"]], theirs.importances_std)


def test_evaluate_table_refuses_a_dataset_that_does_not_fit() -> None:
    rows = [[float(i % 7), "a" if i % 2 else "b"] for i in range(60)]
    network, preprocessor, _ = trained(rows, ["x", "label"], "label", "cross_entropy", 2)
    with pytest.raises(EvaluationError) as missing:
        evaluate_table(network, preprocessor, "cross_entropy", parse_json_rows(["z", "label"], rows))
    assert missing.value.errors[0]["field"] == "dataset_id" and "'x'" in missing.value.errors[0]["message"]
    with pytest.raises(EvaluationError, match="holds string values"):
        evaluate_table(network, preprocessor, "cross_entropy",
                       parse_json_rows(["x", "label"], [[f"v{i}", "a"] for i in range(60)]))
    with pytest.raises(EvaluationError, match="target"):
        evaluate_table(network, preprocessor, "cross_entropy", parse_json_rows(["x"], [[1.0], [2.0]]))
    with pytest.raises(EvaluationError, match="none of the 2 rows"):
        evaluate_table(network, preprocessor, "cross_entropy", parse_json_rows(["x", "label"], [[1.0, "c"],
                                                                                               [2.0, None]]))
