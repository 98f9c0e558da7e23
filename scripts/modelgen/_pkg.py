"""Locate files inside installed model packages without importing them (their imports pull in cv2, torch...)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_path(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"error: the Python package '{package}' is not installed in the project venv; run scripts/setup"
        )
    return Path(next(iter(spec.submodule_search_locations)))
