"""`mam-tf bench train`: a MAMDense training step with the fused CPU kernel against Dense.

For each shape (default: the seed-004 encoder layer, batch 128, 16384 -> 128, and a
compressed-sensing layer, batch 256, 48 -> 256) it times one training step (forward + backward
w.r.t. input and kernel, in a tf.function) of:

- dense: a Keras Dense layer, the baseline;
- mam-fused: MAMDense as shipped, which takes the fused C++ kernel on the CPU;
- mam-reference: the pure-TensorFlow chunked reference path;
- mam-reference-xla: the same under XLA (jit_compile=True), the alternative to a custom op.

Each variant runs in its own process (mam_tf.bench's isolation), so its peak RSS is its own;
times are medians of several steps after a warm-up, all measured in the same run on the same
intra-op threads. Also runnable as ``python -m mam_tf.bench_train``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

__all__ = ["main", "add_bench_command", "run_train_bench"]

# (label, measure_step variant, jit)
VARIANTS = (
    ("dense", "dense", False),
    ("mam-fused", "mam", False),
    ("mam-reference", "mam-reference", False),
    ("mam-reference-xla", "mam-reference", True),
)
DEFAULT_SHAPES = [(128, 16384, 128), (256, 48, 256)]


def default_steps(batch, n_in, units):
    """Enough steps for a stable median on a noisy machine, without minutes of reference."""
    return 11 if batch * n_in * units >= 2**24 else 101


def run_train_bench(shapes=None, steps=None, threads=None, variants=None, out=print):
    """Prints the machine, then per shape a table of median step time, ratio to Dense and peak
    RSS; returns the rows (dicts from mam_tf.bench.measure_step plus a ``label``)."""
    from mam_tf import bench, fused
    from mam_tf._compat import tf

    if threads:  # read by TensorFlow in each measuring process (they are fresh processes)
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    shapes = shapes or DEFAULT_SHAPES
    chosen = [v for v in VARIANTS if variants is None or v[0] in variants]
    out(f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} cores; python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}; intra-op threads: "
        + (str(threads) if threads else f"TensorFlow default ({os.cpu_count()})"))
    if fused.available():
        out("fused kernel: available (mam-fused uses it)")
    else:
        out(f"fused kernel: UNAVAILABLE ({fused.unavailable_reason()}); "
            "mam-fused falls back to the reference path")
    rows = []
    for batch, n_in, units in shapes:
        n_steps = steps or default_steps(batch, n_in, units)
        out(f"\nshape: batch {batch}, {n_in} inputs -> {units} units; one training step = "
            f"forward + backward (input and kernel), median of {n_steps} after a warm-up; "
            f"the B*N*M product tensor would be {batch * n_in * units * 4 / 2**20:.0f} MiB")
        out(f"{'variant':<20}{'median ms':>11}{'min ms':>9}{'x Dense':>9}"
            f"{'peak RSS MiB':>14}{'step growth MiB':>17}")
        base = None
        for label, variant, jit in chosen:
            r = bench.run_isolated(variant, batch, n_in, units, n_steps, jit)
            r["label"] = label
            rows.append(r)
            if label == "dense":
                base = r["median_s"]
            ratio = f"{r['median_s'] / base:.2f}" if base else "-"
            out(f"{label:<20}{r['median_s'] * 1e3:>11.1f}{r['min_s'] * 1e3:>9.1f}{ratio:>9}"
                f"{r['peak_rss_mib']:>14.0f}{r['step_rss_growth_mib']:>17.0f}")
    return rows


def _cmd_train(args):
    rows = run_train_bench(args.shape, steps=args.steps, threads=args.threads,
                           variants=args.variants)
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_bench_command(subparsers):
    """Adds ``train`` to a ``bench`` sub-command's subparsers."""
    from mam_tf.bench import parse_shape

    p = subparsers.add_parser(
        "train",
        help="MAMDense training step: fused kernel vs reference vs Dense",
        description=__doc__.split("\n\n", 1)[1].split("Also runnable")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--shape", type=parse_shape, action="append",
                   help="BATCHxINPUTSxUNITS, repeatable (default: 128x16384x128 and 256x48x256)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per variant (default: 11 for big shapes, 101 for small)")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra-op threads for every variant (default: TensorFlow's)")
    p.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], default=None,
                   help="what to time (default: all)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mam_tf.bench_train")
    sub = parser.add_subparsers(dest="command")
    add_bench_command(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
