#!/usr/bin/env bash
# Installs everything the tests need (Python packages into the cached venv, and the C toolchain
# pieces when missing) and runs the whole test suite. README's test command; .ci/run calls it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
cd "$REPO_ROOT"
# pytest exits 5 when it collects no test: with `set -e` that fails this script, as it must.
python -m pytest "$@"
