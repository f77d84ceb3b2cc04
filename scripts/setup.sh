#!/usr/bin/env bash
# Create .venv (if missing) and install fsdistill with its pinned torch/torchvision pair. Idempotent.
# Quiet unless it fails: pip's output (and setuptools' "Editable installation" notice box, which pip --quiet still
# let through) goes to .cache/setup.log and is printed only when a step fails, so a good set-up prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .cache
LOG=.cache/setup.log
: >"$LOG"

quietly() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "set-up failed: $* exited with an error; its output (kept in $LOG):" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  quietly "$PYTHON" -m venv .venv
fi
quietly .venv/bin/python -m pip install --upgrade pip
# The [dev] extra brings pytest, the readers of the real example data (tifffile, nibabel, scikit-image) and the
# tools' readers the predict --format tests check against (pycocotools, label-studio-sdk);
# [export] brings onnx, onnxscript and onnxruntime for fsdistill export / predict --backend onnx and their tests.
# FSDISTILL_EXTRAS replaces that list: CI (.ci/run) adds ray, so the Ray engine's tests run there too.
quietly .venv/bin/python -m pip install -e ".[${FSDISTILL_EXTRAS:-dev,export}]"
