"""Measuring one layer's training step: time and peak memory, in an isolated process.

:func:`measure_step` times a training step (forward + backward) of one Dense or MAMDense layer;
:func:`run_isolated` runs it in a fresh Python process so that its peak resident memory
(ru_maxrss) is its own. ``mam-tf bench train`` (:mod:`mam_tf.bench_train`) builds its table on
these; the memory test uses them too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

__all__ = ["measure_step", "run_isolated", "VARIANTS"]

VARIANTS = ("dense", "mam", "mam-reference")


def measure_step(variant, batch, n_in, units, steps=5, warmup=1, jit=False, seed=0):
    """Times one training step (forward + backward w.r.t. input and kernel) of one layer.

    Returns a dict with the median/min step time in seconds and the peak RSS growth in MiB
    (peak of the process minus its resident memory just before the first step: what tracing
    and stepping needed on top of TensorFlow, the layer and the data).
    """
    import resource

    import numpy as np

    from mam_tf import MAMDense, ops
    from mam_tf._compat import keras, tf

    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((batch, n_in)).astype(np.float32))
    if variant == "dense":
        layer = keras.layers.Dense(units)
    elif variant in ("mam", "mam-reference"):
        layer = MAMDense(units)
    else:
        raise ValueError(f"bench: unknown variant {variant!r}; choose from {VARIANTS}")
    layer.build((None, n_in))
    forward = ops.mam_forward_reference if variant == "mam-reference" else None

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if forward is None:
                y = layer(x)
            else:
                y = _reference_reduce(x, layer.kernel) + layer.bias
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, layer.kernel])

    def _reference_reduce(x, w):
        @tf.custom_gradient
        def f(x, w):
            y, amax, amin = ops.mam_forward_reference(x, w)
            return y, lambda g: ops.mam_backward_reference(g, x, w, amax, amin)

        return f(x, tf.convert_to_tensor(w))

    def kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Baseline: resident memory now (layer, data, TensorFlow), before tracing and stepping;
    # the peak is reset to it, so the growth is what tracing and stepping needed.
    base = _current_rss_kib()
    exact_peak = _reset_peak_rss()
    for _ in range(warmup):
        [g.numpy() for g in step(x)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        [g.numpy() for g in step(x)]
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "batch": batch,
        "n_in": n_in,
        "units": units,
        "jit": jit,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "steps": steps,
        "peak_rss_mib": kib() / 1024.0,
        "step_rss_growth_mib": ((_peak_rss_kib() if exact_peak else kib()) - base) / 1024.0,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def _reset_peak_rss():
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _current_rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_isolated(variant, batch, n_in, units, steps, jit):
    """measure_step in a fresh Python process, so that peak RSS is this variant's alone."""
    code = (
        "import json, sys; from mam_tf.bench import measure_step; "
        f"print('RESULT ' + json.dumps(measure_step({variant!r}, {batch}, {n_in}, {units}, "
        f"steps={steps}, jit={jit})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(
        f"bench: variant {variant!r} at ({batch}, {n_in}, {units}) failed:\n{proc.stderr[-2000:]}"
    )


def parse_shape(text):
    """argparse type for BATCHxINPUTSxUNITS."""
    try:
        b, n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be BATCHxINPUTSxUNITS, got {text!r}") from None
    return b, n, m
