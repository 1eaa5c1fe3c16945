"""``mam-tf bench ray``: the speedup of ``mam-tf reproduce ... --ray local`` on this machine,
against serial runs measured in the same sitting, and how much of the ideal it reaches.

Three fresh runs of the same reproduction, one after another (each ``mam-tf reproduce
EXPERIMENT --scale SCALE --no-progress`` in its own process, its output in a log file):

* ``serial-1thread``: serial, TensorFlow on one thread (``TF_NUM_INTRAOP_THREADS``,
  ``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS`` set to 1). A 1-CPU Ray task computes with
  one thread too, so this run does each stage's work as the Ray run does, and gives the same
  numbers: the baseline of the speedup and of the ideal;
* ``ray``: ``--ray local`` (Ray started on this machine with its usable CPUs; every task the
  CPUs its stage kind declares), its workers at the driver's priority
  (``RAY_worker_niceness=0``);
* ``serial``: serial at TensorFlow's default threads (what a run without ``--ray`` does; the
  thread variables above are removed from every run's environment but set where said);
  skipped with ``--no-default-threads``.

The ideal is the ``serial-1thread`` run's stages packed on the usable CPUs with nothing lost:
a run can be no shorter than its longest chain of dependent stages (each stage's
``stage.json`` names its dependencies), nor than the sum of the stage times over the CPUs.
The ideal speedup is the sum of the stage times over the larger of the two; the measured one
is the ``serial-1thread`` run's wall time over the Ray run's. Also printed: how busy the Ray
run kept the CPUs, each stage kind's median time in both runs (two processes share caches and
memory bandwidth), the first difference between the runs' results (none expected between the
1-thread serial run and Ray), the load average before and after each run. Written to
``OUT/scaling.json`` and drawn in ``OUT/scaling.png`` (each run's stages on a time line).
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["RUNS", "ONE_THREAD", "DEFAULT_ARGS", "AIM", "stage_times", "ideal", "analyse",
           "format_report", "plot", "run_ray_bench", "add_bench_command"]

#: The runs, in the order they are made: (name, extra environment, extra options).
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "OMP_NUM_THREADS": "1"}
RUNS = (("serial-1thread", ONE_THREAD, ()),
        ("ray", {"RAY_worker_niceness": "0"}, ("--ray", "local")),
        ("serial", {}, ()))
#: The options every run gets when ``--reproduce-args`` is not given.
DEFAULT_ARGS = {"mwscas": "--no-mcu"}
#: The aim of the Ray scaling (docs/cluster.md): this fraction of the ideal speedup.
AIM = 0.7
MANIFEST = "manifest.json"
STAGE_FILE = "stage.json"


def stage_times(run) -> list[dict]:
    """The stages a finished run folder computed (not read back), from its manifest and each
    stage's ``stage.json``: name, key, label, seconds, dependency keys, and the time it
    finished (``finished``, whole seconds)."""
    run = Path(run)
    manifest = json.loads((run / MANIFEST).read_text())
    found = []
    for r in manifest["stages"]:
        if r["cached"]:
            continue
        meta = json.loads((run / "stages" / f"{r['stage']}-{r['key']}" / STAGE_FILE)
                          .read_text())
        found.append({"name": r["stage"], "key": r["key"], "label": r["label"],
                      "seconds": float(meta["seconds"]), "deps": list(meta.get("deps", [])),
                      "finished": meta.get("finished")})
    return found


def ideal(stages: Sequence[dict], cpus: int) -> dict:
    """The ideal of ``stages`` (each ``key``, ``seconds``, ``deps``) on ``cpus`` CPUs: the
    longest chain of dependent stages, the sum of the stage times, the shortest possible run
    (the larger of the chain and the sum over the CPUs) and the ideal speedup (the sum over
    that). A dependency that is not among ``stages`` (read back) counts as done at the start."""
    if cpus < 1:
        raise ValueError(f"ideal: cpus must be at least 1, got {cpus}")
    by_key = {s["key"]: s for s in stages}
    chain: dict = {}

    def until(key):  # the time from the start to the end of stage ``key``, on its chain
        if key not in chain:
            s = by_key[key]
            chain[key] = s["seconds"] + max((until(d) for d in s["deps"] if d in by_key),
                                            default=0.0)
        return chain[key]

    longest = max((until(k) for k in by_key), default=0.0)
    total = sum(s["seconds"] for s in stages)
    shortest = max(longest, total / cpus)
    return {"cpus": cpus, "stage_seconds": total, "longest_chain_seconds": longest,
            "shortest_seconds": shortest,
            "bound_by": "the longest chain" if longest >= total / cpus else "the CPUs",
            "speedup": total / shortest if shortest else None}


def _median_by_kind(stages) -> dict:
    kinds: dict = {}
    for s in stages:
        kinds.setdefault(s["name"], []).append(s["seconds"])
    return {k: statistics.median(v) for k, v in kinds.items()}


def analyse(runs: dict, cpus: int, difference: Callable | None = None) -> dict:
    """The figures of the benchmark from its finished runs: ``runs`` maps a run's name (of
    :data:`RUNS`) to ``{"out": folder, "wall_seconds": ..., "load_before": ...,
    "load_after": ...}``. ``difference(a, b)``: the first difference between two run folders'
    results (None when equal)."""
    base, ray = runs["serial-1thread"], runs["ray"]
    base_stages, ray_stages = stage_times(base["out"]), stage_times(ray["out"])
    best = ideal(base_stages, cpus)
    speedup = base["wall_seconds"] / ray["wall_seconds"]
    ray_busy = sum(s["seconds"] for s in ray_stages) / (cpus * ray["wall_seconds"])
    base_kinds, ray_kinds = _median_by_kind(base_stages), _median_by_kind(ray_stages)
    report = {
        "cpus": cpus, "runs": runs, "ideal": best,
        "speedup_over_serial_1thread": speedup,
        "fraction_of_ideal": speedup / best["speedup"] if best["speedup"] else None,
        "aim": AIM, "ray_cpus_busy": ray_busy,
        "stage_kinds": {k: {"stages": sum(s["name"] == k for s in base_stages),
                            "serial_1thread_median_seconds": v,
                            "ray_median_seconds": ray_kinds.get(k)}
                        for k, v in base_kinds.items()},
    }
    if "serial" in runs:
        report["speedup_over_serial"] = runs["serial"]["wall_seconds"] / ray["wall_seconds"]
    if difference is not None:
        report["ray_vs_serial_1thread"] = difference(base["out"], ray["out"])
        if "serial" in runs:
            report["serial_vs_serial_1thread"] = difference(base["out"], runs["serial"]["out"])
    return report


def _loads(values) -> str:
    return "unknown" if values is None else " ".join(f"{v:.2f}" for v in values)


def format_report(r: dict) -> str:
    """The lines ``mam-tf bench ray`` prints."""
    runs, best = r["runs"], r["ideal"]
    ray_wall = runs["ray"]["wall_seconds"]
    lines = [f"{'run':<16}{'wall s':>9}{'--ray local is':>16}   load average before / after"]
    for name in ("serial", "serial-1thread", "ray"):
        if name not in runs:
            continue
        run = runs[name]
        ratio = run["wall_seconds"] / ray_wall
        faster = ("" if name == "ray" else f"{ratio:.2f}x faster" if ratio >= 1 else
                  f"{1 / ratio:.2f}x slower")
        lines.append(f"{name:<16}{run['wall_seconds']:>9.0f}{faster:>16}   "
                     f"{_loads(run['load_before'])} / {_loads(run['load_after'])}")
    lines += [
        f"ideal on {r['cpus']} CPUs, from the serial-1thread run's stages: "
        f"{best['stage_seconds']:.0f} s of stages, longest chain "
        f"{best['longest_chain_seconds']:.0f} s, so no shorter than "
        f"{best['shortest_seconds']:.0f} s (bound by {best['bound_by']}): "
        f"{best['speedup']:.2f}x",
        f"--ray local against serial-1thread: {r['speedup_over_serial_1thread']:.2f}x, "
        f"{r['fraction_of_ideal']:.2f} of the ideal {best['speedup']:.2f}x "
        f"(aim {r['aim']:.1f}: {'met' if r['fraction_of_ideal'] >= r['aim'] else 'NOT met'})",
        f"the Ray run kept {r['ray_cpus_busy']:.0%} of its {r['cpus']} CPUs busy with stages",
        f"{'stage kind':<14}{'stages':>7}{'serial-1thread s':>18}{'ray s':>9}   (medians)"]
    for name, k in r["stage_kinds"].items():
        ray_s = k["ray_median_seconds"]
        lines.append(f"{name:<14}{k['stages']:>7}{k['serial_1thread_median_seconds']:>18.1f}"
                     f"{'-' if ray_s is None else f'{ray_s:.1f}':>9}")
    if "ray_vs_serial_1thread" in r:
        d = r["ray_vs_serial_1thread"]
        lines.append("results, ray against serial-1thread: " +
                     ("equal (results.json but timings, .tflite bytes, .keras weights)"
                      if d is None else f"DIFFERENT: {d}"))
    if "serial_vs_serial_1thread" in r:
        d = r["serial_vs_serial_1thread"]
        lines.append("results, serial against serial-1thread: " +
                     ("equal" if d is None else f"differ ({d}): TensorFlow's float sums "
                      "depend on its thread count (docs/cluster.md)"))
    lines.append("One run each on a machine that may be shared: repeat on a quiet machine "
                 "before quoting a figure (docs/benchmarks.md).")
    return "\n".join(lines)


def _timeline(stages: list[dict]) -> list[tuple]:
    """(lane, start, seconds, name) of each stage, the start from its ``finished`` time; a
    stage takes the first lane free at its start. ``finished`` is in whole seconds and taken
    after the stage's files are checked, so a lane counts as free 2 s before its last stage's
    estimated end (a stage that follows another is not drawn beside it). Stages under a
    second are left out: too short to see, and their start is not known well enough to place
    them."""
    from datetime import datetime

    def end(s):
        return datetime.strptime(s["finished"], "%Y-%m-%dT%H:%M:%SZ").timestamp()

    spans = sorted(((end(s) - s["seconds"], s["seconds"], s["name"]) for s in stages
                    if s.get("finished") and s["seconds"] >= 1.0), key=lambda x: x[0])
    t0 = spans[0][0] if spans else 0.0
    lanes: list = []  # the end of the last stage on each lane
    placed = []
    for start, seconds, name in spans:
        lane = next((i for i, e in enumerate(lanes) if e <= start + 2.0), len(lanes))
        if lane == len(lanes):
            lanes.append(0.0)
        lanes[lane] = start + seconds
        placed.append((lane, start - t0, seconds, name))
    return placed


def plot(report: dict, path) -> Path:
    """``path``: each run's stages on a time line, a row per stage running at once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _, _ in RUNS if n in report["runs"]]
    timelines = {n: _timeline(stage_times(report["runs"][n]["out"])) for n in names}
    kinds = sorted({k for t in timelines.values() for *_, k in t})
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.2 + 0.9 * len(names)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        rows = timelines[name]
        for lane, start, seconds, kind in rows:
            ax.barh(lane, seconds, left=start, color=colours[kind], edgecolor="white")
        lanes = max((r[0] for r in rows), default=0) + 1
        ax.set_yticks([])  # a row is a stage running beside others, not a given CPU
        ax.set_ylim(-0.6, lanes - 0.4)
        ax.set_ylabel(f"{name}\n{report['runs'][name]['wall_seconds']:.0f} s", rotation=0,
                      ha="right", va="center")
    axes[-1, 0].set_xlabel("seconds since the run's first stage started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in kinds]
    fig.legend(handles, kinds, loc="upper center", ncol=min(len(kinds), 8), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_ray_bench(experiment: str, scale: str, out, *, extra: Sequence[str] = (),
                  default_threads: bool = True, say: Callable[[str], None] = print) -> dict:
    """Makes the runs of :data:`RUNS` into fresh folders under ``out`` and returns
    :func:`analyse`'s figures (also written to ``out/scaling.json``, drawn in
    ``out/scaling.png``)."""
    import importlib.util

    from mam_tf.bench.kill import first_difference, reproduce_command
    from mam_tf.common.extras import missing_message
    from mam_tf.common.machine import cpus_usable, line, load_average

    for module in ("ray", "matplotlib"):  # before the first run, not after the last
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(missing_message(module), name=module)
    out = Path(out)
    names = [n for n, _, _ in RUNS if default_threads or n != "serial"]
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise ValueError(f"'{out / taken[0]}' exists; the runs must start empty "
                         "(a stage read back would not be timed): give another --out")
    out.mkdir(parents=True, exist_ok=True)
    cpus = cpus_usable()
    # Thread settings of the caller's shell would make the default-thread run another one.
    inherited = {k: v for k, v in os.environ.items() if k not in ONE_THREAD}
    say(line())
    runs = {}
    for name, env, options in RUNS:
        if name not in names:
            continue
        folder, log = out / name, out / f"{name}.log"
        cmd = reproduce_command(experiment, folder, ["--no-progress", *extra, *options],
                                scale=scale)
        before = load_average()
        shown = [*(f"{k}={v}" for k, v in env.items()), shlex.join(["mam-tf", *cmd[3:]])]
        say(f"{name}: {' '.join(shown)} (its output: {log}); load average {_loads(before)}")
        t = time.perf_counter()
        with open(log, "wb") as fh:
            status = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                    env={**inherited, **env}).returncode
        seconds = time.perf_counter() - t
        if status != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"the {name} run failed (exit status {status}); "
                               f"the end of {log}: " + " | ".join(tail))
        runs[name] = {"out": str(folder), "wall_seconds": round(seconds, 1),
                      "load_before": before, "load_after": load_average()}
        say(f"{name}: {seconds:.0f} s; load average {_loads(runs[name]['load_after'])}")
    report = analyse(runs, cpus, first_difference)
    report.update(experiment=experiment, scale=scale, extra=list(extra), machine=line())
    (out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "scaling.png")
    return report


def _cmd_ray(args) -> int:
    try:
        report = run_ray_bench(args.experiment, args.scale, args.out,
                               extra=shlex.split(DEFAULT_ARGS.get(args.experiment, "")
                                                 if args.reproduce_args is None
                                                 else args.reproduce_args),
                               default_threads=not args.no_default_threads,
                               say=lambda text: print(text, flush=True))
    except RuntimeError as err:  # a run failed: its own message is in its log
        print(f"mam-tf bench ray: error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"written: {Path(args.out) / 'scaling.json'}, {Path(args.out) / 'scaling.png'}")
    return 0 if report.get("ray_vs_serial_1thread") is None else 1


def add_bench_command(subparsers):
    p = subparsers.add_parser(
        "ray", help="the speedup of `reproduce --ray local` here, against serial runs made "
        "in the same sitting and against the ideal",
        description="Runs `mam-tf reproduce EXPERIMENT --scale SCALE` three times into fresh "
        "folders under --out, one after another: serial with one TensorFlow thread (the "
        "thread count of a 1-CPU Ray task: the same work per stage and the same numbers), "
        "with --ray local, and serial at TensorFlow's default threads. Prints each wall time "
        "and the load average around it, the speedup of --ray local over both serial runs, "
        "the ideal speedup on this machine's CPUs (the 1-thread run's stages with nothing "
        "lost: the longest chain of dependent stages or their sum over the CPUs, whichever "
        "is longer), the fraction of it reached (aim 0.7), how busy Ray kept the CPUs, each "
        "stage kind's median time in both runs, and whether the results are equal. Writes "
        "OUT/scaling.json and OUT/scaling.png (each run's stages on a time line). Exit "
        "status 1 if the Ray run's results differ from the 1-thread serial run's. "
        "--scale demo takes about 25 minutes on 2 cores.")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="where the runs, their logs and the figures go (the run folders "
                   "must not exist yet)")
    p.add_argument("--experiment", choices=("mwscas", "biocas"), default="mwscas",
                   help="which reproduction (default mwscas)")
    p.add_argument("--scale", choices=("tiny", "demo", "small", "paper"), default="demo",
                   help="the reproduction's --scale (default demo; tiny for a quick look: "
                   "its stages are too short to say much)")
    p.add_argument("--reproduce-args", default=None, metavar="ARGS",
                   help="more options for every run, as one argument joined with '=' "
                   "(default for mwscas --no-mcu: the Cortex-M7 counts do not depend on the "
                   "host's threads, and QEMU's time would add the same to every run; none "
                   "for biocas; e.g. --reproduce-args='--no-mcu --seeds 0,1')")
    p.add_argument("--no-default-threads", action="store_true",
                   help="skip the serial run at TensorFlow's default threads")
    p.set_defaults(func=_cmd_ray)
