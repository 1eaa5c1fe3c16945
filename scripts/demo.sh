#!/usr/bin/env bash
# The main job in one command: install mam-tf into the cached venv and run the end-to-end demo
# on built-in synthetic data. Extra arguments go to `mam-tf demo` (see `mam-tf demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec mam-tf demo "$@"
