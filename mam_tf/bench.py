"""Layer benchmarks: forward + backward time and peak memory, MAMDense against Dense.

Each variant runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; times are medians over several steps after a warm-up. Every figure printed has its
baseline (Dense) measured in the same run, on the same threads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

__all__ = ["measure_step", "run_layer_bench", "add_bench_commands"]

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

    # Baseline: resident memory now (layer, data, TensorFlow), before tracing and stepping.
    base = _current_rss_kib()
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
        "step_rss_growth_mib": (kib() - base) / 1024.0,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def _current_rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _run_isolated(variant, batch, n_in, units, steps, jit):
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


def _machine():
    return f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores"


def run_layer_bench(shapes, variants=VARIANTS, steps=5, jit=False, out=print):
    """Runs every variant at every (batch, n_in, units) shape; prints a table and returns the rows."""
    out(f"machine: {_machine()}, python {platform.python_version()}")
    rows = []
    for batch, n_in, units in shapes:
        out(f"\nshape: batch {batch}, {n_in} inputs -> {units} units, "
            f"train step = forward + backward (input and kernel), median of {steps}")
        out(f"{'variant':<16}{'median ms':>12}{'x Dense':>10}{'peak RSS MiB':>15}{'step growth MiB':>17}")
        base = None
        for variant in variants:
            r = _run_isolated(variant, batch, n_in, units, steps, jit)
            rows.append(r)
            if variant == "dense":
                base = r["median_s"]
            ratio = f"{r['median_s'] / base:.1f}" if base else "-"
            out(f"{variant:<16}{r['median_s'] * 1e3:>12.1f}{ratio:>10}{r['peak_rss_mib']:>15.0f}"
                f"{r['step_rss_growth_mib']:>17.0f}")
    out(f"\n(intra-op threads: {rows[0]['intra_op_threads'] or 'TensorFlow default'}; "
        "product tensor B*N*M*4 bytes for comparison: "
        + ", ".join(f"{b * n * m * 4 / 2**20:.0f} MiB" for b, n, m in shapes) + ")")
    return rows


def _parse_shape(text):
    try:
        b, n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be BATCHxINPUTSxUNITS, got {text!r}") from None
    return b, n, m


def _cmd_layer(args):
    shapes = args.shape or [(128, 16384, 128), (256, 48, 256)]
    rows = run_layer_bench(shapes, variants=args.variants, steps=args.steps, jit=args.jit)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")


def add_bench_commands(bench_subparsers):
    p = bench_subparsers.add_parser(
        "layer",
        help="MAMDense vs Dense: training-step time and peak memory",
        description="Times a training step (forward + backward) of one MAMDense layer against "
        "one Dense layer of the same shape, each in its own process, and prints median times, "
        "the ratio to Dense and peak resident memory. Default shapes: the seed-004 encoder "
        "layer (batch 128, 16384 -> 128) and a compressed-sensing layer (batch 256, 48 -> 256).",
    )
    p.add_argument("--shape", type=_parse_shape, action="append",
                   help="BATCHxINPUTSxUNITS, repeatable (default: 128x16384x128 and 256x48x256)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="what to time: dense, mam (the layer as shipped: fastest available "
                   "kernel), mam-reference (the pure-TensorFlow path)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--jit", action="store_true", help="compile the step with XLA")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_cmd_layer)
