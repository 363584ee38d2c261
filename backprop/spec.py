"""Network definitions: parse both JSON forms, validate, infer widths.

Validation never stops at the first fault: it returns every problem it can
find, each with the path of the offending field and the node's name, so that
an API can answer one request with the whole list.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .activations import ACTIVATIONS
from .errors import Problem, SpecError
from .initializers import INITIALIZERS, default_init

INPUT = "input"
MAX_UNITS = 1_000_000
# Far above any network trained here; refused before any node is read, so a
# definition of a million nodes costs no more than one of a hundred.
MAX_NODES = 1_000

# Keys each node type accepts besides name/type/inputs, with their defaults
# (REQUIRED marks a key without one).
REQUIRED = object()
NODE_KEYS: dict[str, dict[str, Any]] = {
    "dense": {"units": REQUIRED, "activation": "identity", "use_bias": True, "init": None},
    "activation": {"activation": REQUIRED},
    "add": {},
    "concat": {},
    "dropout": {"rate": 0.5},
}
COMMON_KEYS = {"name", "type", "inputs"}


@dataclass
class NodeSpec:
    """One validated node: its name, type, input names and parameters."""

    name: str
    type: str
    inputs: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    path: str = ""  # where it stands in the definition, e.g. "nodes[2]"

    @property
    def activation(self) -> str | None:
        return self.params.get("activation")


@dataclass
class NetworkSpec:
    """A validated definition: nodes in topological order, output, widths."""

    nodes: list[NodeSpec]
    output: str
    widths: dict[str, int]  # empty when the input width is unknown

    @property
    def output_width(self) -> int | None:
        return self.widths.get(self.output)


def validate(spec: Any, input_dim: int | None = None, output_dim: int | None = None) -> list[Problem]:
    """Return every problem of ``spec``; an empty list means it builds.

    Parameters
    ----------
    spec : dict
        ``{"layers": [...]}`` or ``{"nodes": [...], "output": name}``.
    input_dim : int, optional
        Width of the input; widths are checked only when it is given.
    output_dim : int, optional
        Width the output node must have (classes or target columns).
    """
    return _parse(spec, input_dim, output_dim)[1]


def parse(spec: Any, input_dim: int | None = None, output_dim: int | None = None) -> NetworkSpec:
    """Return the validated :class:`NetworkSpec` or raise :class:`SpecError`."""
    network, problems = _parse(spec, input_dim, output_dim)
    if problems or network is None:
        raise SpecError(problems)
    return network


def count_parameters(spec: Any, input_dim: int) -> int:
    """Return the number of trainable scalars of ``spec`` for ``input_dim`` inputs."""
    return sum(count for _node, count in node_parameters(parse(spec, input_dim)))


def node_parameters(network: NetworkSpec) -> list[tuple[NodeSpec, int]]:
    """Return each dense node of a parsed network with its number of trainable scalars.

    Arithmetic on the definition only: nothing is allocated, so a budget can be
    checked before a network too large for memory is built.
    """
    counts = []
    for node in network.nodes:
        if node.type == "dense":
            fan_in = sum(network.widths[name] for name in node.inputs)
            units = node.params["units"]
            counts.append((node, fan_in * units + (units if node.params["use_bias"] else 0)))
    return counts


def _parse(spec: Any, input_dim: int | None, output_dim: int | None) -> tuple[NetworkSpec | None, list[Problem]]:
    problems: list[Problem] = []
    if not isinstance(spec, dict):
        return None, [Problem("", "a network definition is a JSON object with 'layers' or 'nodes'")]
    has_layers, has_nodes = "layers" in spec, "nodes" in spec
    if has_layers == has_nodes:
        return None, [Problem("", "give exactly one of 'layers' (a stack) or 'nodes' (a graph)")]
    key = "layers" if has_layers else "nodes"
    allowed_top = {"layers"} if has_layers else {"nodes", "output"}
    for extra in sorted(set(spec) - allowed_top):
        problems.append(Problem(extra, f"unknown key {extra!r}"))
    items = spec[key]
    if not isinstance(items, list) or not items:
        return None, problems + [Problem(key, f"'{key}' must be a non-empty list")]
    if len(items) > MAX_NODES:
        return None, problems + [Problem(key, f"'{key}' has {len(items):,} entries; at most {MAX_NODES:,} "
                                              f"are allowed")]

    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    declared: set[str] = set()  # names of all entries, valid or not
    for index, item in enumerate(items):
        path = f"{key}[{index}]"
        if not isinstance(item, dict):
            problems.append(Problem(path, "each entry must be a JSON object"))
            continue
        inputs: Any
        if has_layers:
            name = item.get("name", f"{item.get('type', 'layer')}_{index}")
            inputs = [nodes[-1].name if nodes else INPUT]
            if "inputs" in item:
                problems.append(Problem(f"{path}.inputs", "layers of a stack take no 'inputs'; use the 'nodes' form",
                                        name))
        else:
            name = item.get("name")
            inputs = item.get("inputs")
        if isinstance(name, str):
            declared.add(name)
        node = _parse_node(item, name, inputs, path, problems)
        if node is None:
            continue
        if node.name in seen:
            problems.append(Problem(f"{path}.name", f"duplicate node name {node.name!r}", node.name))
            continue
        seen.add(node.name)
        nodes.append(node)

    output = nodes[-1].name if nodes else None
    if has_nodes and "output" in spec:
        output = spec["output"]
        if not isinstance(output, str) or output not in declared:
            problems.append(Problem("output", f"output {output!r} is not a node of the graph"))
            output = None

    by_name = {node.name: node for node in nodes}
    for node in nodes:
        for position, source in enumerate(node.inputs):
            if source != INPUT and source not in declared:
                problems.append(Problem(f"{node.path}.inputs[{position}]",
                                        f"input {source!r} is not a node of the graph", node.name))

    ordered = _topological_order(nodes, problems)
    if ordered is None or output is None or output not in by_name:
        return None, problems
    _check_connected(ordered, output, problems)

    widths: dict[str, int] = {}
    if input_dim is not None:
        if not isinstance(input_dim, int) or input_dim < 1:
            problems.append(Problem("input_dim", "the input width must be a positive integer"))
        else:
            widths = _infer_widths(ordered, input_dim, problems)
            if output_dim is not None and output in widths and widths[output] != output_dim:
                out = by_name[output]
                problems.append(Problem(
                    f"{out.path}.units" if out.type == "dense" else "output",
                    f"output node {output!r} has width {widths[output]} but the task needs {output_dim}",
                    output,
                ))
    if problems:
        return None, problems
    return NetworkSpec(ordered, output, widths), problems


def _parse_node(item: dict, name: Any, inputs: Any, path: str, problems: list[Problem]) -> NodeSpec | None:
    if not isinstance(name, str) or not name:
        problems.append(Problem(f"{path}.name", "each node needs a non-empty string 'name'"))
        return None
    if name == INPUT:
        problems.append(Problem(f"{path}.name", f"{INPUT!r} is reserved for the network's input", name))
        return None
    node_type = item.get("type")
    if not isinstance(node_type, str) or node_type not in NODE_KEYS:
        problems.append(Problem(f"{path}.type", f"unknown node type {node_type!r}; use one of {', '.join(NODE_KEYS)}",
                                name))
        return None
    ok = True
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        problems.append(Problem(f"{path}.inputs", "'inputs' must be a non-empty list of node names (or 'input')", name))
        ok = False
    elif node_type in ("add", "concat") and len(inputs) < 2:
        problems.append(Problem(f"{path}.inputs", f"'{node_type}' joins at least two inputs", name))
        ok = False
    elif len(set(inputs)) != len(inputs) and node_type != "add":
        problems.append(Problem(f"{path}.inputs", "an input is listed twice", name))
        ok = False

    keys = NODE_KEYS[node_type]
    for extra in sorted(set(item) - COMMON_KEYS - set(keys)):
        problems.append(Problem(f"{path}.{extra}", f"unknown key {extra!r} for a '{node_type}' node", name))
        ok = False
    params: dict[str, Any] = {}
    for key, default in keys.items():
        if key not in item:
            if default is REQUIRED:
                problems.append(Problem(f"{path}.{key}", f"a '{node_type}' node needs '{key}'", name))
                ok = False
            params[key] = default
            continue
        message = _check_param(key, item[key])
        if message:
            problems.append(Problem(f"{path}.{key}", message, name))
            ok = False
        params[key] = item[key]
    if node_type == "dense" and params.get("init") is None:
        params["init"] = default_init(params.get("activation") or "identity")
    return NodeSpec(name, node_type, list(inputs), params, path) if ok else None


def _check_param(key: str, value: Any) -> str | None:
    if key == "units":
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_UNITS:
            return f"'units' must be an integer from 1 to {MAX_UNITS:,}"
    elif key == "activation":
        if not isinstance(value, str) or value not in ACTIVATIONS:
            return f"unknown activation {value!r}; use one of {', '.join(ACTIVATIONS)}"
    elif key == "init":
        if not isinstance(value, str) or value not in INITIALIZERS:
            return f"unknown initializer {value!r}; use one of {', '.join(INITIALIZERS)}"
    elif key == "use_bias":
        if not isinstance(value, bool):
            return "'use_bias' must be true or false"
    elif key == "rate":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            return "'rate' must be a number in [0, 1)"
    return None


def _topological_order(nodes: list[NodeSpec], problems: list[Problem]) -> list[NodeSpec] | None:
    """Kahn's algorithm, stable in definition order; report nodes on cycles.

    Linear in nodes plus edges, cycles included: a definition of many nodes must
    be answered in milliseconds.
    """
    by_name = {node.name: node for node in nodes}
    pending = {node.name: sum(1 for s in set(node.inputs) if s in by_name) for node in nodes}
    consumers: dict[str, list[str]] = {name: [] for name in by_name}
    for node in nodes:
        for source in set(node.inputs):
            if source in by_name:
                consumers[source].append(node.name)
    ready = deque(node.name for node in nodes if pending[node.name] == 0)
    order: list[NodeSpec] = []
    while ready:
        name = ready.popleft()
        order.append(by_name[name])
        for consumer in consumers[name]:
            pending[consumer] -= 1
            if pending[consumer] == 0:
                ready.append(consumer)
    if len(order) < len(nodes):
        # What is left is on a cycle or downstream of one; peel off the downstream
        # nodes (those feeding nothing left), Kahn's algorithm run backwards, to name
        # only the cycle.
        left = {name for name, count in pending.items() if count > 0}
        feeding = {name: sum(1 for c in consumers[name] if c in left) for name in left}
        sinks = deque(name for name, count in feeding.items() if count == 0)
        while sinks:
            name = sinks.popleft()
            left.discard(name)
            for source in set(by_name[name].inputs):
                if source in left:
                    feeding[source] -= 1
                    if feeding[source] == 0:
                        sinks.append(source)
        for node in nodes:
            if node.name in left:
                problems.append(Problem(f"{node.path}.inputs", f"node {node.name!r} is part of a cycle", node.name))
        return None
    return order


def _check_connected(ordered: list[NodeSpec], output: str, problems: list[Problem]) -> None:
    """Every node must feed the output: a dangling branch is a mistake."""
    by_name = {node.name: node for node in ordered}
    needed, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue  # 'input', or an invalid node already reported
        needed.add(name)
        stack.extend(by_name[name].inputs)
    for node in ordered:
        if node.name not in needed:
            problems.append(Problem(node.path, f"node {node.name!r} does not feed the output {output!r}", node.name))


def _infer_widths(ordered: list[NodeSpec], input_dim: int, problems: list[Problem]) -> dict[str, int]:
    widths = {INPUT: input_dim}
    for node in ordered:
        known = [widths.get(source) for source in node.inputs]
        if any(width is None for width in known):
            continue  # an upstream problem was already reported
        incoming = [width for width in known if width is not None]
        if node.type == "dense":
            widths[node.name] = node.params["units"]
        elif node.type == "add":
            if len(set(incoming)) > 1:
                listed = ", ".join(f"{s} ({w})" for s, w in zip(node.inputs, incoming))
                problems.append(Problem(f"{node.path}.inputs", f"'add' needs inputs of equal width, got {listed}",
                                        node.name))
                continue
            widths[node.name] = incoming[0]
        else:  # concat, activation, dropout: the concatenation of the inputs
            widths[node.name] = sum(incoming)
    return widths
