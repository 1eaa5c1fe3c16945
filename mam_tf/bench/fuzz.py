"""``mam-tf bench fuzz``: damaged models against the checker and the host runtime, at scale.

Corrupts the converted base models of :mod:`mam_tf.deploy.fuzz` (bit flips, overwrites,
truncations, splices, insertions, deletions) ``--cases`` times and runs each through the
model checker and the host runtime in crash-isolated worker processes. Prints the machine,
the rate, the tally by outcome and mutation, and examples of anything that is not a clean
refusal. A death (a worker killed by a signal) or an exception other than ValueError is a bug;
the exit status is then 1.
"""
from __future__ import annotations

import time

__all__ = ["add_bench_command", "run_fuzz_bench"]


def run_fuzz_bench(cases: int, seed: int = 0, workers: int = 2, out=print) -> dict:
    import os
    import platform

    from mam_tf.deploy import fuzz

    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    out(f"{cases} damaged models, seed {seed}, {workers} workers")
    t = time.perf_counter()
    tally = fuzz.run(cases, seed=seed, workers=workers, progress=True)
    seconds = time.perf_counter() - t
    out(fuzz.format_tally(tally))
    out(f"{seconds:.0f} s, {cases / seconds:.0f} cases/s; load average after "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return tally


def _cmd_fuzz(args) -> int:
    from mam_tf.deploy import fuzz

    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, got {args.cases}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    tally = run_fuzz_bench(args.cases, seed=args.seed, workers=args.workers)
    return 0 if fuzz.clean(tally) else 1


def add_bench_command(subparsers):
    p = subparsers.add_parser(
        "fuzz", help="damaged models against the checker and the host runtime",
        description="Corrupts converted models (int8 and int16x8: FULLY_CONNECTED, MAM_SPARSE, "
        "MAC_SPARSE, CONV_2D, MAX_POOL_2D, QUANTIZE, DEQUANTIZE, RESHAPE) --cases times with "
        "bit flips, overwrites, truncations, splices, insertions and deletions, and runs each "
        "through the model checker and the host runtime in crash-isolated worker processes. "
        "Prints the tally by outcome and mutation, the rate and the load; exit status 1 if a "
        "worker died or raised anything but a clean refusal.")
    p.add_argument("--cases", type=int, default=100_000,
                   help="damaged models to try (default 100000; about 1000 a second here "
                   "with 2 workers)")
    p.add_argument("--seed", type=int, default=0, help="which damage (default 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.set_defaults(func=_cmd_fuzz)
