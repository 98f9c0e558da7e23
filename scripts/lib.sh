# Shared helpers for the scripts in this folder. Source it: `. "$(dirname "$0")/lib.sh"`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# The standard clients (tritonclient, openai) live in their own venv: their pins differ from the model tooling's.
CLIENTS_VENV="$ROOT/.venv-clients"
CLIENTS_PY="$CLIENTS_VENV/bin/python"
FOUNDRY_BIN="$ROOT/node_modules/@foundry-rs"
FORGE="$FOUNDRY_BIN/forge-linux-amd64/bin/forge"
ANVIL="$FOUNDRY_BIN/anvil-linux-amd64/bin/anvil"
CAST="$FOUNDRY_BIN/cast-linux-amd64/bin/cast"

if [ -t 1 ]; then BOLD=$'\e[1m'; RED=$'\e[31m'; RESET=$'\e[0m'; else BOLD=""; RED=""; RESET=""; fi
step() { printf '%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
info() { printf '    %s\n' "$*"; }
die() { printf '%serror:%s %s\n' "$RED" "$RESET" "$*" >&2; exit 1; }

need() { # need CMD "how to get it"
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; $2"
}

# The ONNX Runtime library from the venv's onnxruntime wheel (the node also finds it on its own).
ort_library() {
  local lib
  lib="$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort | tail -n1 || true)"
  [ -n "$lib" ] || die "ONNX Runtime is not installed in $VENV; run scripts/setup"
  printf '%s\n' "$lib"
}

# A stamp file records the hash of the inputs of an install step, so a second run can skip it.
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
