"""Network definitions against the engine and the parameter budget, and engine problems as field errors.

Shared by POST /v1/networks (and /validate) and job creation (service/core/jobs/creation.py),
so a definition is judged by the same rules wherever it is sent.
"""

from __future__ import annotations

import logging
from typing import Any

import backprop
from backprop.spec import node_parameters, parse
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
                     max_parameters: int) -> list[backprop.Problem]:
    """Run backprop.validate, then the parameter budget; a definition so odd that the check
    itself fails is one problem.

    Parameters
    ----------
    definition
        The network definition as sent (any JSON value).
    input_dim, output_dim
        The widths to check against, None where not known.
    max_parameters
        The budget (the MAX_PARAMETERS setting).
    """
    try:
        problems = backprop.validate(definition, input_dim=input_dim, output_dim=output_dim)
        return problems or budget_problems(definition, input_dim, max_parameters)
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
