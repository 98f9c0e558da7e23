"""Read a PyTorch checkpoint (`.pth` state dict) into numpy arrays without installing torch.

Two layouts exist. The legacy one (torch < 1.6, which both of our ImageNet checkpoints use) is a run of pickles: a
magic number, the protocol version, system info, the state dict, whose tensors name their storages by key through
pickle's persistent ids, then the list of storage keys, then each storage's raw bytes in that order (an int64 element
count, then the elements, little-endian). The newer one is a zip holding the same state-dict pickle (`data.pkl`) and
one file per storage (`data/<key>`). Every pickle of both is read with an unpickler that builds only what a state
dict holds: ordered dicts and tensors (`torch._utils._rebuild_tensor_v2`); the header pickles and the storage-key list
may hold no class at all. Any other class is refused, so a checkpoint cannot run code; a tensor must lie inside its
storage (non-negative offset and strides). Callers also check the file's sha256 before reading it ([`load`]).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, kind: str, numel: int) -> None:
        if kind not in DTYPES:
            raise ValueError(f"unsupported storage type {kind}")
        self.dtype = np.dtype(DTYPES[kind]).newbyteorder("<")
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("a tensor's storage was never read")
        if self.offset < 0 or any(s < 0 for s in self.stride) or any(n < 0 for n in self.size):
            raise ValueError("a tensor with a negative offset, size or stride")
        span = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else 0
        if self.offset + span > data.size:
            raise ValueError("a tensor reaches past its storage")
        strides = [s * data.itemsize for s in self.stride]
        view = np.lib.stride_tricks.as_strided(data[self.offset :], shape=self.size, strides=strides)
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    return _Tensor(storage, offset, size, stride)


class _Plain(pickle.Unpickler):
    """Plain data only (numbers, strings, lists, tuples, dicts): any class or call is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"a checkpoint header holds no {module}.{name}; refusing to load it")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a checkpoint header holds no persistent ids")


def _plain(f):
    return _Plain(f).load()


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict[str, _Storage]) -> None:
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"a state dict holds no {module}.{name}; refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(kind, int(numel))
        return self.storages[key]


def _arrays(state) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise ValueError("the checkpoint is not a state dict")
    return {k: v.array() for k, v in state.items() if isinstance(v, _Tensor)}


def _load_legacy(f) -> dict[str, np.ndarray]:
    if _plain(f) != LEGACY_MAGIC:
        raise ValueError("not a PyTorch checkpoint (bad magic number)")
    _plain(f)  # protocol version
    _plain(f)  # system info (byte order, type sizes)
    storages: dict[str, _Storage] = {}
    state = _Unpickler(f, storages).load()
    keys = _plain(f)
    if not isinstance(keys, list):
        raise ValueError("the checkpoint's storage keys are not a list")
    for key in keys:
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        raw = f.read(numel * storage.dtype.itemsize)
        if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
            raise ValueError(f"storage {key} is truncated or has the wrong size")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _arrays(state)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("a zip checkpoint without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        state = _Unpickler(io.BytesIO(z.read(pkl)), storages).load()
        for key, storage in storages.items():
            raw = z.read(f"{prefix}data/{key}")
            if len(raw) != storage.numel * storage.dtype.itemsize:
                raise ValueError(f"storage {key} has the wrong size")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _arrays(state)


def load(path: Path, sha256: str) -> dict[str, np.ndarray]:
    """The tensors of the state dict in `path`, by name (non-tensor entries are left out), once the file is checked to
    have the `sha256` it was pinned with."""
    import hashlib  # noqa: PLC0415

    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha256:
        raise SystemExit(f"error: {path} has sha256 {got}, not the pinned {sha256}; reinstall the package (scripts/setup)")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with path.open("rb") as f:
        return _load_legacy(f)
