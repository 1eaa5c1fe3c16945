"""``mam-tf bench kill``: SIGKILL the paper reproductions anywhere; a resumed run must equal an
uninterrupted one.

For each experiment it runs ``mam-tf reproduce EXPERIMENT --scale tiny -o DIR`` once without
interruption (the reference, timed), then runs it again in fresh folders, killing the process
group with SIGKILL at chosen moments and restarting it into the same folder until it finishes
(``kills_per_run`` kills per folder: each restart reads the finished stages back, so a kill
costs the stage it interrupted plus a process start). Each finished folder is compared with
the reference: ``results.json`` (every field but :data:`IGNORED_FIELDS`, the timings and
machine facts listed in docs/reproductions.md), the ``.tflite`` files byte for byte and the
``.keras`` models' weights and configuration; the comparison names the first difference.

Kill moments (:data:`MOMENTS`):

* ``training``: some time into a training stage (train, QAT, fine-tune, a biocas sweep);
* ``stage-write``: a stage's files complete in its temporary folder but not renamed into
  place, or its ``stage.json`` half written (written to its temporary name, not renamed);
* ``deployment``: some time into a deploy stage (conversion, the host runtime);
* ``report``: some time into the outputs, or an output file or ``results.json`` /
  ``manifest.json`` half written;
* ``random``: a uniformly random time over the reference's duration (start-up included).

The named moments are reached through the pipeline's test hook (the environment variable
``MAM_TF_KILL_AT``, :func:`mam_tf.experiments.pipeline.kill_point`); the targets come from the
reference's manifest (its stages in order, their keys and durations) and the stages already
finished in the folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["IGNORED_FIELDS", "MOMENTS", "EXPERIMENTS", "Reference", "KillPoint", "RunOutcome",
           "first_difference", "reproduce_command", "run_reference", "read_reference", "plan_points",
           "run_killed", "run_kill_bench", "format_tally", "add_bench_command"]

#: Keys of ``results.json`` that hold timings or machine facts, ignored wherever they appear
#: (the list docs/reproductions.md gives).
IGNORED_FIELDS = frozenset({"seconds", "seconds_per_epoch", "qat_seconds_per_epoch",
                            "train_seconds", "convert_seconds", "runtime_ms_per_window"})
MOMENTS = ("training", "stage-write", "deployment", "report", "random")
EXPERIMENTS = ("mwscas", "biocas")
#: Stage names whose function trains a model.
TRAINING_STAGES = frozenset({"train", "qat", "fine_tune", "sweep"})
RESULTS = "results.json"
MANIFEST = "manifest.json"
KILL_AT = "MAM_TF_KILL_AT"


def reproduce_command(experiment: str, out, extra: Sequence[str] = (),
                      scale: str = "tiny") -> list[str]:
    """The command line of one run: ``mam-tf reproduce EXPERIMENT --scale SCALE -o OUT``."""
    return [sys.executable, "-m", "mam_tf.cli", "reproduce", experiment, "--scale", scale,
            "-o", str(out), *extra]


# ------------------------------------------------------------------------------------------
# Comparing a finished run with the reference
# ------------------------------------------------------------------------------------------
def _first_json_difference(a, b, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED_FIELDS:
                continue
            if k not in a or k not in b:
                return f"{where}.{k}: {'missing' if k not in a else a[k]!r} != " \
                       f"{'missing' if k not in b else b[k]!r}"
            found = _first_json_difference(a[k], b[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_json_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if a != b or type(a) is not type(b):
        return f"{where}: {a!r} != {b!r}"
    return None


def _keras_difference(a: Path, b: Path, name: str) -> str | None:
    """The first difference between two ``.keras`` files' configuration or weights (their
    metadata, which holds the date saved, is not compared)."""
    import h5py
    import numpy as np

    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        if json.loads(za.read("config.json")) != json.loads(zb.read("config.json")):
            return f"{name}: config.json differs"
        with za.open("model.weights.h5") as fa, zb.open("model.weights.h5") as fb, \
                h5py.File(_BytesFile(fa), "r") as ha, h5py.File(_BytesFile(fb), "r") as hb:
            wa, wb = _datasets(ha), _datasets(hb)
            if sorted(wa) != sorted(wb):
                only = sorted(set(wa) ^ set(wb))[0]
                return f"{name}: weight {only} is in one model only"
            for key in sorted(wa):
                x, y = wa[key], wb[key]
                if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
                    return f"{name}: weight {key} differs"
    return None


def _BytesFile(fh):
    import io

    return io.BytesIO(fh.read())


def _datasets(h5) -> dict:
    found = {}
    h5.visititems(lambda key, obj: found.__setitem__(key, obj[()]) if hasattr(obj, "shape")
                  else None)
    return found


def _model_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.suffix in (".tflite", ".keras") and p.is_file()
                  and "stages" not in p.relative_to(out).parts)


def first_difference(reference, run) -> str | None:
    """The first difference between two finished run folders (None when they agree):
    ``results.json`` but :data:`IGNORED_FIELDS`, the ``.tflite`` files' bytes, the ``.keras``
    models' configuration and weights. Names the file and the field or weight."""
    reference, run = Path(reference), Path(run)
    for folder in (reference, run):
        if not (folder / RESULTS).is_file():
            return f"{folder} has no {RESULTS}"
    found = _first_json_difference(json.loads((reference / RESULTS).read_text()),
                                   json.loads((run / RESULTS).read_text()), RESULTS)
    if found:
        return found
    ref_models, run_models = _model_files(reference), _model_files(run)
    if ref_models != run_models:
        name = sorted(set(ref_models) ^ set(run_models))[0]
        return f"{name}: in {'the reference' if name in ref_models else 'the run'} only"
    for name in ref_models:
        a, b = reference / name, run / name
        if name.endswith(".tflite"):
            if a.read_bytes() != b.read_bytes():
                return f"{name}: bytes differ"
        else:
            try:
                found = _keras_difference(a, b, name)
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
                return f"{name}: unreadable ({type(err).__name__}: {err})"
            if found:
                return found
    return None


# ------------------------------------------------------------------------------------------
# Running, killing, restarting
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Reference:
    """The uninterrupted run: its folder, duration, its stages in order (name, key, label,
    seconds) from its manifest, the seconds of its outputs and of its start-up (before the
    pipeline, TensorFlow's import mostly)."""

    experiment: str
    out: Path
    seconds: float
    stages: list
    outputs_seconds: float
    startup_seconds: float


@dataclasses.dataclass
class KillPoint:
    """One kill: its moment kind, and either the hook's ``MAM_TF_KILL_AT`` value (``spec``) or
    the seconds after the start of the attempt (``after``). ``hit``: the process died by it;
    ``landed``: what the process was doing (its last progress line)."""

    kind: str
    spec: str | None = None
    after: float | None = None
    hit: bool = False
    landed: str = ""


@dataclasses.dataclass
class RunOutcome:
    experiment: str
    out: Path
    points: list
    attempts: int
    seconds: float
    difference: str | None = None
    failed: str | None = None

    @property
    def identical(self) -> bool:
        return self.failed is None and self.difference is None


def _start(cmd, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _reap(proc: subprocess.Popen, after: float | None) -> int:
    """Waits for ``proc`` (SIGKILLing its group ``after`` seconds in, if given); kills whatever
    is left of its group (children it started) and returns its exit status."""
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:  # interrupted: the run goes with it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.returncode


def _env(spec: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if spec:
        env[KILL_AT] = spec
    return env


def run_reference(experiment: str, out, extra: Sequence[str] = (), log=None) -> Reference:
    """Runs the experiment once without interruption into ``out`` (a fresh folder)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = Path(log) if log else out.with_name(out.name + ".log")
    t = time.perf_counter()
    status = _reap(_start(reproduce_command(experiment, out, extra), log, _env(None)), None)
    seconds = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"bench kill: the reference run of {experiment} failed (exit status "
                           f"{status}); its output is in {log}")
    return read_reference(experiment, out, seconds)


def read_reference(experiment: str, out, seconds: float) -> Reference:
    """The :class:`Reference` of a finished, uninterrupted run folder that took ``seconds``."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    stages, seen = [], set()
    for r in manifest["stages"]:
        if r["key"] not in seen:  # a stage used twice is computed once
            seen.add(r["key"])
            stages.append({"name": r["stage"], "key": r["key"], "label": r["label"],
                           "seconds": float(r["seconds"])})
    wall = float(manifest["wall_seconds"])
    outputs = max(0.0, wall - sum(s["seconds"] for s in stages))
    return Reference(experiment, out, seconds, stages, outputs, max(0.0, seconds - wall))


def _remaining(ref: Reference, out: Path) -> list:
    """The reference's stages not yet finished in ``out``, in the order a run computes them."""
    return [s for s in ref.stages
            if not (out / "stages" / f"{s['name']}-{s['key']}" / "stage.json").is_file()]


def _occurrence(todo: list, i: int) -> int:
    """1 + how many stages of the same name come before ``todo[i]`` (the hook counts them)."""
    return 1 + sum(s["name"] == todo[i]["name"] for s in todo[:i])


def _target(kind: str, ref: Reference, out: Path, rng: random.Random,
            later: int = 0) -> KillPoint | None:
    """A concrete kill for ``kind`` given what is left to do in ``out`` (None: nothing of that
    kind is left); ``later``: how many kills the run still has to make after this one."""
    todo = _remaining(ref, out)
    if kind == "random":
        # a random time in the start-up or in the next 1 / (later + 1) of the reference's
        # remaining work, which leaves the later kills something to kill
        left = (sum(s["seconds"] for s in todo) + ref.outputs_seconds) / (later + 1)
        return KillPoint(kind, after=rng.uniform(0.0, ref.startup_seconds + left))
    if kind == "report":
        choice = rng.choice(["outputs", "results", "manifest", "copy"])
        models = _model_files(ref.out)
        if choice == "outputs":
            # in the first half of the outputs' time, which a restart takes again
            delay = rng.uniform(0, ref.outputs_seconds / 2)
            return KillPoint(kind, spec=f"outputs:1+{delay:.2f}")
        if choice == "copy" and models:
            return KillPoint(kind, spec=f"copy/{Path(rng.choice(models)).name}:1")
        return KillPoint(kind, spec=f"json-write/{MANIFEST if choice == 'manifest' else RESULTS}:1")
    if kind == "training":
        pick = [i for i, s in enumerate(todo) if s["name"] in TRAINING_STAGES]
    elif kind == "deployment":
        pick = [i for i, s in enumerate(todo) if s["name"] == "deploy"]
    elif kind == "stage-write":
        pick = list(range(len(todo)))
    else:
        raise ValueError(f"bench kill: moment is {kind!r}; must be one of {MOMENTS}")
    if not pick:
        return None
    # the earliest candidates first, so that the run's later points still find theirs
    i = pick[min(len(pick) - 1, int(rng.expovariate(1.0)))]
    stage, n = todo[i], _occurrence(todo, i)
    if kind == "stage-write":
        if rng.random() < 0.5:
            return KillPoint(kind, spec=f"stage-written/{stage['name']}:{n}")
        return KillPoint(kind, spec=f"json-write/stage.json:{i + 1}")
    return KillPoint(kind, spec=f"compute/{stage['name']}:{n}"
                     f"+{rng.uniform(0, stage['seconds']):.2f}")


#: The order of a run's named kills: the order a run reaches them.
_ORDER = {"training": 0, "stage-write": 1, "deployment": 2, "report": 3}


def plan_points(n: int, rng: random.Random, kills_per_run: int) -> list[list[str]]:
    """``n`` moment kinds, covering every kind in turn, split into runs of at most
    ``kills_per_run`` kills, each run's named moments in the order a run reaches them and its
    random times spread evenly among them."""
    kinds = [MOMENTS[i % len(MOMENTS)] for i in range(n)]
    rng.shuffle(kinds)
    runs = []
    for i in range(0, n, kills_per_run):
        chunk = kinds[i:i + kills_per_run]
        named = sorted((k for k in chunk if k != "random"), key=_ORDER.__getitem__)
        randoms = chunk.count("random")
        for j in range(randoms):
            named.insert(min(len(named), round((j + 0.5) * len(chunk) / randoms)), "random")
        runs.append(named)
    return runs


def _landed(log_text: str, experiment: str) -> str:
    """What a killed attempt was doing, from its progress lines: the stage it was computing,
    ``start-up`` (no stage line yet) or ``between stages or in the outputs``."""
    prefix = f"[{experiment}] "
    state = "start-up"
    for chunk in log_text.replace("\r", "\n").splitlines():
        i = chunk.find(prefix)
        if i < 0:
            continue
        line = chunk[i + len(prefix):].strip()
        if line.endswith(": computing ..."):
            state = line[: -len(": computing ...")]
        elif ": done in " in line or ": read back (" in line:
            state = "between stages or in the outputs"
    return state


def run_killed(ref: Reference, out, kinds: Sequence[str], rng: random.Random,
               extra: Sequence[str] = (), max_attempts: int = 50,
               log_fn: Callable[[str], None] = print,
               on_point: Callable[[KillPoint], None] = lambda point: None) -> RunOutcome:
    """One run into ``out`` (fresh) killed at each of ``kinds`` in turn, restarted until it
    finishes, then compared with the reference. ``on_point`` sees each point once decided."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = out.with_name(out.name + ".log")
    log.unlink(missing_ok=True)
    cmd = reproduce_command(ref.experiment, out, extra)
    t = time.perf_counter()
    points, attempts, queue = [], 0, list(kinds)
    while True:
        point = None
        while queue and point is None:
            kind = queue.pop(0)
            point = _target(kind, ref, out, rng, later=len(queue))
            if point is None:
                points.append(KillPoint(kind, landed="nothing of this kind left"))
                on_point(points[-1])
        attempts += 1
        if attempts > max_attempts:
            return RunOutcome(ref.experiment, out, points, attempts, time.perf_counter() - t,
                              failed=f"not finished after {max_attempts} starts")
        start = log.stat().st_size if log.exists() else 0
        status = _reap(_start(cmd, log, _env(point.spec if point else None)),
                       point.after if point else None)
        if point is not None:
            point.hit = status == -signal.SIGKILL
            text = log.read_bytes()[start:].decode(errors="replace")
            point.landed = _landed(text, ref.experiment) if point.hit else "finished first"
            points.append(point)
            on_point(point)
            log_fn(f"  {ref.experiment} {out.name}: {point.kind} "
                   f"({point.spec or f'{point.after:.1f} s in'}) -> "
                   f"{'killed in ' + point.landed if point.hit else 'missed: the run finished'}")
        if status == 0:
            break
        if status != -signal.SIGKILL or point is None:
            return RunOutcome(ref.experiment, out, points, attempts, time.perf_counter() - t,
                              failed=f"a start failed with exit status {status} (see {log})")
    for kind in queue:
        points.append(KillPoint(kind, landed="not tried: the run had finished"))
        on_point(points[-1])
    outcome = RunOutcome(ref.experiment, out, points, attempts, time.perf_counter() - t)
    outcome.difference = first_difference(ref.out, out)
    return outcome


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_kill_bench(points: int, *, seed: int = 0, experiments: Sequence[str] = EXPERIMENTS,
                   workdir=None, keep: bool = False, kills_per_run: int = 5,
                   extra: Sequence[str] = (), out: Callable[[str], None] = print) -> dict:
    """Kills the reproductions at ``points`` moments (split evenly over ``experiments``) and
    compares every resumed run with an uninterrupted reference; returns the tally
    (:func:`format_tally` prints it). Folders of runs that differ are kept with ``keep``."""
    import platform
    import tempfile

    rng = random.Random(seed)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="mam-tf-kill-")) if own else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    out(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {_load()}")
    tally = {"points": 0, "hit": 0, "by_kind": {}, "landed": {}, "runs": 0, "identical": 0,
             "different": [], "failed": [], "references": {}, "seconds": 0.0}
    t0 = time.perf_counter()
    share = [points // len(experiments) + (i < points % len(experiments))
             for i in range(len(experiments))]
    try:
        _bench(tally, experiments, share, root, rng, keep, kills_per_run, extra, out)
    except KeyboardInterrupt:
        tally["interrupted"] = True
        out("interrupted: the tally so far follows")
    finally:
        tally["seconds"] = round(time.perf_counter() - t0, 1)
        tally["load_average"] = _load()
        if own and not keep:
            shutil.rmtree(root, ignore_errors=True)
    return tally


def _count(tally: dict, p: KillPoint) -> None:
    k = tally["by_kind"].setdefault(p.kind, {"tried": 0, "hit": 0, "skipped": 0})
    if p.spec is None and p.after is None:  # nothing of its kind was left to kill
        k["skipped"] += 1
        return
    tally["points"] += 1
    k["tried"] += 1
    if p.hit:
        tally["hit"] += 1
        k["hit"] += 1
        landed = p.landed.split(" seed ")[0]
        tally["landed"][landed] = tally["landed"].get(landed, 0) + 1


def _bench(tally, experiments, share, root, rng, keep, kills_per_run, extra, out):
    """The kill runs of :func:`run_kill_bench`, counted into ``tally`` as they finish."""
    for experiment, n in zip(experiments, share):
        if n == 0:
            continue
        out(f"{experiment}: reference run (uninterrupted) ...")
        ref = run_reference(experiment, root / f"{experiment}-reference", extra)
        tally["references"][experiment] = round(ref.seconds, 1)
        out(f"{experiment}: reference took {ref.seconds:.0f} s, {len(ref.stages)} stages; "
            f"{n} kill points, at most {kills_per_run} per run")
        for r, kinds in enumerate(plan_points(n, rng, kills_per_run)):
            folder = root / f"{experiment}-run{r:03d}"
            o = run_killed(ref, folder, kinds, rng, extra, log_fn=out,
                           on_point=lambda p: _count(tally, p))
            tally["runs"] += 1
            word = ("identical" if o.identical else
                    f"FAILED: {o.failed}" if o.failed else f"DIFFERENT: {o.difference}")
            out(f"{experiment} run {r + 1}: {sum(p.hit for p in o.points)} kills, "
                f"{o.attempts} starts, {o.seconds:.0f} s: {word}; load average {_load()}")
            if o.identical:
                tally["identical"] += 1
            elif o.failed:
                tally["failed"].append(f"{experiment} {folder}: {o.failed}")
            else:
                tally["different"].append(f"{experiment} {folder}: {o.difference}")
            if o.identical or not keep:
                shutil.rmtree(folder, ignore_errors=True)
                folder.with_name(folder.name + ".log").unlink(missing_ok=True)
            else:
                out(f"  kept {folder} and {folder.name}.log beside it")
        if not keep:
            shutil.rmtree(ref.out, ignore_errors=True)


def format_tally(tally: dict) -> str:
    lines = ["INTERRUPTED: a partial tally"] if tally.get("interrupted") else []
    lines.append(f"kill points: {tally['points']} tried, {tally['hit']} killed the run")
    for kind in MOMENTS:
        k = tally["by_kind"].get(kind)
        if k:
            lines.append(f"  {kind:12s} {k['tried']:4d} tried, {k['hit']:4d} killed"
                         + (f", {k['skipped']} not tried (nothing of the kind left, or the run had finished)"
                            if k["skipped"] else ""))
    if tally["landed"]:
        lines.append("where the kills landed: " + ", ".join(
            f"{name} {n}" for name, n in sorted(tally["landed"].items(), key=lambda x: -x[1])))
    lines.append(f"resumed runs: {tally['runs']}, identical to the reference "
                 f"{tally['identical']}, different {len(tally['different'])}, failed "
                 f"{len(tally['failed'])}")
    lines += [f"  different: {d}" for d in tally["different"]]
    lines += [f"  failed: {d}" for d in tally["failed"]]
    refs = ", ".join(f"{e} {s:.0f} s" for e, s in tally["references"].items())
    lines.append(f"references: {refs}; total {tally['seconds']:.0f} s; load average "
                 f"{tally.get('load_average', _load())} (a shared machine: times are noisy)")
    return "\n".join(lines)


def _cmd_kill(args) -> int:
    if args.points < 1:
        raise ValueError(f"--points must be at least 1, got {args.points}")
    if args.kills_per_run < 1:
        raise ValueError(f"--kills-per-run must be at least 1, got {args.kills_per_run}")
    experiments = EXPERIMENTS if args.experiment == "both" else (args.experiment,)
    tally = run_kill_bench(args.points, seed=args.seed, experiments=experiments,
                           workdir=args.workdir, keep=args.keep,
                           kills_per_run=args.kills_per_run,
                           extra=shlex.split(args.reproduce_args or ""),
                           out=lambda line: print(line, flush=True))
    print(format_tally(tally))
    if tally.get("interrupted"):
        return 130
    return 0 if tally["identical"] == tally["runs"] else 1


def add_bench_command(subparsers):
    p = subparsers.add_parser(
        "kill", help="SIGKILL the reproductions anywhere; the resumed runs must equal an "
        "uninterrupted one",
        description="Runs `mam-tf reproduce EXPERIMENT --scale tiny` once uninterrupted (the "
        "reference), then again in fresh folders, SIGKILLing the process group at chosen "
        "moments (in training, in the middle of a stage's write, during deployment, during the "
        "report, at random times) and restarting it until it finishes; compares results.json "
        "(but its timings and machine facts), the .tflite bytes and the .keras weights with "
        "the reference and names the first difference. Prints each kill, the tally by moment "
        "and the load average; exit status 1 if a resumed run differs or fails.")
    p.add_argument("--points", type=int, default=20,
                   help="kill points in all, split over the experiments (default 20; each "
                   "costs about a stage and a process start, each run of --kills-per-run "
                   "points a whole tiny run, a few minutes here)")
    p.add_argument("--seed", type=int, default=0, help="which moments (default 0)")
    p.add_argument("--experiment", choices=(*EXPERIMENTS, "both"), default="both",
                   help="which reproduction to kill (default both)")
    p.add_argument("--kills-per-run", type=int, default=5, metavar="N",
                   help="kills before a run may finish (default 5): a run is restarted after "
                   "each")
    p.add_argument("--reproduce-args", default=None, metavar="ARGS",
                   help="more options for every `mam-tf reproduce` run, as one argument "
                   "joined with '=' (e.g. --reproduce-args='--no-mcu --seeds 0'; default none)")
    p.add_argument("--keep", action="store_true",
                   help="keep the folders (and logs) of runs that differ from the reference "
                   "or fail, and the references (default: removed); their paths are printed")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where the runs go (default: a temporary folder, removed at the end "
                   "unless --keep)")
    p.set_defaults(func=_cmd_kill)
