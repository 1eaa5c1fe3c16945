#!/usr/bin/env bash
# The main job in one command: install mam-tf into the cached venv and reproduce seed 004's ECG
# autoencoder (MAC vs MAM under pruning, QAT int16x8, deployed on the host runtime) at the demo
# scale on built-in synthetic data. Extra arguments go to `mam-tf reproduce mwscas` (see
# `mam-tf reproduce mwscas --help`): e.g. --scale small, --out DIR, --seeds 0-2.
set -euo pipefail
# The reproduction reads ECG data and draws figures ([experiments]); its deployed models run on
# the C core, built with CMake ([deploy]).
MAM_TF_EXTRAS=deploy,experiments
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec mam-tf reproduce mwscas --scale demo "$@"
