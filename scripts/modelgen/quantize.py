"""INT8 quantization schemes for the model repository.

`per_token_int8` is our own scheme. Every MatMul with a constant weight becomes an INT8 GEMM
(ONNX Runtime's `MatMulIntegerToFloat`, u8 x s8): weights are quantized symmetrically once per output channel,
activations symmetrically per token (one scale per row of the input, computed at run time by a blocked
`QuantizeLinear`). Because no scale is shared across rows, a sample's output does not depend on its batch-mates —
the property validators need to re-execute jobs exactly — unlike ONNX Runtime's dynamic quantization, whose activation
scale spans the whole batch. Weight quantization is element-wise IEEE arithmetic in numpy (max, divide, round), so
the same fp32 graph gives the same bytes on every machine.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def quantize_weight_per_channel(w: np.ndarray, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per output column of a [in, out] weight, values in [-qmax, qmax]. Returns (int8 weight, fp32
    scale[out])."""
    amax = np.abs(w).max(axis=0).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def per_token_int8(
    model: onnx.ModelProto, keep_fp32: Callable[[str], bool] = lambda _: False, weight_qmax: int = 127
) -> onnx.ModelProto:
    """Return a copy of `model` with every constant-weight MatMul quantized per token x per channel (except those whose
    weight name `keep_fp32` selects), weights in [-weight_qmax, weight_qmax]."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    quantized_inputs: dict[str, tuple[str, str]] = {}  # activation -> (int8 tensor, row scale)
    replaced_weights: set[str] = set()
    consts_added = False

    def const(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or keep_fp32(node.input[1]):
            new_nodes.append(node)
            continue
        if not consts_added:
            const("ptq.axis_last", np.array([-1], dtype=np.int64))
            const("ptq.one", np.array(1.0, dtype=np.float32))
            const("ptq.inv_qmax", np.array(1.0 / 127.0, dtype=np.float32))
            const("ptq.tiny", np.array(1e-12, dtype=np.float32))
            const("ptq.zp_u8", np.array(128, dtype=np.uint8))
            consts_added = True
        x, w_name = node.input
        base = node.name or w_name
        if x not in quantized_inputs:
            # Per-row symmetric scale s = max|x| / 127 over the last axis, then one blocked QuantizeLinear
            # (block = the whole row) to uint8 around zero point 128: ONNX Runtime's fast x64 kernel is u8 x s8.
            width = numpy_helper.to_array(inits[w_name]).shape[0]
            new_nodes.append(helper.make_node("Abs", [x], [f"{base}.abs"], name=f"{base}.abs_op"))
            new_nodes.append(helper.make_node("ReduceMax", [f"{base}.abs", "ptq.axis_last"], [f"{base}.amax"], keepdims=1, name=f"{base}.reducemax"))
            new_nodes.append(helper.make_node("Max", [f"{base}.amax", "ptq.tiny"], [f"{base}.amax_safe"], name=f"{base}.max"))
            new_nodes.append(helper.make_node("Mul", [f"{base}.amax_safe", "ptq.inv_qmax"], [f"{base}.xscale"], name=f"{base}.scale"))
            new_nodes.append(helper.make_node("Shape", [f"{base}.xscale"], [f"{base}.sshape"], name=f"{base}.shape"))
            new_nodes.append(helper.make_node("Expand", ["ptq.zp_u8", f"{base}.sshape"], [f"{base}.zp"], name=f"{base}.zp_op"))
            new_nodes.append(helper.make_node("QuantizeLinear", [x, f"{base}.xscale", f"{base}.zp"], [f"{base}.xq"], axis=-1, block_size=width, name=f"{base}.quantize"))
            quantized_inputs[x] = (f"{base}.xq", f"{base}.xscale")
        xq, xscale = quantized_inputs[x]
        wq, wscale = quantize_weight_per_channel(numpy_helper.to_array(inits[w_name]), weight_qmax)
        wq_name = const(f"{w_name}.int8", wq)
        ws_name = const(f"{w_name}.scale", wscale)
        replaced_weights.add(w_name)
        # ONNX Runtime's fused u8 x s8 GEMM with the per-channel weight scale applied in the epilogue
        # (activation scale 1), then the per-row activation scale.
        new_nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [xq, wq_name, "ptq.one", ws_name, "ptq.zp_u8"],
                [f"{base}.cols"],
                domain="com.microsoft",
                name=f"{base}.matmul_int8",
            )
        )
        new_nodes.append(helper.make_node("Mul", [f"{base}.cols", xscale], [node.output[0]], name=f"{base}.mul_rows"))

    kept = [t for t in graph.initializer if t.name not in replaced_weights]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    # Blocked QuantizeLinear needs opset 21.
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 21)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = max(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model
