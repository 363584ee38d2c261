"""Networks: validate, store and read network definitions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import select

import backprop
from service.api import responses
from service.api.auth import current_tenant
from service.api.common import find_owned, get_or_404, int_arg, json_body, page_args, validate_body
from service.api.db import get_session
from service.core.db.store import dataset_input_width, paginate
from service.core.db.tables import Dataset, Network
from service.core.ids import isoformat, new_id
from service.core.networks import check_definition, problem_entries
from service.core.problems import invalid
from service.core.schemas import NetworkDefinition

bp = Blueprint("networks", __name__, url_prefix="/v1/networks")

MAX_WIDTH = 10_000_000


def definition_from_body(body: Any) -> tuple[str | None, dict[str, Any]]:
    """Split a request body into (name, definition) after checking its outer shape."""
    model = validate_body(NetworkDefinition, body)
    definition = {k: v for k, v in body.items() if k != "name"}
    return model.name, definition


def _width_args() -> tuple[int | None, int | None]:
    """Read the input width (`input_dim` or a dataset's) and `output_dim` from the query."""
    input_dim = int_arg("input_dim", None, 1, MAX_WIDTH)
    output_dim = int_arg("output_dim", None, 1, MAX_WIDTH)
    dataset_id = request.args.get("dataset_id")
    if dataset_id and input_dim is None:
        with get_session() as session:
            dataset = find_owned(session, Dataset, dataset_id)
            if dataset is None:
                raise invalid([{"field": "dataset_id", "message": f"no dataset with id {dataset_id!r}"}])
            input_dim = dataset_input_width(dataset)
    return input_dim, output_dim


def network_answer(network: Network, input_dim: int | None = None) -> responses.Network:
    """Build the answer describing a network, with its parameter count when the input width is known."""
    count = None
    # Shown even over MAX_PARAMETERS: the count is what tells the user how far over it is.
    if input_dim is not None and not backprop.validate(network.definition, input_dim):
        count = backprop.count_parameters(network.definition, input_dim)
    return responses.Network.model_validate({
        "id": network.id, "name": network.name, "definition": network.definition,
        "input_dim": input_dim, "parameter_count": count, "created_at": isoformat(network.created_at)})


def network_json(network: Network, input_dim: int | None = None) -> dict[str, Any]:
    """Render a network, with its parameter count when the input width is known."""
    return network_answer(network, input_dim).answer()


@bp.post("/validate")
def validate_network() -> dict[str, Any]:
    """Check a definition without storing it; every problem at once."""
    _name, definition = definition_from_body(json_body())
    input_dim, output_dim = _width_args()
    problems = check_definition(definition, input_dim, output_dim, current_app.config["MAX_PARAMETERS"],
                                max_activation_floats=current_app.config["MAX_ACTIVATION_FLOATS"])
    count = None
    if not problems and input_dim is not None:
        count = backprop.count_parameters(definition, input_dim)
    return responses.render(responses.Validation, {
        "valid": not problems, "problems": problem_entries(problems),
        "input_dim": input_dim, "parameter_count": count})


@bp.post("")
def create_network() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store a network definition after validating it."""
    name, definition = definition_from_body(json_body())
    input_dim, output_dim = _width_args()
    problems = check_definition(definition, input_dim, output_dim, current_app.config["MAX_PARAMETERS"],
                                max_activation_floats=current_app.config["MAX_ACTIVATION_FLOATS"])
    if problems:
        raise invalid(problem_entries(problems))
    network = Network(id=new_id("net"), tenant_id=current_tenant(), name=name, definition=definition)
    with get_session() as session:
        session.add(network)
        session.commit()
    return network_json(network, input_dim), 201, {
        "Location": url_for("networks.get_network", network_id=network.id)}


@bp.get("")
def list_networks() -> dict[str, Any]:
    """List stored networks, newest first."""
    limit, cursor = page_args()
    with get_session() as session:
        statement = select(Network).where(Network.tenant_id == current_tenant())
        rows, next_cursor = paginate(session, statement, Network.id, limit, cursor)
        return responses.NetworkPage(items=[network_answer(n) for n in rows], next_cursor=next_cursor).answer()


@bp.get("/<network_id>")
def get_network(network_id: str) -> dict[str, Any]:
    """Read a network; `?input_dim=` or `?dataset_id=` adds its parameter count."""
    input_dim, _ = _width_args()
    with get_session() as session:
        network = get_or_404(session, Network, network_id, "network")
        return network_json(network, input_dim)


@bp.delete("/<network_id>")
def remove_network(network_id: str) -> Response:
    """Delete a stored network (jobs keep their own copy of the definition)."""
    with get_session() as session:
        network = get_or_404(session, Network, network_id, "network")
        session.delete(network)
        session.commit()
    return Response(status=204)
