"""Export trained models: an ONNX graph with the preprocessing inside, or a backprop .npz.

The ONNX graph takes raw rows, one input per feature column (float32 [N, 1]
for numeric columns, NaN for a missing value; string [N, 1] for categorical ones,
"" for a missing value), and reproduces /predict: mean imputation and missing
indicators (IsNaN, Where), standardization, one-hot encoding with ai.onnx.ml's
OneHotEncoder (a category never seen in training encodes as all zeros), the network, the
output transform of the loss, and the mapping back to labels or the target's
scale. docs/export.md describes both formats.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

import backprop
from backprop.checkpoint import pack, unpack
from backprop.losses import FUSED_ACTIVATION
from service.core.data.parsing import OTHER_CATEGORY
from service.core.problems import FieldError

FORMATS = ("onnx", "npz")
NPZ_FORMAT = "backprop.model.v1"
OPSET = 17
ML_OPSET = 3
# IR 8 is what opset 17 needs; older onnxruntime releases still read it.
IR_VERSION = 8
OUTPUT_NAMES = ("label", "probabilities", "predictions")
MEDIA_TYPES = {"onnx": "application/octet-stream", "npz": "application/octet-stream"}


def to_npz(model: Any) -> bytes:
    """Return the model's definition, weights and preprocessing as one .npz (JSON meta, no pickle).

    ``backprop.load(meta["definition"], data)`` rebuilds the network from the bytes.
    """
    arrays, _ = unpack(model.weights)
    meta = {
        "format": NPZ_FORMAT,
        "model_id": model.id,
        "task": model.task,
        "loss": model.loss,
        "definition": model.definition,
        "preprocessing": model.preprocessing,
        "classes": model.classes,
    }
    return pack(arrays, meta)


def onnx_problems(model: Any) -> list[FieldError]:
    """Return why the model cannot be exported as ONNX (empty: it can).

    A datetime feature's parts (year, month, ... from ISO text) have no ONNX operators
    in the standard domains; such a model exports as npz only (docs/export.md).
    """
    return [{"field": "format", "message": f"feature {f['name']!r} is a datetime column, which the ONNX "
                                           f"export does not take (its parts are computed from ISO 8601 "
                                           f"text); export this model with format=npz"}
            for f in model.preprocessing["features"] if f["kind"] == "datetime"]


def to_onnx(model: Any) -> bytes:
    """Return a serialized ONNX model that maps raw rows to /predict's outputs.

    Call onnx_problems first: a model with a datetime feature has no graph.
    """
    # Imported here: only this endpoint needs onnx, and the API starts faster without it.
    import onnx

    graph = _GraphBuilder(onnx, model)
    proto = graph.build()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class _GraphBuilder:
    """Collect the nodes, initializers, inputs and outputs of one exported model."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.model = model
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0
        self.features: list[dict[str, Any]] = model.preprocessing["features"]
        self.target: dict[str, Any] = model.preprocessing["target"]
        reserved = {f["name"] for f in self.features}
        # Output names are fixed; a feature column of the same name pushes the output aside.
        self.output_names = {name: name if name not in reserved else f"output_{name}" for name in OUTPUT_NAMES}

    # helpers -----------------------------------------------------------

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"bp/{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None,
             domain: str = "", **attributes: Any) -> str:
        name = output or self._name(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=self._name(op),
                                                domain=domain, **attributes))
        return name

    def constant(self, values: np.ndarray, hint: str) -> str:
        name = self._name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(values), name))
        return name

    def joined(self, values: list[str], hint: str) -> str:
        return values[0] if len(values) == 1 else self.node("Concat", values, hint, axis=1)

    # stages ------------------------------------------------------------

    def build(self) -> Any:
        encoded = self.preprocessing()
        network = backprop.load(self.model.definition, self.model.weights)
        outputs = self.network(network, encoded)
        if self.target["task"] == "classification":
            self.classification(outputs)
        else:
            self.regression(outputs)
        graph = self.helper.make_graph(self.nodes, "backprop_model", self.inputs, self.outputs,
                                       initializer=self.initializers)
        proto = self.helper.make_model(
            graph, producer_name="backprop-service", ir_version=IR_VERSION,
            opset_imports=[self.helper.make_opsetid("", OPSET), self.helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
            doc_string=f"backprop-service model {self.model.id}: one input per feature column, "
                       f"outputs {', '.join(o.name for o in self.outputs)}")
        self.helper.set_model_props(proto, {
            "model_id": self.model.id,
            "task": self.target["task"],
            "features": json.dumps([f["name"] for f in self.features]),
            "targets": json.dumps(self.target["names"]),
            "classes": json.dumps(self.model.classes),
        })
        return proto

    def preprocessing(self) -> str:
        """Declare one input per feature; return the name of the encoded matrix."""
        tensor = self.onnx.TensorProto
        numeric: list[dict[str, Any]] = []
        indicators: list[int] = []
        blocks: list[str] = []
        for feature in self.features:
            name = feature["name"]
            if feature["kind"] == "numeric":
                self.inputs.append(self.helper.make_tensor_value_info(name, tensor.FLOAT, ["N", 1]))
                if feature.get("indicator"):
                    indicators.append(len(numeric))
                numeric.append(feature)
            else:
                self.inputs.append(self.helper.make_tensor_value_info(name, tensor.STRING, ["N", 1]))
                categories = [str(c) for c in feature["categories"]]
                if feature.get("missing_category"):
                    # The missing slot follows the categories; "" is how a missing string is given
                    # (an upload's empty cell is missing, so no category is "").
                    categories.append("")
                if feature.get("fold"):
                    # An unknown value is one the upload folded into `other` (Preprocessor._unknown),
                    # and a missing one without its slot is all zeros: an index beyond the categories.
                    known = categories + ([] if feature.get("missing_category") else [""])
                    codes = self.node("CategoryMapper", [name], "category", domain="ai.onnx.ml",
                                      cats_strings=known, cats_int64s=list(range(len(known))),
                                      default_int64=categories.index(OTHER_CATEGORY))
                    hot = self.node("OneHotEncoder", [codes], "onehot", domain="ai.onnx.ml",
                                    cats_int64s=list(range(len(categories))), zeros=1)
                else:
                    # zeros=1: a category not seen in training encodes as all zeros, as in /predict.
                    hot = self.node("OneHotEncoder", [name], "onehot", domain="ai.onnx.ml",
                                    cats_strings=categories, zeros=1)
                blocks.append(self.node("Flatten", [hot], "onehot_2d", axis=1))
        parts = []
        if numeric:
            matrix = self.joined([f["name"] for f in numeric], "numeric")
            mean = self.constant(np.array([f["mean"] for f in numeric], dtype=np.float32), "mean")
            std = self.constant(np.array([f["std"] for f in numeric], dtype=np.float32), "std")
            # NaN is a missing value: imputed with the training mean, which standardizes to 0.
            missing = self.node("IsNaN", [matrix], "missing")
            filled = self.node("Where", [missing, mean, matrix], "imputed")
            parts.append(self.node("Div", [self.node("Sub", [filled, mean], "centred"), std], "standardized"))
            if indicators:
                chosen = self.node("Gather", [missing, self.constant(np.array(indicators, dtype=np.int64),
                                                                     "indicator_columns")],
                                   "indicated", axis=1)
                parts.append(self.node("Cast", [chosen], "indicators", to=tensor.FLOAT))
        # Preprocessor's layout: numeric features, their missing indicators, one block per categorical feature.
        return self.joined(parts + blocks, "encoded")

    def network(self, network: Any, encoded: str) -> str:
        """Add the network's nodes; return the name of its logits (output before a fused activation).

        The graph computes in float32 whatever the network's dtype: onnxruntime has no
        float64 kernels for several activations (Elu, for one).
        """
        values = [encoded]
        fused = FUSED_ACTIVATION.get(self.model.loss)
        for node in network.nodes:
            inputs = [values[i] for i in node.inputs]
            activation = node.activation
            if node is network.output_node and activation == fused:
                activation = None  # applied with the loss's output transform
            if node.type == "dense":
                joined = self.joined(inputs, f"{node.name}/in")
                weight = self.constant(backprop.to_numpy(node.weight).astype(np.float32), f"{node.name}.weight")
                value = self.node("MatMul", [joined, weight], f"{node.name}/matmul")
                if node.bias is not None:
                    bias = self.constant(backprop.to_numpy(node.bias).astype(np.float32), f"{node.name}.bias")
                    value = self.node("Add", [value, bias], f"{node.name}/linear")
            elif node.type == "add":
                value = self.node("Sum", inputs, node.name)
            elif node.type == "concat":
                value = self.node("Concat", inputs, node.name, axis=1)
            else:  # activation, dropout (identity at inference): the concatenation of the inputs
                value = self.joined(inputs, node.name)
            values.append(self.activation(value, activation, node.name))
        return values[network.nodes.index(network.output_node) + 1]

    def activation(self, value: str, activation: str | None, hint: str) -> str:
        if activation in (None, "identity"):
            return value
        if activation == "leaky_relu":
            return self.node("LeakyRelu", [value], hint, alpha=backprop.activations.LEAKY_RELU_SLOPE)
        if activation == "elu":
            return self.node("Elu", [value], hint, alpha=backprop.activations.ELU_ALPHA)
        if activation == "softmax":
            return self.node("Softmax", [value], hint, axis=1)
        ops = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softplus": "Softplus"}
        return self.node(ops[activation], [value], hint)

    def classification(self, logits: str) -> None:
        tensor = self.onnx.TensorProto
        if self.model.loss == "binary_cross_entropy":
            positive = self.node("Sigmoid", [logits], "positive")
            one = self.constant(np.array(1.0, dtype=np.float32), "one")
            negative = self.node("Sub", [one, positive], "negative")
            probabilities = self.node("Concat", [negative, positive], "probabilities", axis=1)
        else:
            probabilities = self.node("Softmax", [logits], "probabilities", axis=1)
        probabilities = self.node("Identity", [probabilities], "probabilities",
                                  output=self.output_names["probabilities"])
        index = self.node("ArgMax", [probabilities], "index", axis=1, keepdims=0)
        classes, element = _class_tensor(self.model.classes or [], tensor)
        self.node("Gather", [self.constant(classes, "classes"), index], "label",
                  output=self.output_names["label"], axis=0)
        n_classes = len(self.model.classes or [])
        self.outputs = [self.helper.make_tensor_value_info(self.output_names["label"], element, ["N"]),
                        self.helper.make_tensor_value_info(self.output_names["probabilities"], tensor.FLOAT,
                                                           ["N", n_classes])]

    def regression(self, outputs: str) -> None:
        tensor = self.onnx.TensorProto
        # /predict maps back in float64; so does the graph, to agree to the last digit.
        values = self.node("Cast", [outputs], "outputs64", to=tensor.DOUBLE)
        std = self.constant(np.array(self.target["std"], dtype=np.float64), "target_std")
        mean = self.constant(np.array(self.target["mean"], dtype=np.float64), "target_mean")
        scaled = self.node("Add", [self.node("Mul", [values, std], "scaled"), mean], "unscaled")
        width = len(self.target["names"])
        name = self.output_names["predictions"]
        if width == 1:
            self.node("Reshape", [scaled, self.constant(np.array([-1], dtype=np.int64), "flat")], "predictions",
                      output=name)
            self.outputs = [self.helper.make_tensor_value_info(name, tensor.DOUBLE, ["N"])]
        else:
            self.node("Identity", [scaled], "predictions", output=name)
            self.outputs = [self.helper.make_tensor_value_info(name, tensor.DOUBLE, ["N", width])]


def _class_tensor(classes: list[Any], tensor: Any) -> tuple[np.ndarray, int]:
    """Return the class labels as a constant array and its ONNX element type."""
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.int64), tensor.INT64
    if classes and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.float64), tensor.DOUBLE
    return np.array([str(c) for c in classes], dtype=object), tensor.STRING
