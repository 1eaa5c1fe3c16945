"""`mam-tf bench train`: a MAMDense training step with the fused CPU kernel against Dense.

For each shape (default: the seed-004 encoder layer, batch 128, 16384 -> 128, and a
compressed-sensing layer, batch 256, 48 -> 256) it times one training step (forward + backward
w.r.t. input and kernel, in a tf.function) of:

- dense: a Keras Dense layer, the baseline;
- mam-fused: MAMDense as shipped, which takes the fused C++ kernel on the CPU;
- mam-reference, mam-reference-xla (with --all): the pure-TensorFlow chunked reference path,
  plain and under XLA (jit_compile=True), the alternatives to a custom op.

With --model it also times one optimizer step (Adam) of a whole model, MAC (the baseline) vs
pure MAM (beta = 0); an epoch is that many steps, so its ratio is the epoch's:
- ecg: the seed's convolutional ECG autoencoder at batch 128, FC1 16384 -> 128 a Dense
  (ecg-mac) or a MAMDense (ecg-mam);
- cs: the compressed-sensing oracle of `mam-tf reproduce biocas` at its batch 64, hidden layers
  32 -> 256 -> 256 Dense (cs-mac) or MAMDense (cs-mam), small layers where fixed per-step costs
  weigh most.

With --keras3 it also times, per shape and in the same rounds, the Keras 3 layers on each backend
(``KERAS_BACKEND`` per process; --backends chooses): k3-<backend>-dense (keras.layers.Dense) and
k3-<backend>-mam (mam_tf.keras3.MAMDense), beside the tf_keras Dense and MAMDense; a step is
forward + backward w.r.t. input and kernel, compiled where the backend compiles (tf.function,
jax.jit; PyTorch eagerly). Below the table it prints the ratios each target is about, with the
target where one is set: Keras 3 MAMDense at most 3x the same backend's Dense, and at 128 x
16384 -> 128 the TensorFlow one within 1.1x of the tf_keras MAMDense and at most 1.0x its Dense.

With --ops it also times the kernels alone per shape, one eager call a step: Dense's three GEMMs
(x @ w, g @ w^T, x^T @ g: the baseline), the fused MAM forward and the fused MAM backward.

With --kernel-dir DIR every variant that runs the fused kernel (mam-fused, the -mam models, the
two fused ops) is also timed as built from the sources in DIR (another checkout's
mam_tf/train/fused_kernel), as `<variant>@dir`, interleaved with this checkout's: an A/B of two kernel
versions measured in one run, on the layer step, the model step and the ops alone.

Each variant runs in its own long-lived process (its peak RSS is its own). The processes are
driven in rounds: every round runs a few steps of each variant, in a rotating order, so that a
change in the machine's load reaches every variant alike. Reported: the median step time with
its spread (interquartile range) over all rounds, the ratio to the baseline's median, the range
of the per-round ratios, the process CPU time per step (all threads; less sensitive than wall
time to other jobs taking the cores) and the peak RSS. The load average is printed before and
after; a warning says when it was above the number of cores (then times are inflated and the
ratios less reliable: rerun on a quiet machine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from mam_tf.common import machine

__all__ = ["add_bench_command", "run_train_bench", "machine_line"]

# (label, mam_tf.bench.steps variant, jit)
LAYER_VARIANTS = (
    ("dense", "dense", False),
    ("mam-fused", "mam", False),
    ("mam-reference", "mam-reference", False),
    ("mam-reference-xla", "mam-reference", True),
)
DEFAULT_LAYER_VARIANTS = ("dense", "mam-fused")
#: --ops: (label, mam_tf.bench.steps variant, jit); Dense's GEMMs first, the baseline.
OP_VARIANTS = (
    ("dense-gemms", "op-gemms", False),
    ("mam-forward", "op-mam-forward", False),
    ("mam-backward", "op-mam-backward", False),
)
#: Per --model: batch, default steps per round, the first MAM layer's (inputs, units) (the
#: JSON rows' inputs and units), the variants [(label, mam_tf.bench.steps variant, jit)], what it is.
MODELS = {
    "ecg": dict(batch=128, steps=3, layer=(16384, 128),
                variants=[("ecg-mac", "ecg-mac", False), ("ecg-mam", "ecg-mam", False)],
                what="the seed's ECG autoencoder (ecg), one optimizer step (Adam, MSE); FC1 "
                     "16384 -> 128 a Dense (ecg-mac) or a pure MAMDense (ecg-mam, beta 0)"),
    "cs": dict(batch=64, steps=40, layer=(32, 256),
               variants=[("cs-mac", "cs-mac", False), ("cs-mam", "cs-mam", False)],
               what="the compressed-sensing oracle of `mam-tf reproduce biocas` (cs), one "
                    "optimizer step (Adam, binary cross-entropy); hidden layers 32 -> 256 -> 256 "
                    "Dense (cs-mac) or pure MAMDense (cs-mam, beta 0)"),
}
DEFAULT_SHAPES = [(128, 16384, 128), (256, 48, 256)]
KERAS3_BACKENDS = ("tensorflow", "jax", "torch")
SEED_SHAPE = (128, 16384, 128)  # the seed-004 encoder layer: batch, inputs, units


def keras3_targets(shape, backend):
    """[(label, baseline label, the largest ratio allowed or None)] of the Keras 3 block."""
    mam, dense = f"k3-{backend}-mam", f"k3-{backend}-dense"
    if backend == "tensorflow":
        seed = tuple(shape) == SEED_SHAPE
        return [(mam, dense, 1.0 if seed else None), (mam, "mam-fused", 1.1 if seed else None)]
    return [(mam, dense, 3.0)]


def default_steps(batch, n_in, units):
    """Steps per variant per round: a round of each variant lasts tens of milliseconds or more."""
    work = batch * n_in * units
    return 3 if work >= 2**24 else 10 if work >= 2**20 else 40


def machine_line():
    """The machine's line (:func:`mam_tf.common.machine.line`), with TensorFlow's version."""
    return machine.line(machine.describe(tensorflow=True))


def _load():
    return machine.load_average() or (float("nan"),) * 3


def _quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run_train_bench(shapes=None, steps=None, rounds=7, threads=None, variants=None, model=None,
                    ops=False, kernel_dir=None, keras3=False, backends=KERAS3_BACKENDS,
                    out=print):
    """Prints the machine and load, then per shape (and for --model, --ops) a table of median
    step time with spread, ratio to the baseline and peak RSS, measured in interleaved rounds;
    returns the rows (one dict per variant and shape, with every step's wall and CPU time)."""
    from mam_tf.bench import steps as step_bench
    from mam_tf.train import fused

    models = [model] if isinstance(model, str) else list(model or [])
    for name in backends:
        if name not in KERAS3_BACKENDS:
            raise ValueError(f"bench train: unknown Keras backend {name!r}; choose from "
                             f"{list(KERAS3_BACKENDS)}")
    for name in models:
        if name not in MODELS:
            raise ValueError(f"bench train: unknown model {name!r}; choose from {sorted(MODELS)}")
    if kernel_dir is not None:
        kernel_dir = Path(kernel_dir).expanduser().resolve()
        missing = fused.missing_sources(kernel_dir)
        if missing:
            raise ValueError(f"bench train: --kernel-dir {kernel_dir} lacks {', '.join(missing)} "
                             "(give another checkout's mam_tf/train/fused_kernel)")
    env = {"TF_NUM_INTRAOP_THREADS": str(threads)} if threads else {}
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    chosen = [v for v in LAYER_VARIANTS
              if (v[0] in variants if variants else v[0] in DEFAULT_LAYER_VARIANTS)]

    def with_dir(block_variants, fused_labels):
        """The block's variants, then those in fused_labels again, built from kernel_dir."""
        if kernel_dir is None:
            return list(block_variants)
        env_dir = {fused.KERNEL_DIR_ENV: str(kernel_dir)}
        return list(block_variants) + [(f"{label}@dir", variant, jit, env_dir)
                                       for label, variant, jit in block_variants
                                       if label in fused_labels]

    where = "" if kernel_dir is None else f"; @dir: built from {kernel_dir}"
    cores = os.cpu_count() or 1
    out(machine_line() + "; intra-op threads: "
        + (str(threads) if threads else f"TensorFlow's default ({cores})"))
    if fused.available():
        out("fused kernel: available (mam-fused uses it)")
    else:
        out(f"fused kernel: UNAVAILABLE ({fused.unavailable_reason()}); "
            "mam-fused falls back to the reference path")
    load_before = _load()
    out("load average before: " + " ".join(f"{v:.2f}" for v in load_before)
        + f" (1, 5, 15 min; {cores} cores)")

    blocks = []  # (title, batch, n_in, units, steps, [(label, variant, jit[, env])][, targets])
    for b, n, m in shapes:
        n_steps = steps or default_steps(b, n, m)
        blocks.append((f"shape: batch {b}, {n} inputs -> {m} units; one training step = forward + "
                       f"backward (input and kernel); {rounds} rounds x {n_steps} steps after a "
                       f"warm-up; the B*N*M product tensor would be {b * n * m * 4 / 2**20:.0f} "
                       f"MiB{where}", b, n, m, n_steps, with_dir(chosen, ("mam-fused",))))
        if ops:
            blocks.append((f"kernels alone: batch {b}, {n} inputs -> {m} units; one eager call "
                           "a step: Dense's three GEMMs (x @ w, g @ w^T, x^T @ g), the fused MAM "
                           f"forward, the fused MAM backward on its indices{where}; {rounds} "
                           f"rounds x {n_steps} steps", b, n, m, n_steps,
                           with_dir(OP_VARIANTS, ("mam-forward", "mam-backward"))))
        if keras3:
            from mam_tf.bench.steps import keras3_env

            k3 = [("dense", "dense", False), ("mam-fused", "mam", False)]
            for backend in backends:
                k3 += [(f"k3-{backend}-{kind}", f"k3-{kind}", False, keras3_env(backend))
                       for kind in ("dense", "mam")]
            blocks.append((f"Keras 3: batch {b}, {n} inputs -> {m} units; one training step of "
                           "keras.layers.Dense and mam_tf.keras3.MAMDense per backend, beside "
                           f"tf_keras' Dense and MAMDense; {rounds} rounds x {n_steps} steps",
                           b, n, m, n_steps, k3,
                           [t for backend in backends for t in keras3_targets((b, n, m), backend)]))
    for name in models:
        spec = MODELS[name]
        n_steps = steps or spec["steps"]
        blocks.append((f"model: {spec['what']}; batch {spec['batch']}; {rounds} rounds x "
                       f"{n_steps} steps after a warm-up{where}", spec["batch"], *spec["layer"],
                       n_steps, with_dir(spec["variants"], (f"{name}-mam",))))
    rows = []
    for title, batch, n_in, units, n_steps, block_variants, *targets in blocks:
        out("\n" + title)
        rows.extend(_run_block(step_bench, block_variants, batch, n_in, units, n_steps, rounds, env,
                               out, targets[0] if targets else ()))
    load_after = _load()
    out("\nload average after: " + " ".join(f"{v:.2f}" for v in load_after))
    busiest = max(max(load_before), max(load_after))
    if busiest > cores:
        out(f"WARNING: the machine was busy (load average up to {busiest:.2f} on {cores} cores): "
            "other jobs shared the cores, times are inflated and the ratios less reliable; "
            "rerun on a quiet machine for figures to quote")
    for r in rows:
        r["load_before"], r["load_after"] = list(load_before), list(load_after)
    return rows


def _run_block(step_bench, variants, batch, n_in, units, n_steps, rounds, env, out,
               targets=()):
    workers = {}
    try:
        for label, variant, jit, *extra in variants:
            workers[label] = step_bench.Worker(variant, batch, n_in, units, jit,
                                          env={**env, **(extra[0] if extra else {})})
            workers[label].run(2)  # warm-up: tracing, first-call allocations, the kernel build
        times = {label: [] for label in workers}
        per_round = {label: [] for label in workers}
        labels = list(workers)
        from tqdm.auto import tqdm

        with tqdm(total=rounds * len(labels), desc="rounds", leave=False,
                  file=sys.stderr) as progress:
            for k in range(rounds):
                for label in labels[k % len(labels):] + labels[:k % len(labels)]:
                    steps = workers[label].run(n_steps)
                    times[label].extend(steps)
                    per_round[label].append(statistics.median(t for t, _ in steps))
                    progress.update(1)
        memory = {label: w.memory() for label, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    base = labels[0]
    wide = max(10, len(base) + 3)  # the ratio column fits "x <baseline>"
    out(f"{'variant':<19}{'median ms':>10}{'IQR ms':>16}{'x ' + base:>{wide}}{'rounds':>13}"
        f"{'CPU ms':>9}{'peak RSS MiB':>14}{'step growth':>13}")
    base_median = statistics.median(t for t, _ in times[base])
    rows = []
    for label, variant, jit, *_ in variants:
        wall = [t for t, _ in times[label]]
        cpu = [c for _, c in times[label]]
        median = statistics.median(wall)
        q1, q3 = _quartiles(wall)
        ratios = [a / b for a, b in zip(per_round[label], per_round[base])]
        row = {"label": label, "variant": variant, "jit": jit, "batch": batch, "inputs": n_in,
               "units": units, "median_s": median, "q1_s": q1, "q3_s": q3,
               "min_s": min(wall), "cpu_median_s": statistics.median(cpu),
               "ratio": median / base_median, "round_ratio_min": min(ratios),
               "round_ratio_max": max(ratios), "rounds": rounds, "steps_per_round": n_steps,
               "wall_s": wall, "cpu_s": cpu, **memory[label]}
        rows.append(row)
        iqr = f"{q1 * 1e3:.2f}-{q3 * 1e3:.2f}"
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        # a space before each column: a wide figure (seconds a step) still stands apart
        out(f"{label:<19}{median * 1e3:>10.2f} {iqr:>15} {row['ratio']:>{wide - 1}.2f} "
            f"{spread:>12} {row['cpu_median_s'] * 1e3:>8.2f}{row['peak_rss_mib']:>14.0f}"
            f"{row['step_rss_growth_mib']:>13.0f}")
    for label, base_label, limit in targets:
        ratio = statistics.median(t for t, _ in times[label]) / \
            statistics.median(t for t, _ in times[base_label])
        ratios = [a / b for a, b in zip(per_round[label], per_round[base_label])]
        verdict = "" if limit is None else \
            f"; target <= {limit:.1f}x: {'met' if ratio <= limit else 'MISSED'}"
        out(f"{label} / {base_label}: {ratio:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})"
            f"{verdict}")
        rows.append({"label": f"{label} / {base_label}", "comparison": True, "batch": batch,
                     "inputs": n_in, "units": units, "ratio": ratio,
                     "round_ratio_min": min(ratios), "round_ratio_max": max(ratios),
                     "target": limit})
    return rows


def _cmd_train(args):
    variants = args.variants
    if args.all:
        variants = [v[0] for v in LAYER_VARIANTS]
    rows = run_train_bench(args.shape, steps=args.steps, rounds=args.rounds,
                           threads=args.threads, variants=variants, model=args.model,
                           ops=args.ops, kernel_dir=args.kernel_dir, keras3=args.keras3,
                           backends=args.backends)
    if args.out:
        import json

        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.out}")
    return 0


def add_bench_command(subparsers):
    """Adds ``train`` to a ``bench`` sub-command's subparsers."""
    from mam_tf.bench.steps import parse_shape
    from mam_tf.common.cliargs import add_deprecated, add_out

    p = subparsers.add_parser(
        "train",
        help="training step: MAMDense (fused kernel) vs Dense, layer and whole model",
        description=__doc__.split("\n\n", 1)[1].split("Also runnable")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--shape", type=parse_shape, action="append",
                   help="BATCHxINPUTSxUNITS, repeatable (default: 128x16384x128 and 256x48x256)")
    p.add_argument("--model", choices=sorted(MODELS), action="append", default=None,
                   help="also time a whole model, MAC vs MAM, repeatable: ecg (the seed's "
                        "autoencoder, batch 128) or cs (the compressed-sensing oracle, batch 64)")
    p.add_argument("--ops", action="store_true",
                   help="also time the kernels alone per shape: the fused forward and backward "
                        "ops against Dense's three GEMMs, one eager call a step")
    p.add_argument("--keras3", action="store_true",
                   help="also time the Keras 3 Dense and MAMDense per shape on each backend "
                        "(--backends), beside tf_keras' in the same rounds, and print the "
                        "ratios of the targets")
    p.add_argument("--backends", nargs="+", choices=KERAS3_BACKENDS, default=list(KERAS3_BACKENDS),
                   help="the Keras 3 backends of --keras3 (default: all three)")
    p.add_argument("--kernel-dir", metavar="DIR", default=None,
                   help="also time every variant that runs the fused kernel (mam-fused, the -mam "
                        "models, with --ops the fused ops) as built from the sources in DIR "
                        "(another checkout's mam_tf/train/fused_kernel, e.g. a `git worktree` of an older "
                        "commit), as <variant>@dir, interleaved with this checkout's: two kernel "
                        "versions in one run")
    p.add_argument("--rounds", type=int, default=7,
                   help="rounds; each runs every variant once, in a rotating order (default 7)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per variant per round (default: 3 for big shapes, up to 40 for "
                        "small ones)")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra-op threads for every variant (default: TensorFlow's)")
    p.add_argument("--variants", nargs="+", choices=[v[0] for v in LAYER_VARIANTS],
                   default=None, help="layer variants to time (default: dense mam-fused); "
                                      "the baseline is the first in the order listed here")
    p.add_argument("--all", action="store_true",
                   help="also time the reference path, plain and under XLA (slow: seconds a step)")
    add_out(p, "also write the rows (with every step's times) as JSON to this file")
    add_deprecated(p, "--json", "-o/--out", dest="out")
    p.set_defaults(func=_cmd_train)
    return p
