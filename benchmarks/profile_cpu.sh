#!/usr/bin/env bash
# The paper's speed and memory table on this machine's CPU (fsdistill profile), then the ResNet-50 student check.
#
#   1. efficientnet-lite0 (the default backbone), 384 px, ways 1..5 x shots {1,5,10,25,50}: teacher (cached
#      supports), student and bare backbone -> benchmarks/results/profile_cpu/lite0/; prints the three headline
#      ratios (student max/min latency over the grid, teacher/student at 5-way 50-shot, student/backbone).
#   2. resnet50 (random init, --student-width 8), 384 px, ways 1..5 at 1 shot (the student does not depend on
#      shots; 1 shot keeps the ResNet-50 teacher cheap) -> .../resnet50/; prints student at 5 ways / backbone.
#
# Random weights and inputs: nothing is downloaded. THREADS (default 2) sets the torch/OpenMP threads; run it on
# an otherwise idle machine: other work on the same cores stalls OpenMP barriers and inflates every timing (the
# load average at start and end is recorded in profile.json and profile.md).
# Usage: bash benchmarks/profile_cpu.sh   (env: PYTHON, THREADS, OUT, FSDISTILL_PROFILE_ARGS for extra flags)
set -euo pipefail
# OUT relative to where the script is called from (resolved before moving to the repository root).
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"; fi
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-benchmarks/results/profile_cpu}"
THREADS="${THREADS:-2}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
mkdir -p "$OUT"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
t0=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m fsdistill profile --ways 5 --shots 50 --size 384 --device cpu --out "$OUT/lite0" ${FSDISTILL_PROFILE_ARGS:-}
t1=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m fsdistill profile --backbone resnet50 --student-width 8 --ways 5 --shots 1 --size 384 --device cpu \
    --out "$OUT/resnet50" ${FSDISTILL_PROFILE_ARGS:-}
t2=$(date +%s)
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"

"$PY" - "$OUT" "$((t1 - t0))" "$((t2 - t1))" <<'PYEOF'
import json, sys
from pathlib import Path

out, lite_s, r50_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lite = json.loads((out / "lite0" / "profile.json").read_text())
r50 = json.loads((out / "resnet50" / "profile.json").read_text())


def line(name, value, goal, ok):
    shown = "n/a" if value is None else f"{value:.2f}x"
    verdict = "n/a" if value is None else ("met" if ok(value) else "MISSED")
    print(f"  {name:<48} {shown:>10}   goal {goal:<8} {verdict}")


def cell(ratios, key):
    """'W-way S-shot' of a cell the ratios name (FSDISTILL_PROFILE_ARGS may choose another grid)."""
    c = ratios.get(key)
    return "n/a" if not c else f"{c['ways']}-way {c['shots']}-shot"


r = lite["ratios"]
print(f"\n{lite['backbone']} {lite['size']} px on {lite['device']}: {lite_s} s wall (goal <= 900 s)")
line("student latency max/min over the grid", r["student_max_over_min"], "<= 1.10", lambda v: v <= 1.10)
line("  same, per-cell student/backbone (drift out)", r.get("student_paired_max_over_min"), "<= 1.10", lambda v: v <= 1.10)
line(f"teacher/student at {cell(r, 'teacher_cell')}", r["teacher_over_student"], ">= 50", lambda v: v >= 50)
line(f"student/backbone at {cell(r, 'largest_cell')} (largest cell)", r["student_over_backbone"], "<= 1.15",
     lambda v: v <= 1.15)
line("student/backbone, worst cell", r["student_over_backbone_max"], "<= 1.15", lambda v: v <= 1.15)
r = r50["ratios"]
print(f"\n{r50['backbone']} {r50['size']} px, --student-width 8, on {r50['device']}: {r50_s} s wall")
line(f"student at {cell(r, 'largest_cell')} / bare backbone", r["student_over_backbone"], "<= 1.5", lambda v: v <= 1.5)
print(f"\ntables: {out}/lite0/profile.md, {out}/resnet50/profile.md")
PYEOF
