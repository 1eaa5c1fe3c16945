#!/usr/bin/env bash
# Installs everything the tests need and runs the whole test suite (README's test command;
# .ci/run calls it): the C/C++ compilers and CMake from Debian when missing (the fused kernel,
# the C core and its sanitizer-built fuzz driver need them), then the Python packages into the
# cached venv, then pytest. The Cortex-M7 tests (tests/test_mcu.py) need the Arm bare-metal
# compiler with newlib (semihosting) and QEMU: installed here too.
set -euo pipefail
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v make >/dev/null 2>&1 || need+=(make)
command -v arm-none-eabi-gcc >/dev/null 2>&1 || need+=(gcc-arm-none-eabi)
case "$(arm-none-eabi-gcc -print-file-name=rdimon.specs 2>/dev/null)" in
    /*) ;;
    *) need+=(libnewlib-arm-none-eabi) ;;
esac
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "[mam-tf] missing ${need[*]}: install them (e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "[mam-tf] installing ${need[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
MAM_TF_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"
# The compiler is there now: a fused kernel that fails to build is a failure, not a skip.
export MAM_TF_REQUIRE_FUSED=1
# Likewise the Cortex-M7 firmware under QEMU: a toolchain that does not work is a failure.
export MAM_TF_REQUIRE_MCU=1
# The whole suite runs with Keras 3 on the TensorFlow backend (unless KERAS_BACKEND says
# otherwise). Keras fixes its backend when it is first imported, so the Keras 3 tests then run
# again on JAX and on PyTorch, each in its own pytest process: their ids carry the backend
# (test_x[jax]) and a failure is reported there with its output. These passes run after a full
# run (no arguments), or for the backends listed in MAM_TF_KERAS3_BACKENDS (e.g. "jax", or ""
# for none). Every pass runs even when one fails; the script fails if any did. pytest exits 5
# when it collects no test: that fails the script, as it must.
# A full run spreads the suite's files over MAM_TF_TEST_WORKERS pytest processes (pytest-xdist,
# default 2; 0 runs it in this one process): a file's tests stay together, in one process, so
# that its module fixtures (a tiny reproduction, say) are computed once. It prints the slowest
# tests at the end.
suite_args=()
if [ "$#" -eq 0 ]; then
    keras3_backends="${MAM_TF_KERAS3_BACKENDS-jax torch}"
    workers="${MAM_TF_TEST_WORKERS:-2}"
    suite_args+=(--durations=25)
else
    keras3_backends="${MAM_TF_KERAS3_BACKENDS-}"
    workers="${MAM_TF_TEST_WORKERS:-0}"
fi
if [ "$workers" != 0 ]; then
    suite_args+=(-n "$workers" --dist loadfile)
fi
keras3_tests=()
for f in tests/test_keras3_*.py; do
    # test_keras3_backends.py starts a process per backend itself
    [ "$f" = tests/test_keras3_backends.py ] || keras3_tests+=("$f")
done
failed=()
KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" python -m pytest "${suite_args[@]}" "$@" ||
    failed+=("the suite (KERAS_BACKEND=${KERAS_BACKEND:-tensorflow}): exit $?")
for backend in $keras3_backends; do
    echo "[mam-tf] the Keras 3 tests on the $backend backend (KERAS_BACKEND=$backend)"
    KERAS_BACKEND="$backend" python -m pytest -p no:cacheprovider "${keras3_tests[@]}" ||
        failed+=("the Keras 3 tests on $backend: exit $?")
done
if [ "${#failed[@]}" -gt 0 ]; then
    printf '[mam-tf] failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
