"""`scripts/bench llm-quality`: is the served SmolLM2 graph the model, and what does INT8 cost in quality?

1. Greedy agreement: for each prompt, the numpy reference (`smollm.reference_greedy`, no ONNX) against the fp32 and
   INT8 graphs run by ONNX Runtime (plain greedy loop over the KV-cache interface). The first token must match for
   both; the report gives how many of the first N tokens agree.
2. Perplexity of fp32 and INT8 on a fixed text (`scripts/data/sentences.txt`, one teacher-forced pass).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import repository, smollm

PROMPTS = [
    "The capital of France is",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "The three primary colors are",
    "Once upon a time, there was a",
]
TEXT = Path(__file__).resolve().parents[1] / "data" / "sentences.txt"


class Decoder:
    """A plain batch-1 loop over the graph's KV-cache interface."""

    def __init__(self, data: bytes, threads: int = 2) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.cfg = smollm.load()[0]

    def run(self, tokens: list[int], past: list, logits_at: list[int]) -> tuple[np.ndarray, list]:
        p = past[0][0].shape[2]
        feed = {
            "input_ids": np.array([tokens], np.int64),
            "position_ids": np.array([list(range(p, p + len(tokens)))], np.int64),
            "attention_mask": np.ones((1, p + len(tokens)), np.int64),
            "logits_index": np.array([logits_at], np.int64),
        }
        for l, (k, v) in enumerate(past):
            feed[f"past_key.{l}"], feed[f"past_value.{l}"] = k, v
        out = self.s.run(None, feed)
        grown = [(np.concatenate([k, out[1 + 2 * l]], 2), np.concatenate([v, out[2 + 2 * l]], 2)) for l, (k, v) in enumerate(past)]
        return out[0][0], grown

    def empty(self) -> list:
        c = self.cfg
        return [(np.zeros((1, c.kv_heads, 0, c.head_dim), np.float32),) * 2 for _ in range(c.layers)]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        logits, past = self.run(prompt, self.empty(), [len(prompt) - 1])
        out = []
        for _ in range(n):
            out.append(int(np.argmax(logits[-1])))
            logits, past = self.run([out[-1]], past, [0])
        return out

    def perplexity(self, tokens: list[int]) -> float:
        logits, _ = self.run(tokens, self.empty(), list(range(len(tokens) - 1)))
        logits = logits.astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = logz - logits[np.arange(len(tokens) - 1), tokens[1:]]
        return math.exp(float(nll.mean()))


def run(new_tokens: int = 12) -> int:
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_str(smollm.tokenizer_json().decode())
    fp32 = Decoder(repository._smollm(False))
    int8 = Decoder(repository._smollm(True))
    failures = 0
    print(f"Greedy agreement with the numpy reference, first {new_tokens} tokens:")
    print(f"  {'prompt':44s} {'reference continuation':34s} fp32   int8")
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        ref = smollm.reference_greedy(ids, new_tokens)
        a, b = fp32.greedy(ids, new_tokens), int8.greedy(ids, new_tokens)

        def agree(x: list[int]) -> int:
            return next((i for i, (p, q) in enumerate(zip(x, ref)) if p != q), len(ref))

        ok = a[0] == ref[0] and b[0] == ref[0]
        failures += not ok
        text = tok.decode(ref).replace("\n", "\\n")[:32]
        print(f"  {prompt:44s} {text!r:34s} {agree(a):2d}/{new_tokens}  {agree(b):2d}/{new_tokens}{'' if ok else '  FIRST TOKEN DIFFERS'}")
    text = " ".join(TEXT.read_text().split("\n"))
    ids = tok.encode(text).ids[:512]
    p32, p8 = fp32.perplexity(ids), int8.perplexity(ids)
    print(f"Perplexity on {TEXT.name} ({len(ids)} tokens): fp32 {p32:.3f}, INT8 {p8:.3f} ({(p8 / p32 - 1) * 100:+.1f}%)")
    return 1 if failures else 0
