"""`mlp-tiny`: a 256-512-512-10 ReLU MLP with weights drawn from a fixed seed, for tests and throughput benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZES = (256, 512, 512, 10)


def build(seed: int) -> onnx.ModelProto:
    # PCG64 + numpy's normal sampler give the same numbers on every platform for a given seed.
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        mm, out = f"fc{i}.matmul", f"fc{i}.out"
        nodes.append(helper.make_node("MatMul", [x, f"fc{i}.weight"], [mm], name=f"fc{i}_MatMul"))
        last = i == len(SIZES) - 2
        nodes.append(helper.make_node("Add", [mm, f"fc{i}.bias"], ["logits" if last else out], name=f"fc{i}_Add"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"fc{i}.relu"], name=f"fc{i}_Relu"))
            x = f"fc{i}.relu"
    graph = helper.make_graph(
        nodes,
        "mlp-tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZES[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", SIZES[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="mlbridge-modelgen")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
