"""Networks as DAGs of nodes with local backward rules.

Each node keeps the indices of its parents and caches what its backward rule
needs during ``forward``. :meth:`Network.backward` walks the nodes in reverse
topological order and *accumulates* each node's gradient over all of its
consumers, which is what makes fan-out exact.

Ownership rule of the backward pass: the gradient array handed to a node's
``backward`` belongs to that node, which may change it in place; a node that
passes one gradient to several parents (``add``) hands each a separate array.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from .activations import ACTIVATIONS, DERIVATIVES, SATURATION_BOUNDS
from .backend import check_dtype, get_array_module, to_numpy
from .errors import NoBackwardRule
from .initializers import INITIALIZERS
from .losses import FUSED_ACTIVATION, LOSSES, OUTPUT_TRANSFORMS
from .spec import INPUT, NetworkSpec, NodeSpec, parse


class Node:
    """A node of the graph: ``forward`` computes, ``backward`` applies the chain rule.

    ``inputs`` are indices into the network's value list (0 is the input).
    """

    has_parameters = False

    def __init__(self, spec: NodeSpec, inputs: list[int], widths: list[int], xp: Any):
        self.name = spec.name
        self.type = spec.type
        self.inputs = inputs
        self.widths = widths
        self.xp = xp
        self.activation: str | None = spec.params.get("activation")
        # Set while a loss fused with this (output) node's activation runs.
        self.skip_activation = False
        self.output: Any = None

    def forward(self, inputs: list[Any], training: bool) -> Any:
        raise NotImplementedError

    def backward(self, delta: Any, needs: list[bool]) -> list[Any]:
        raise NoBackwardRule(f"node {self.name!r} of type {self.type!r} has no backward rule")

    def _joined(self, inputs: list[Any]) -> Any:
        """Several inputs are taken as their concatenation."""
        return inputs[0] if len(inputs) == 1 else self.xp.concatenate(inputs, axis=1)

    def _split(self, delta: Any, needs: list[bool]) -> list[Any]:
        if len(needs) == 1:
            return [delta]
        grads, start = [], 0
        for width, need in zip(self.widths, needs):
            grads.append(delta[:, start:start + width] if need else None)
            start += width
        return grads

    def _activate(self, Z: Any) -> Any:
        if self.activation is None or self.activation == "identity" or self.skip_activation:
            return Z
        return ACTIVATIONS[self.activation](Z, self.xp)

    def _activation_backward(self, delta: Any) -> Any:
        if self.activation is None or self.activation == "identity" or self.skip_activation:
            return delta
        return DERIVATIVES[self.activation](self.output, delta, self.xp)


class Dense(Node):
    """``activation(concat(inputs) @ W + b)`` with one (fan_in, units) weight."""

    has_parameters = True

    def __init__(self, spec, inputs, widths, xp, weight, bias):
        super().__init__(spec, inputs, widths, xp)
        self.weight = weight
        self.bias = bias
        self.weight_grad = xp.zeros_like(weight)
        self.bias_grad = None if bias is None else xp.zeros_like(bias)
        # Row blocks of W, one per input: multiplying block by block avoids
        # materializing the concatenated input.
        bounds = np.cumsum([0, *widths])
        self.blocks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.cached_inputs: list[Any] = []

    def forward(self, inputs, training):
        if len(inputs) == 1:
            Z = inputs[0] @ self.weight
        else:
            (a, b), *rest = self.blocks
            Z = inputs[0] @ self.weight[a:b]
            for X, (a, b) in zip(inputs[1:], rest):
                Z += X @ self.weight[a:b]
        if self.bias is not None:
            Z += self.bias
        self.cached_inputs = inputs
        self.output = self._activate(Z)
        return self.output

    def backward(self, delta, needs):
        xp = self.xp
        delta = self._activation_backward(delta)
        if self.bias is not None:
            self.bias_grad = delta.sum(axis=0)
        # Fresh arrays from `@` are faster here than BLAS writing into a kept buffer.
        if len(self.cached_inputs) == 1:
            self.weight_grad = self.cached_inputs[0].T @ delta
            return [delta @ self.weight.T if needs[0] else None]
        self.weight_grad = xp.empty_like(self.weight)
        grads = []
        for X, (a, b), need in zip(self.cached_inputs, self.blocks, needs):
            self.weight_grad[a:b] = X.T @ delta
            grads.append(delta @ self.weight[a:b].T if need else None)
        return grads


class Activation(Node):
    """An activation on its own; copies its input, which other nodes may share."""

    def forward(self, inputs, training):
        joined = self._joined(inputs)
        Z = joined.copy() if joined is inputs[0] else joined
        self.output = self._activate(Z)
        return self.output

    def backward(self, delta, needs):
        return self._split(self._activation_backward(delta), needs)


class Add(Node):
    """Elementwise sum of equal-width inputs."""

    def forward(self, inputs, training):
        out = inputs[0] + inputs[1]
        for X in inputs[2:]:
            out += X
        return out

    def backward(self, delta, needs):
        grads: list[Any] = []
        handed = False
        for need in needs:
            if not need:
                grads.append(None)
            else:
                grads.append(delta.copy() if handed else delta)
                handed = True
        return grads


class Concat(Node):
    """Concatenation of inputs along the feature axis."""

    def forward(self, inputs, training):
        return self.xp.concatenate(inputs, axis=1)

    def backward(self, delta, needs):
        return self._split(delta, needs)


class Dropout(Node):
    """Inverted dropout: scales kept units by 1/(1-rate) so inference is identity."""

    def __init__(self, spec, inputs, widths, xp, network):
        super().__init__(spec, inputs, widths, xp)
        self.rate = float(spec.params["rate"])
        self.network = network
        self.mask = None

    def forward(self, inputs, training):
        joined = self._joined(inputs)
        if not training or self.rate == 0.0:
            self.mask = None
            return joined
        keep = self.network.rng.random(joined.shape) >= self.rate
        mask = (keep / (1.0 - self.rate)).astype(self.network.dtype)
        self.mask = self.xp.asarray(mask)
        return joined * self.mask

    def backward(self, delta, needs):
        if self.mask is not None:
            delta *= self.mask
        return self._split(delta, needs)


NODE_TYPES = {"dense": Dense, "activation": Activation, "add": Add, "concat": Concat, "dropout": Dropout}


class Network:
    """A built network: nodes in topological order over one input.

    Use :func:`build` to make one. Arrays live on ``device`` (numpy on the
    CPU, CuPy on the GPU) in ``dtype``.
    """

    def __init__(self, spec: dict, input_dim: int, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
        self.spec = spec
        self.input_dim = int(input_dim)
        self.seed = seed
        self.dtype = check_dtype(dtype)
        # 2**24 above the smallest normal number: room for the products of back-propagation
        # to shrink before they reach the subnormal range.
        self._negligible_gradient = float(np.finfo(self.dtype).tiny) * 2.0**24
        self.device = device
        self.xp = get_array_module(device)
        self.graph: NetworkSpec = parse(spec, input_dim)
        self.rng = np.random.default_rng(seed)  # dropout masks outside train()
        init_rng = np.random.default_rng(seed)
        index = {INPUT: 0}
        self.nodes: list[Node] = []
        for position, node_spec in enumerate(self.graph.nodes, start=1):
            inputs = [index[name] for name in node_spec.inputs]
            widths = [self.graph.widths[name] for name in node_spec.inputs]
            self.nodes.append(self._make_node(node_spec, inputs, widths, init_rng))
            index[node_spec.name] = position
        self.dense_nodes: list[Dense] = [cast(Dense, node) for node in self.nodes if node.has_parameters]
        self._output_position = index[self.graph.output]
        self.output_node = self.nodes[self._output_position - 1]
        # Whether each node input needs a gradient: the network's input does not.
        self._needs = [[i != 0 for i in node.inputs] for node in self.nodes]

    def _make_node(self, spec: NodeSpec, inputs: list[int], widths: list[int], rng: np.random.Generator) -> Node:
        if spec.type == "dense":
            fan_in, units = sum(widths), spec.params["units"]
            weight = self.xp.asarray(INITIALIZERS[spec.params["init"]](rng, fan_in, units, self.dtype))
            bias = self.xp.zeros(units, dtype=self.dtype) if spec.params["use_bias"] else None
            return Dense(spec, inputs, widths, self.xp, weight, bias)
        if spec.type == "dropout":
            return Dropout(spec, inputs, widths, self.xp, self)
        return NODE_TYPES[spec.type](spec, inputs, widths, self.xp)

    # -- parameters -------------------------------------------------------

    def parameters(self) -> dict[str, Any]:
        """Return the live parameter arrays: ``{node}.weight`` (in, out), ``{node}.bias`` (out,)."""
        return self._named("weight", "bias")

    def gradients(self) -> dict[str, Any]:
        """Return the gradients of the last backward pass, keyed like ``parameters``."""
        return self._named("weight_grad", "bias_grad")

    def _named(self, weight: str, bias: str) -> dict[str, Any]:
        arrays = {}
        for node in self.dense_nodes:
            arrays[f"{node.name}.weight"] = getattr(node, weight)
            if node.bias is not None:
                arrays[f"{node.name}.bias"] = getattr(node, bias)
        return arrays

    def set_parameters(self, params: dict[str, Any]) -> None:
        """Copy ``params`` (host or device arrays, keyed like ``parameters``) into the network."""
        own = self.parameters()
        missing = sorted(set(own) - set(params))
        unknown = sorted(set(params) - set(own))
        if missing or unknown:
            raise ValueError(f"parameters do not match the network: missing {missing}, unknown {unknown}")
        for key, target in own.items():
            value = params[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{key} has shape {tuple(value.shape)}, the network needs {tuple(target.shape)}")
            target[...] = self.xp.asarray(value, dtype=self.dtype)

    def parameter_count(self) -> int:
        return int(sum(p.size for p in self.parameters().values()))

    # -- passes -----------------------------------------------------------

    def as_array(self, X: Any) -> Any:
        """Return ``X`` on this network's device and dtype (no copy when it already is)."""
        return self.xp.asarray(X, dtype=self.dtype)

    def forward(self, X: Any, training: bool = False) -> Any:
        """Return the output node's values, shape (n, output width), for inputs (n, input_dim)."""
        values = [self.as_array(X)]
        for node in self.nodes:
            values.append(node.forward([values[i] for i in node.inputs], training))
        return values[self._output_position]

    def backward(self, delta: Any) -> None:
        """Back-propagate ``delta``, the gradient at the output node, into every gradient buffer."""
        grads: list[Any] = [None] * (len(self.nodes) + 1)
        grads[self._output_position] = delta
        for position in range(len(self.nodes), 0, -1):
            node = self.nodes[position - 1]
            delta = grads[position]
            grads[position] = None  # free early
            if delta is None:
                continue
            for source, grad in zip(node.inputs, node.backward(delta, self._needs[position - 1])):
                if grad is None:
                    continue
                if grads[source] is None:
                    grads[source] = grad
                else:
                    grads[source] = grads[source] + grad

    def _loss_step(self, X: Any, y: Any, loss: str, training: bool, class_weight: Any = None) -> tuple[float, Any]:
        """Run forward, the loss and backward; return the loss and the output values.

        ``class_weight``, an array on this network's device, weights a classification loss.
        """
        fused = self.output_node.activation == FUSED_ACTIVATION.get(loss)
        self.output_node.skip_activation = fused
        try:
            Z = self.forward(X, training)
            if class_weight is None:
                value, dZ = LOSSES[loss](Z, y, self.xp)
            else:
                value, dZ = LOSSES[loss](Z, y, self.xp, class_weight)
            # A confident classifier's output gradients fall to ~1e-40, far too small to move
            # any weight; as they shrink through the layers they turn subnormal, and x86
            # arithmetic on subnormals is many times slower (a converged job's epochs took 5x
            # longer). Zeroing them here keeps every product downstream in the normal range.
            dZ[self.xp.abs(dZ) < self._negligible_gradient] = 0
            self.backward(dZ)
        finally:
            self.output_node.skip_activation = False
        return value, Z

    def loss_and_gradients(self, X: Any, y: Any, loss: str, training: bool = False,
                           class_weight: Any = None) -> tuple[float, dict[str, Any]]:
        """Return the mean loss on (X, y) and copies of its gradients, keyed like ``parameters``.

        ``class_weight`` (n_classes,) makes a classification loss the weighted mean
        (``backprop.losses``); it is not validated here, :func:`backprop.train` does that.
        """
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
        weights = None if class_weight is None else self.as_array(class_weight)
        value, _ = self._loss_step(X, self.xp.asarray(y), loss, training, weights)
        return value, {key: grad.copy() for key, grad in self.gradients().items()}

    def logits(self, X: Any, loss: str) -> Any:
        """Return the values a loss sees: the output before an activation fused with ``loss``.

        An inference pass: what the nodes keep for a backward pass is let go once it ends,
        so the pass's values are not held until the next one (which would double the peak
        of a pass in chunks, and keep a wide network's last pass alive in a model cache).
        """
        fused = self.output_node.activation == FUSED_ACTIVATION.get(loss)
        self.output_node.skip_activation = fused
        try:
            return self.forward(X, training=False)
        finally:
            self.output_node.skip_activation = False
            self._forget_pass()

    def _forget_pass(self) -> None:
        """Drop the arrays the nodes keep from the last forward pass for the backward pass."""
        for node in self.nodes:
            node.output = None
            if isinstance(node, Dense):
                node.cached_inputs = []
            elif isinstance(node, Dropout):
                node.mask = None

    @property
    def activation_width(self) -> int:
        """Values one row holds in a forward pass: see :func:`activation_width`."""
        return activation_width(self.graph)

    def predict(self, X: Any, loss: str = "cross_entropy", max_rows: int | None = None) -> np.ndarray:
        """Return host predictions: class probabilities for the classification losses, values for ``mse``.

        Parameters
        ----------
        X
            Inputs, shape (n, input_dim).
        loss
            The loss the network was trained with; it picks the output transform.
        max_rows
            Rows per forward pass (None: all at once). A forward pass holds every node's
            values, ``max_rows * activation_width`` of them, so this bounds the memory of a
            prediction however many rows are asked for; the outputs are joined on the host.
        """
        if max_rows is None or len(X) <= max_rows:
            return to_numpy(OUTPUT_TRANSFORMS[loss](self.logits(X, loss), self.xp))
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        return np.concatenate([self.predict(X[start:start + max_rows], loss)
                               for start in range(0, len(X), max_rows)])

    def saturation(self) -> dict[str, float]:
        """Fraction of saturated outputs of each sigmoid/tanh node in the last forward pass."""
        result = {}
        for node in self.nodes:
            bounds = SATURATION_BOUNDS.get(node.activation or "")
            if bounds is None or node.output is None or node.skip_activation:
                continue
            low, high = bounds
            A = node.output
            result[node.name] = float(((A <= low) | (A >= high)).mean())
        return result


def activation_width(graph: NetworkSpec) -> int:
    """Return the values one row holds in a forward pass: the sum of the widths of the input and every node.

    A forward pass keeps every node's output until it ends (the backward pass needs them),
    so ``rows * activation_width`` values are in memory at once, whatever the parameters.
    """
    return sum(graph.widths.values())


def build(spec: dict, input_dim: int, seed: int = 0, dtype: str = "float32", device: str = "cpu") -> Network:
    """Build a network from its JSON definition for inputs of width ``input_dim``.

    Raises :class:`backprop.SpecError` listing every problem of an invalid spec.
    """
    return Network(spec, input_dim, seed=seed, dtype=dtype, device=device)
