"""The `mam-tf` command line: paper reproductions, conversion, benchmarks and data tools.

Each sub-command lives next to the code it drives and registers itself here through an
``add_*_commands(subparsers)`` function; this module only assembles them.
"""
from __future__ import annotations

import argparse
import os
import sys

from mam_tf.common.extras import EXTRA_OF


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mam-tf",
        description="Multiply-And-Max/min (MAM) layers: train, prune, quantize, convert and "
        "benchmark MAM models for microcontrollers.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's own log lines and warnings (start-up "
                        "banners, oneDNN and CUDA notices), which mam-tf hides by default")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from mam_tf.deploy.convert import add_convert_command

    add_convert_command(sub)

    from mam_tf.deploy.runtime import add_run_command

    add_run_command(sub)

    from mam_tf.experiments import add_reproduce_command

    add_reproduce_command(sub)

    from mam_tf.deploy.check import add_check_command

    add_check_command(sub)

    from mam_tf.deploy.export import add_export_command

    add_export_command(sub)

    from mam_tf.deploy.fuzz import add_fuzz_command

    add_fuzz_command(sub)

    from ecg_data.cli import add_data_commands

    add_data_commands(sub)

    bench = sub.add_parser(
        "bench", help="benchmarks (each prints its baseline measured in the same run)",
        description="Benchmarks. Each prints the machine, the sizes, and the ratio against its "
        "baseline measured in the same run.",
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    from mam_tf.bench.data import add_bench_command as add_data_bench
    from mam_tf.bench.fuzz import add_bench_command as add_fuzz_bench
    from mam_tf.bench.kill import add_bench_command as add_kill_bench
    from mam_tf.bench.mcu import add_bench_command as add_mcu_bench
    from mam_tf.bench.scaling import add_bench_command as add_scaling_bench
    from mam_tf.bench.train import add_bench_command as add_train_bench

    add_train_bench(bench_sub)
    add_mcu_bench(bench_sub)
    add_data_bench(bench_sub)
    add_fuzz_bench(bench_sub)
    add_kill_bench(bench_sub)
    add_scaling_bench(bench_sub)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    return parser


def _verbose(argv) -> bool:
    """``--verbose`` before the command's name: known before anything imports TensorFlow."""
    for arg in argv:
        if arg == "--verbose":
            return True
        if not arg.startswith("-"):
            return False
    return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from mam_tf.common import quiet

    if _verbose(argv):
        # TensorFlow's own default level, not the one mam_tf.train.compat would set
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        quiet.enable(False)
    else:
        quiet.quiet_tensorflow()
    with quiet.filtered_stderr():
        import mam_tf.train.compat  # noqa: F401  (TensorFlow's start-up lines go here)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    name = " ".join(filter(None, ["mam-tf", args.command, *(
        getattr(args, dest, None) for dest in ("bench_command", "data_command", "experiment"))]))
    from mam_tf.common.divergence import TrainingDiverged

    try:
        result = args.func(args)
    except TrainingDiverged as err:  # names what trained, the epoch and the loss
        print(f"{name}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        # A user error (a file that is missing or unreadable, a model or data the command
        # refuses): one line, argparse's exit status. Anything else is a bug: its traceback.
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"{name}: error: {text}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name not in EXTRA_OF:
            raise
        print(f"{name}: error: {err}", file=sys.stderr)  # names the extra to install
        return 2
    except SystemExit as stop:  # a command that stopped with a message
        if isinstance(stop.code, str):
            print(" ".join(stop.code.split()), file=sys.stderr)
            return 2
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
