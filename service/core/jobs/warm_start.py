"""Warm start (a job's `init_from_model`): check at job creation that a model fits the job.

A warm-started job keeps the source model's preprocessing (means, deviations,
category lists, classes and their order) and its feature columns instead of
fitting its own, so its weights keep meaning what they meant (docs/jobs.md). The
job is refused with a 422 on `init_from_model` unless the model was trained for
the same task with the same loss, the dataset has the model's feature columns
(of the same kinds, with no category the model does not know; its other columns
are not used) and its targets (with no class the model does not know), and the
job's network has exactly the model's parameter names and shapes. Nothing here
allocates weights: shapes come from the definitions.
"""

from __future__ import annotations

from typing import Any

import backprop
from backprop.spec import parse
from service.core.db.tables import Dataset, TrainedModel
from service.core.problems import FieldError

FIELD = "init_from_model"


def _entry(message: str, node: str | None = None) -> FieldError:
    entry: FieldError = {"field": FIELD, "message": message}
    if node:
        entry["node"] = node
    return entry


def _listed(values: list[Any], most: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def model_input_width(model: TrainedModel) -> int:
    """Return the encoded input width the model was built for."""
    return int(model.definition["input_dim"])


def model_network(model: TrainedModel) -> dict[str, Any]:
    """Return the network definition (layers or nodes) the model was trained with."""
    return model.definition["spec"]


def check_data(model: TrainedModel, dataset: Dataset) -> list[FieldError]:
    """Return why the dataset cannot be encoded with the model's preprocessing (empty: it can)."""
    if dataset.task != model.task:
        return [_entry(f"model {model.id} was trained for {model.task}; dataset {dataset.id} is a "
                       f"{dataset.task} dataset")]
    errors: list[FieldError] = []
    fitted = {f["name"]: f for f in model.preprocessing["features"]}
    columns = {c["name"]: c for c in dataset.columns}
    # The job trains on the model's features (creation.job_features): the dataset's other
    # columns are left out, whatever their role.
    for name, feature in fitted.items():
        if name not in columns or name in dataset.targets:
            inputs = [n for n in columns if n not in dataset.targets]
            errors.append(_entry(f"the model takes the feature {name!r}, which is not among the dataset's "
                                 f"columns besides its target ({_listed(inputs, 20)}); a warm start "
                                 f"needs the model's feature columns"))
            continue
        kind = columns[name]["kind"]
        if kind != feature["kind"]:
            errors.append(_entry(f"feature {name!r} is {kind} in the dataset but {feature['kind']} "
                                 f"in the model"))
        elif kind == "string":
            known = set(feature["categories"])
            unknown = [c for c in columns[name]["categories"] if c not in known]
            if unknown:
                errors.append(_entry(f"feature {name!r} has categories the model does not know: "
                                     f"{_listed(unknown)}; a warm start keeps the model's one-hot "
                                     f"columns, so train a new model to use them"))
    names = model.preprocessing["target"]["names"]
    if list(dataset.targets) != list(names):
        errors.append(_entry(f"the model predicts {', '.join(names)}; the dataset's target is "
                             f"{', '.join(dataset.targets)}"))
    elif model.task == "classification":
        classes = model.classes or []
        unknown = [c for c in dataset.classes or [] if c not in classes]
        if unknown:
            errors.append(_entry(f"the dataset has classes the model does not know: {_listed(unknown)} "
                                 f"(the model's classes are {_listed(classes)}); train a new model"))
    return errors


def check_loss(model: TrainedModel, loss: str) -> list[FieldError]:
    """Return why training with `loss` cannot continue the model (empty: it can).

    Each loss is its own family here: it fixes the task, the output width and how
    the output is read (softmax, sigmoid or values), so only the model's own fits.
    """
    if loss == model.loss:
        return []
    return [_entry(f"model {model.id} was trained with {model.loss}; continue with the same loss "
                   f"(training.loss {model.loss}, the default for a warm start), not {loss}")]


def _dense_shapes(definition: Any, input_dim: int) -> dict[str, tuple[int, int, bool]]:
    """Return {node: (inputs, units, use_bias)} of each dense node: its parameters' shapes."""
    network = parse(definition, input_dim)
    return {node.name: (sum(network.widths[n] for n in node.inputs), int(node.params["units"]),
                        bool(node.params["use_bias"]))
            for node in network.nodes if node.type == "dense"}


def _describe(shape: tuple[int, int, bool]) -> str:
    inputs, units, bias = shape
    return f"{inputs} inputs x {units} units" + (" with a bias" if bias else " without a bias")


def check_parameters(model: TrainedModel, definition: Any) -> list[FieldError]:
    """Return the nodes whose parameters differ between the model and `definition` (a valid one).

    The widths are the model's: its input width after its preprocessing, its output width.
    """
    width = model_input_width(model)
    try:
        own, theirs = _dense_shapes(model_network(model), width), _dense_shapes(definition, width)
    except backprop.SpecError as error:  # the caller checked the definition; stay a 422 anyway
        return [_entry(f"the network cannot take the model's input width {width}: {error}")]
    errors: list[FieldError] = []
    for name, shape in theirs.items():
        if name not in own:
            errors.append(_entry(f"node {name!r} has parameters but the model has no node of that name "
                                 f"(its dense nodes: {', '.join(own)})", name))
        elif shape != own[name]:
            errors.append(_entry(f"node {name!r} has {_describe(shape)}; the model's has "
                                 f"{_describe(own[name])}", name))
    for name in own:
        if name not in theirs:
            errors.append(_entry(f"the model's dense node {name!r} is missing from the network", name))
    return errors
