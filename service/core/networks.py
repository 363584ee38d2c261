"""Network definitions against the engine and the budgets, and engine problems as field errors.

Two budgets, both counted from the definition before anything is allocated: the
parameters (MAX_PARAMETERS) and the values of a forward pass (MAX_ACTIVATION_FLOATS:
the sum of the widths times the rows of one pass), which a network with few parameters
can still blow up (a 1,000,000-unit layer is 4 MB of float32 per row).

Shared by POST /v1/networks (and /validate) and job creation (service/core/jobs/creation.py),
so a definition is judged by the same rules wherever it is sent.
"""

from __future__ import annotations

import logging
from typing import Any

import backprop
from backprop.network import activation_width
from backprop.spec import NetworkSpec, NodeSpec, node_parameters, parse
from backprop.training import EVAL_CHUNK_ROWS
from service.core.problems import FieldError

log = logging.getLogger(__name__)


def problem_entries(problems: list[backprop.Problem], prefix: str = "") -> list[FieldError]:
    """Render engine problems as problem+json `errors`, field paths under `prefix`."""
    entries = []
    for problem in problems:
        field = f"{prefix}.{problem.field}" if prefix and problem.field else (prefix or problem.field)
        entry: FieldError = {"field": field, "message": problem.message}
        if problem.node:
            entry["node"] = problem.node
        entries.append(entry)
    return entries


def check_definition(definition: Any, input_dim: int | None, output_dim: int | None,
                     max_parameters: int, *, max_activation_floats: int) -> list[backprop.Problem]:
    """Run backprop.validate, then the parameter budget and the activation budget for one row;
    a definition so odd that the check itself fails is one problem.

    Parameters
    ----------
    definition
        The network definition as sent (any JSON value).
    input_dim, output_dim
        The widths to check against, None where not known.
    max_parameters
        The budget (the MAX_PARAMETERS setting).
    max_activation_floats
        The values one forward pass may hold (MAX_ACTIVATION_FLOATS); a network alone is
        refused when one row exceeds it (a job's batch: :func:`batch_problems`).
    """
    try:
        problems = backprop.validate(definition, input_dim=input_dim, output_dim=output_dim)
        return (problems or budget_problems(definition, input_dim, max_parameters)
                or activation_problems(definition, input_dim, max_activation_floats))
    except Exception as error:  # the engine's checker must not turn bad input into a 500
        log.warning("backprop.validate raised %r", error)
        return [backprop.Problem("", f"the definition could not be checked: {type(error).__name__}: "
                                     f"{error}")]


def budget_problems(definition: Any, input_dim: int | None, max_parameters: int) -> list[backprop.Problem]:
    """Refuse a valid definition with more parameters than `max_parameters` (MAX_PARAMETERS).

    Counted from the definition alone, before anything is allocated. Without the input
    width the count for one input column is a lower bound (parameters only grow with
    the width), which already catches two huge hidden layers in a row.
    """
    try:
        network = parse(definition, input_dim or 1)
    except backprop.SpecError:
        return []  # widths that fit only the real input: the check at job creation counts
    counts = node_parameters(network)
    total = sum(count for _node, count in counts)
    if total <= max_parameters:
        return []
    node, largest = max(counts, key=lambda item: item[1])
    bound = "" if input_dim else "at least "
    return [backprop.Problem(f"{node.path}.units",
                             f"the network has {bound}{total:,} parameters, more than the budget of "
                             f"{max_parameters:,} (MAX_PARAMETERS); node {node.name!r} alone has {largest:,}",
                             node.name)]


def activation_problems(definition: Any, input_dim: int | None, max_activation_floats: int) -> list[backprop.Problem]:
    """Refuse a valid definition whose one row holds more values than `max_activation_floats`.

    Without the input width, a one-column input gives a lower bound, as for the parameters.
    """
    graph = _graph(definition, input_dim)
    if graph is None or activation_width(graph) <= max_activation_floats:
        return []
    node, width = _widest(graph)
    bound = "" if input_dim else "at least "
    return [backprop.Problem(f"{node.path}.units",
                             f"one row of the network holds {bound}{activation_width(graph):,} values (the sum "
                             f"of its widths), more than the budget of {max_activation_floats:,} "
                             f"(MAX_ACTIVATION_FLOATS); node {node.name!r} alone is {width:,} wide", node.name)]


def batch_problems(definition: Any, input_dim: int | None, batch_rows: int,
                   max_activation_floats: int) -> list[FieldError]:
    """Refuse a job whose training batches hold more values than `max_activation_floats`.

    Parameters
    ----------
    definition, input_dim
        The job's network and its input width.
    batch_rows
        Rows of one training batch: the job's batch_size, or fewer when the dataset has fewer rows.
    max_activation_floats
        The MAX_ACTIVATION_FLOATS setting.

    Returns
    -------
    list of FieldError
        One entry for `training.batch_size` naming the widest node, or none. A network whose
        one row already exceeds the budget is :func:`activation_problems`' to report.
    """
    graph = _graph(definition, input_dim)
    if graph is None:
        return []
    width = activation_width(graph)
    if width * batch_rows <= max_activation_floats or width > max_activation_floats:
        return []
    node, widest = _widest(graph)
    return [{"field": "training.batch_size",
             "message": f"a batch of {batch_rows:,} rows holds {width * batch_rows:,} values ({width:,} a row, "
                        f"the sum of the network's widths), more than the budget of {max_activation_floats:,} "
                        f"(MAX_ACTIVATION_FLOATS); use a batch_size of at most "
                        f"{rows_per_pass(width, max_activation_floats):,} or a narrower network "
                        f"(node {node.name!r} is {widest:,} wide)"}]


def rows_per_pass(width: int, max_activation_floats: int) -> int:
    """Return the rows a forward pass may take so that it holds at most `max_activation_floats` values.

    At least one: a network stored before the budget was lowered still answers, a row at a time.
    """
    return max(1, max_activation_floats // max(1, width))


def eval_rows_per_pass(width: int, max_activation_floats: int) -> int:
    """Return the rows of one scoring pass: backprop's EVAL_CHUNK_ROWS, fewer when the activation budget says so.

    The validation passes during training, a test split's and an evaluation's report all
    score in passes of this size.
    """
    return min(EVAL_CHUNK_ROWS, rows_per_pass(width, max_activation_floats))


def _graph(definition: Any, input_dim: int | None) -> NetworkSpec | None:
    try:
        return parse(definition, input_dim or 1)
    except backprop.SpecError:
        return None  # widths that fit only the real input: the check at job creation counts


def _widest(graph: NetworkSpec) -> tuple[NodeSpec, int]:
    """Return the widest node (not the input) and its width."""
    node = max(graph.nodes, key=lambda n: graph.widths[n.name])
    return node, graph.widths[node.name]
