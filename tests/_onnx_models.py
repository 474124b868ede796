"""Tiny ONNX graphs built in code (onnx.helper) for the onnxruntime tests and benchmark."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_mul(features: int = 4) -> bytes:
    """y = (x + b) * 2, z = x + b; input x: float32 [batch, features]; outputs y, z.

    About 10 µs per run on a CPU: the worst case for the wrapper's relative overhead."""
    b = numpy_helper.from_array(np.arange(features, dtype=np.float32), name="b")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), name="two")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "b"], ["z"]),
            helper.make_node("Mul", ["z", "two"], ["y"]),
        ],
        "add_mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", features]),
        ],
        initializer=[b, two],
    )
    return _model(graph)


def two_inputs() -> bytes:
    """out = a + cast(ids): inputs a float32 [batch, 3], ids int64 [batch, 3]; one output."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "idsf"], ["out"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])],
    )
    return _model(graph)


def matmul_chain(size: int = 256, layers: int = 8, seed: int = 0) -> bytes:
    """A chain of ``layers`` MatMul+Relu with [size, size] weights: input x float32 [batch, size].

    With the defaults and a batch of 64 a run takes on the order of a millisecond on one core."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = numpy_helper.from_array(
            (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), name=f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        initializer=inits,
    )
    return _model(graph)


def identity() -> bytes:
    """y = x, x float32 [1]: one node, the cheapest session to create (~0.4 ms), so the worst
    case for the relative cost of recording a session's creation."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return _model(graph)


def big_constant(megabytes: int, seed: int = 0) -> bytes:
    """y = x + w[0], with w a float32 initializer of ``megabytes`` MiB: a model whose bytes are
    big (the size of its serialization), however little it computes."""
    n = megabytes * (1 << 20) // 4
    w = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["w", "zero"], ["w0"], axis=0),
            helper.make_node("Add", ["x", "w0"], ["y"]),
        ],
        "big_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[
            numpy_helper.from_array(w, name="w"),
            numpy_helper.from_array(np.array([0], np.int64), name="zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()  # (the checker refuses nothing here, but takes seconds)
