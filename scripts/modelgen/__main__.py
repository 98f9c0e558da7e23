"""CLI: `python -m modelgen build [--check|--record|--force] [--root models]` and `python -m modelgen bench`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(prog="modelgen")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the model repository (only what is missing or stale)")
    b.add_argument("--root", type=Path, default=ROOT / "models")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="rebuild in memory and compare with the recorded hashes")
    mode.add_argument("--record", action="store_true", help="record the hashes of what is built into config.toml")
    mode.add_argument("--force", action="store_true", help="rebuild files even when they are present and match")
    bench = sub.add_parser("bench", help="fp32 vs INT8 throughput and quality for every model")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    llm = sub.add_parser("llm-quality", help="SmolLM2: greedy agreement with the numpy reference, fp32 vs INT8 perplexity")
    llm.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()

    if args.cmd == "build":
        from .repository import build  # noqa: PLC0415

        problems = build(args.root, check=args.check, record=args.record, force=args.force)
        if problems:
            print(f"error: {problems} file(s) do not match their recorded sha256", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "llm-quality":
        from .llm_quality import run as quality  # noqa: PLC0415

        return quality(args.tokens)
    from .bench import run  # noqa: PLC0415

    return run(threads=args.threads, seconds=args.seconds)


if __name__ == "__main__":
    sys.exit(main())
