#!/usr/bin/env bash
# Set up .venv and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real example data is built once into this cache and reused by the integration tests.
export FSDISTILL_EXAMPLES="${FSDISTILL_EXAMPLES:-$PWD/examples/data}"
.venv/bin/python examples/make_examples.py --out "$FSDISTILL_EXAMPLES" || echo "example data unavailable: those tests will skip"
set +e
# --durations=15: the log lists the slowest tests, so a test that grows slow shows in CI.
.venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: a broken suite, not a pass.
[ "$rc" -eq 5 ] && echo "pytest collected no tests" >&2
exit "$rc"
