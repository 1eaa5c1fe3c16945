"""`mam-tf reproduce <experiment>`: the papers' experiments as resumable pipelines.

Each experiment is a package of this one (its config, stages, aggregation, report and command
line) with an ``add_command(subparsers, common)`` function that adds its sub-command
(``common`` is the parent parser holding the options every experiment shares, see
:func:`common_options`). It builds on :mod:`.base` (the config type with its scales, ``run``,
``--merge``, the output layout), :mod:`.pipeline` (cached stages, progress, manifest) and
:mod:`.report` (figures, tables). To add one, write the package and add its name to
``EXPERIMENTS``.
"""
from __future__ import annotations

import argparse
import importlib

__all__ = ["EXPERIMENTS", "SCALES", "parse_seeds", "parse_cluster", "parse_task_cpus",
           "common_options",
           "add_reproduce_command"]

#: Experiment modules of this package, each with ``add_command(subparsers, common)``.
EXPERIMENTS: tuple[str, ...] = ("mwscas", "biocas", "transformer")
#: The scales every experiment offers, smallest first.
SCALES = ("tiny", "demo", "small", "paper")


def parse_seeds(text: str | None) -> list[int] | None:
    """``"3-5"`` -> [3, 4, 5]; ``"0,2,7"`` -> [0, 2, 7]; ``"1-2,5"`` -> [1, 2, 5]; None -> None."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds is {text!r}; give seeds like '3', '3-5' or '0,2,7'") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds is {text!r}; seeds are >= 0")
    return sorted(set(seeds))


def parse_cluster(text: str) -> tuple[int, int]:
    """``"4x16"`` -> (4, 16): nodes and CPUs per node."""
    nodes, _, cpus = str(text).lower().partition("x")
    try:
        value = (int(nodes), int(cpus))
    except ValueError:
        value = (0, 0)
    if min(value) < 1:
        raise argparse.ArgumentTypeError(f"--cluster is {text!r}; give nodes x CPUs per node "
                                         "like 4x16")
    return value


def parse_task_cpus(text: str) -> int:
    """``"2"`` -> 2: the CPUs (and TensorFlow threads) of every stage's task, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--task-cpus is {text!r}; give a whole number of CPUs "
                                         "of at least 1")
    return value


def common_options() -> argparse.ArgumentParser:
    """The options every ``reproduce`` experiment takes (a parent parser, ``add_help=False``):
    ``--scale``, ``-o/--out``, ``--seeds``, ``--merge``, ``--recompute``, ``--wait``,
    ``--ray``, ``--task-cpus``, ``--plan``, ``--cluster``, ``--no-progress``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--scale", choices=SCALES, default="demo",
                   help="how big a run: tiny (tests, < 2 min), demo (1 seed, minutes), small "
                   "(3 seeds), paper (the paper's sizes, for a bigger machine); default demo")
    g.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="output folder (default runs/<experiment>-<scale>); a rerun into the "
                   "same folder reads finished stages back instead of redoing them")
    g.add_argument("--seeds", type=parse_seeds, default=None, metavar="LIST",
                   help="run these training seeds only, e.g. 3-5 or 0,2 (default: the scale's "
                   "seeds), so that seeds can run on several machines")
    g.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="join the finished stages of these run folders (same scale, other "
                   "seeds) into --out and report all their seeds together")
    g.add_argument("--recompute", nargs="+", default=None, metavar="STAGE",
                   help="compute these stages again even when the output folder holds them "
                   "(stage names as in the progress lines: data, train, ...)")
    g.add_argument("--wait", action="store_true",
                   help="when another run is using the output folder, wait for it to end "
                   "(default: stop at once, naming that run's pid, host and start time)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the stages as tasks on a Ray cluster, independent ones side by "
                   "side: ADDRESS of the cluster (host:6379, ray://host:10001, auto) or 'local' "
                   "for Ray on this machine; --out must be on a filesystem every node sees "
                   "(needs the [cluster] extra; docs/cluster.md)")
    g.add_argument("--task-cpus", type=parse_task_cpus, default=None, metavar="N",
                   help="with --ray or --plan: every stage's task asks for N CPUs and computes "
                   "with N TensorFlow threads (default: what each stage kind declares, 1). "
                   "TensorFlow's float sums depend on its thread count: N equal to the "
                   "serial run's threads (its machine's usable CPUs) gives that run's "
                   "results.json but for its timing fields (docs/cluster.md)")
    g.add_argument("--plan", default=None, metavar="RUN_DIR",
                   help="compute nothing: print a projection of this run's time on --cluster "
                   "from the stage times of the finished run folder RUN_DIR (any scale; best a "
                   "--ray run, whose stages ran on the CPUs they declare)")
    g.add_argument("--cluster", type=parse_cluster, default=(1, 2), metavar="NODESxCPUS",
                   help="the cluster of --plan: nodes x CPUs per node, e.g. 4x16 (default 1x2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    return p


def add_reproduce_command(subparsers) -> argparse.ArgumentParser:
    """Adds ``reproduce`` and one sub-command per experiment to the ``mam-tf`` parser."""
    p = subparsers.add_parser(
        "reproduce", help="reproduce a paper's experiment end to end (resumable)",
        description=__doc__.split("\n\n")[0] + " Each stage's result is cached in the output "
        "folder, keyed by every parameter that shapes it, its inputs and the code that computes "
        "it (the package version and a hash of the sources): a rerun reads finished stages "
        "back.",
    )
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    common = common_options()
    for name in EXPERIMENTS:
        importlib.import_module(f"{__name__}.{name}").add_command(sub, common)
    p.set_defaults(func=lambda args: p.print_help() or 2)
    return p
