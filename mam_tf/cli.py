"""The `mam-tf` command line: paper reproductions, conversion, benchmarks and data tools.

Each sub-command lives next to the code it drives and registers itself here through an
``add_*_commands(subparsers)`` function; this module only assembles them.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mam-tf",
        description="Multiply-And-Max/min (MAM) layers: train, prune, quantize, convert and "
        "benchmark MAM models for microcontrollers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from mam_tf.convert import add_convert_command

    add_convert_command(sub)

    from mam_tf.runtime import add_run_command

    add_run_command(sub)

    from mam_tf.experiments import add_reproduce_command

    add_reproduce_command(sub)

    from ecg_data.cli import add_data_commands

    add_data_commands(sub)

    bench = sub.add_parser(
        "bench", help="benchmarks (each prints its baseline measured in the same run)",
        description="Benchmarks. Each prints the machine, the sizes, and the ratio against its "
        "baseline measured in the same run.",
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    from ecg_data.bench import add_bench_command as add_data_bench
    from mam_tf.bench_train import add_bench_command as add_train_bench

    add_train_bench(bench_sub)
    add_data_bench(bench_sub)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
