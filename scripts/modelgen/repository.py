"""The model repository: what we build, where it goes, and the recorded hashes that pin every byte.

Layout (like Triton's): `models/<name>/<version>/model.onnx` next to a committed `config.toml` whose `sha256` is the
model_id. Generated files are git-ignored; the generator and the recorded hashes are committed. `build` writes only
what is missing or stale and refuses to write bytes whose hash differs from the recorded one (unless `record`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

from . import imagenet, minilm, mlp, orientation, quantize, smollm

MLP_SEED = 7


@cache
def _minilm_fp32() -> bytes:
    return minilm.build().SerializeToString(deterministic=True)


@cache
def _minilm_int8() -> bytes:
    import onnx  # noqa: PLC0415

    return quantize.per_token_int8(onnx.load_from_string(_minilm_fp32())).SerializeToString(deterministic=True)


@cache
def _mlp(int8: bool) -> bytes:
    model = mlp.build(MLP_SEED)
    if int8:
        model = quantize.per_token_int8(model)
    return model.SerializeToString(deterministic=True)


@cache
def _smollm(int8: bool) -> bytes:
    model = smollm.build_int8() if int8 else smollm.build()
    return model.SerializeToString(deterministic=True)


@cache
def _imagenet(name: str) -> bytes:
    model = imagenet.build_mobilenet_v2() if name == "mobilenet-v2" else imagenet.build_efficientnet_lite0()
    return model.SerializeToString(deterministic=True)


def _vocab() -> bytes:
    return (minilm.package_dir() / "vocab.txt").read_bytes()


@dataclass(frozen=True)
class Entry:
    """One served model version and how to produce its files."""

    name: str
    version: int
    build: Callable[[], bytes]
    # Extra files next to model.onnx: file name -> producer. Its sha256 is `vocab_sha256` under [tokenizer] (a
    # tokenizer's vocabulary, or a whole tokenizer.json), or `labels_sha256` under [image] for `labels.json`.
    extra: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    # The chat template config.toml must state under [generation] (copied from the weights' own metadata).
    chat_template: Callable[[], str] | None = None

    def dir(self, root: Path) -> Path:
        return root / self.name / str(self.version)


ENTRIES: list[Entry] = [
    Entry("minilm-l6", 1, _minilm_fp32, {"vocab.txt": _vocab}),
    Entry("minilm-l6", 2, _minilm_int8, {"vocab.txt": _vocab}),
    Entry("orientation", 1, orientation.model_bytes),
    Entry("mlp-tiny", 1, lambda: _mlp(False)),
    Entry("mlp-tiny", 2, lambda: _mlp(True)),
    Entry("smollm2-135m", 1, lambda: _smollm(False), {"tokenizer.json": smollm.tokenizer_json}, smollm.chat_template),
    Entry("smollm2-135m", 2, lambda: _smollm(True), {"tokenizer.json": smollm.tokenizer_json}, smollm.chat_template),
    Entry("mobilenet-v2", 1, lambda: _imagenet("mobilenet-v2"), {"labels.json": imagenet.labels_json}),
    Entry("efficientnet-lite0", 1, lambda: _imagenet("efficientnet-lite0"), {"labels.json": imagenet.labels_json}),
]


def hash_key(file_name: str) -> tuple[str, str]:
    """Where config.toml records an extra file's sha256: (section, key)."""
    return ("image", "labels_sha256") if file_name == "labels.json" else ("tokenizer", "vocab_sha256")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded(entry: Entry, root: Path) -> dict[str, str]:
    """Recorded hashes for an entry: 'model.onnx' and each extra file, from its committed config.toml."""
    config = entry.dir(root) / "config.toml"
    if not config.is_file():
        raise SystemExit(f"error: {config} is missing; it is committed with the repository (git checkout -- models)")
    data = tomllib.loads(config.read_text())
    out = {"model.onnx": data.get("sha256", "")}
    for name in entry.extra:
        section, key = hash_key(name)
        out[name] = data.get(section, {}).get(key, "")
    return out


def _record(config: Path, key: str, value: str) -> None:
    text = config.read_text()
    new, n = re.subn(rf'(?m)^{key} = ".*"$', f'{key} = "{value}"', text)
    if n != 1:
        raise SystemExit(f"error: {config} has no single line '{key} = \"...\"' to record the hash in")
    config.write_text(new)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def build(root: Path, *, check: bool = False, record: bool = False, force: bool = False) -> int:
    """Build the repository under `root`. Returns the number of problems found (0 = all good).

    check:  rebuild every file in memory and compare with the recorded hash; write nothing.
    record: write the hashes of what was built into config.toml (after changing the generator on purpose).
    force:  rebuild even files that are present and match.
    """
    problems = 0
    for entry in ENTRIES:
        want = recorded(entry, root)
        if entry.chat_template is not None:
            config = entry.dir(root) / "config.toml"
            stated = tomllib.loads(config.read_text()).get("generation", {}).get("chat_template")
            if stated != entry.chat_template():
                problems += 1
                print(f"  {entry.name}/{entry.version}: [generation].chat_template in {config} differs from the model's own")
        producers = {"model.onnx": entry.build, **entry.extra}
        for file_name, produce in producers.items():
            path = entry.dir(root) / file_name
            label = f"{entry.name}/{entry.version}/{file_name}"
            key = "sha256" if file_name == "model.onnx" else hash_key(file_name)[1]
            if not (check or record or force) and want[file_name] and sha256_file(path) == want[file_name]:
                print(f"  {label:32s} up to date  {want[file_name][:16]}")
                continue
            data = produce()
            got = sha256(data)
            if record and got != want[file_name]:
                _record(entry.dir(root) / "config.toml", key, got)
                want[file_name] = got
                print(f"  {label:32s} recorded    {got[:16]}")
            if got != want[file_name]:
                problems += 1
                print(
                    f"  {label:32s} MISMATCH    built {got[:16]} but config.toml records {want[file_name][:16]}; "
                    "the generator or a package version changed (re-run with --record only if that was intended)"
                )
                continue
            if check:
                print(f"  {label:32s} reproduced  {got[:16]} ({len(data) / 1e6:.1f} MB)")
                continue
            _write_atomic(path, data)
            print(f"  {label:32s} built       {got[:16]} ({len(data) / 1e6:.1f} MB)")
    return problems
