"""`scripts/bench models`: fp32 vs INT8 candidates for every model, so the shipped precision is a measured choice.

For each scheme: batch-1 p50 latency, throughput at batch 1/8/32, speed-up over fp32 at batch 1, quality against
fp32, and batch invariance (largest difference between a sample run alone and the same sample inside a batch).
Plain ONNX Runtime through its Python API (the same C++ library the node uses), `--threads` intra-op threads.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from . import minilm, repository
from .sentences import SENTENCES

SEQ_LEN = 128
BATCHES = (1, 8, 32)


@dataclass
class Row:
    scheme: str
    p50_ms: float
    throughput: dict[int, float]
    quality: str
    batch_diff: float
    shipped: bool


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _measure(run: Callable[[int], None], batch: int, seconds: float) -> tuple[float, float]:
    """(inferences/s, p50 ms per call) for `run(batch)` within a time budget (at least 5 calls, at most 2,000)."""
    for _ in range(2):
        run(batch)
    lat: list[float] = []
    start = time.perf_counter()
    while (len(lat) < 5 or time.perf_counter() - start < seconds) and len(lat) < 2000:
        t0 = time.perf_counter()
        run(batch)
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    return len(lat) * batch / elapsed, float(np.median(lat) * 1e3)


def _temp_model(data: bytes) -> str:
    fd, path = tempfile.mkstemp(suffix=".onnx")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _dynamic(data: bytes, per_channel: bool) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    src, dst = _temp_model(data), _temp_model(b"")
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)
        with open(dst, "rb") as f:
            return f.read()
    finally:
        os.unlink(src)
        os.unlink(dst)


def _static_qdq(data: bytes, feeds: list[dict[str, np.ndarray]], op_types: list[str] | None = None) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN201
            return next(self.it, None)

    src, dst = _temp_model(data), _temp_model(b"")
    try:
        quantize_static(
            src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
        )
        with open(dst, "rb") as f:
            return f.read()
    finally:
        os.unlink(src)
        os.unlink(dst)


def _nbits8(data: bytes) -> bytes:
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # noqa: PLC0415
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    q = MatMulNBitsQuantizer(
        onnx.load_from_string(data),
        algo_config=DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=False, accuracy_level=4, bits=8),
    )
    q.process()
    return q.model.model.SerializeToString(deterministic=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _table(title: str, rows: list[Row], quality_label: str) -> None:
    fp32 = next(r for r in rows if r.scheme.startswith("fp32"))
    print(f"\n## {title}")
    print(
        f"{'scheme':34s} {'p50@1 ms':>9s} "
        + " ".join(f"{'inf/s@' + str(b):>10s}" for b in BATCHES)
        + f" {'speed-up@1':>10s}  {quality_label:28s} {'batch-invariant':>16s}"
    )
    for r in rows:
        speed = fp32.p50_ms / r.p50_ms
        inv = "yes" if r.batch_diff < 1e-6 else f"no ({r.batch_diff:.1e})"
        mark = " <- shipped" if r.shipped else ""
        print(
            f"{r.scheme:34s} {r.p50_ms:9.3f} "
            + " ".join(f"{r.throughput[b]:10.1f}" for b in BATCHES)
            + f" {speed:9.2f}x  {r.quality:28s} {inv:>16s}{mark}"
        )


def bench_minilm(threads: int, seconds: float) -> None:
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_file(str(minilm.package_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN)
    enc = tok.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    fp32 = repository._minilm_fp32()
    rng = np.random.default_rng(0)
    load_ids = rng.integers(1000, 20000, size=(max(BATCHES), SEQ_LEN)).astype(np.int64)
    load_mask = np.ones_like(load_ids)
    calib = [{"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]} for i in range(len(SENTENCES))]

    candidates = [
        ("fp32 (version 1)", fp32, False),
        ("int8 per-token x per-channel (v2)", repository._minilm_int8(), True),
        ("int8 dynamic per-tensor", _dynamic(fp32, False), False),
        ("int8 dynamic per-channel", _dynamic(fp32, True), False),
        ("int8 static QDQ MatMul (calibrated)", _static_qdq(fp32, calib, ["MatMul"]), False),
        ("int8 weight-only MatMulNBits", _nbits8(fp32), False),
    ]
    reference = None
    rows = []
    for scheme, data, shipped in candidates:
        s = _session(data, threads)

        def run(batch: int, s: ort.InferenceSession = s) -> None:
            s.run(None, {"input_ids": load_ids[:batch], "attention_mask": load_mask[:batch]})

        emb = s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        reference = emb if reference is None else reference
        alone = s.run(None, {"input_ids": ids[:1], "attention_mask": mask[:1]})[0]
        cos = _cosine(emb, reference)
        tp, p50 = {}, 0.0
        for b in BATCHES:
            tp[b], p = _measure(run, b, seconds)
            p50 = p if b == 1 else p50
        rows.append(Row(scheme, p50, tp, f"cos min {cos.min():.4f} mean {cos.mean():.4f}", float(np.abs(alone - emb[:1]).max()), shipped))
    _table(f"minilm-l6 (all-MiniLM-L6-v2), seq {SEQ_LEN}, {len(SENTENCES)} real sentences", rows, "cosine to fp32")


def bench_orientation(threads: int, seconds: float) -> None:
    from . import orientation  # noqa: PLC0415

    fp32 = orientation.model_bytes()
    rng = np.random.default_rng(1)
    # No image dataset ships with the package: synthetic normalised images (smooth random fields) stand in.
    base = rng.standard_normal((16, 3, 28, 28)).astype(np.float32)
    images = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    calib = [{"x": images[i : i + 1]} for i in range(8)]
    candidates = [
        ("fp32 (version 1, as published)", fp32, True),
        ("int8 dynamic (ConvInteger)", _dynamic(fp32, True), False),
        ("int8 static QDQ (calibrated)", _static_qdq(fp32, calib), False),
    ]
    reference = None
    rows = []
    for scheme, data, shipped in candidates:
        s = _session(data, threads)
        load = np.repeat(images, 2, axis=0)

        def run(batch: int, s: ort.InferenceSession = s) -> None:
            s.run(None, {"x": load[:batch]})

        out = s.run(None, {"x": images})[0]
        reference = out if reference is None else reference
        alone = s.run(None, {"x": images[:1]})[0]
        agree = float((out.argmax(1) == reference.argmax(1)).mean())
        tp, p50 = {}, 0.0
        for b in BATCHES:
            tp[b], p = _measure(run, b, seconds)
            p50 = p if b == 1 else p50
        quality = f"top-1 {agree:.0%}, max |dp| {np.abs(out - reference).max():.3f}"
        rows.append(Row(scheme, p50, tp, quality, float(np.abs(alone - out[:1]).max()), shipped))
    _table("orientation (CNN, 3x224x224, synthetic images)", rows, "agreement with fp32")


def bench_mlp(threads: int, seconds: float) -> None:
    fp32 = repository._mlp(False)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 256)).astype(np.float32)
    candidates = [
        ("fp32 (version 1)", fp32, True),
        ("int8 per-token x per-channel (v2)", repository._mlp(True), True),
        ("int8 dynamic per-channel", _dynamic(fp32, True), False),
    ]
    reference = None
    rows = []
    for scheme, data, shipped in candidates:
        s = _session(data, threads)

        def run(batch: int, s: ort.InferenceSession = s) -> None:
            s.run(None, {"input": x[:batch]})

        out = s.run(None, {"input": x[:64]})[0]
        reference = out if reference is None else reference
        alone = s.run(None, {"input": x[:1]})[0]
        cos = _cosine(out, reference)
        agree = float((out.argmax(1) == reference.argmax(1)).mean())
        tp, p50 = {}, 0.0
        for b in BATCHES:
            tp[b], p = _measure(run, b, seconds)
            p50 = p if b == 1 else p50
        rows.append(Row(scheme, p50, tp, f"cos min {cos.min():.4f}, argmax {agree:.0%}", float(np.abs(alone - out[:1]).max()), shipped))
    _table("mlp-tiny (256-512-512-10, seed 7)", rows, "logits vs fp32")


def run(threads: int, seconds: float) -> int:
    ort.set_default_logger_severity(3)
    print(f"# Model precision benchmark: ONNX Runtime {ort.__version__}, {threads} intra-op thread(s), {os.cpu_count()} CPUs")
    print("# speed-up@1 = fp32 p50 / scheme p50 at batch 1; batch-invariant = a sample's output alone equals it in a batch")
    bench_minilm(threads, seconds)
    bench_orientation(threads, seconds)
    bench_mlp(threads, seconds)
    return 0
