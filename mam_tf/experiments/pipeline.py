"""Resumable experiment pipelines: stages cached on disk by what shapes them.

An experiment is a sequence of stages (make the data, train a model, prune it, ...). Each call
of :meth:`Pipeline.stage` names a stage, gives every parameter that shapes its result and the
stages it reads (``deps``), and a function that computes it::

    run = Pipeline("runs/exp", "exp", config={"scale": "demo"}, code=code_fingerprint(...))
    data = run.stage("data", {"n": 1000, "seed": 0}, make_data)          # make_data(workdir)
    model = run.stage("train", {"epochs": 5}, train, deps=[data])        # train(workdir)
    print(model.value, model.path / "model.keras")
    run.write_manifest()

* The result lives in ``<out>/stages/<name>-<key>/``: the files the function wrote into the
  ``workdir`` it was given, and ``stage.json`` holding the JSON value it returned, its
  parameters and how long it took. ``key`` is a hash of the stage name, its parameters, the
  keys of its dependencies and the run's ``code`` (what computes it: the package version and a
  hash of the sources, :func:`code_fingerprint`), so changing a parameter reruns that stage and
  every stage that depends on it, and nothing else, and a stage computed by other code is never
  read back as this code's.
* A stage found on disk is read back, not recomputed (``result.cached`` is True), unless its
  name is in ``recompute`` (then it is computed again and replaces the stored one; the stages
  reading it keep their keys, its parameters being the same).
* Stages are computed in a temporary directory renamed into place when the function returns:
  an interrupted run leaves no half-written stage, and a rerun resumes after the last finished
  one.
* Every stage prints one line when it starts and one when it is done or read back;
  :meth:`Pipeline.progress` wraps loops in a tqdm bar. ``write_manifest`` writes
  ``<out>/manifest.json``: the configuration, each stage's key, whether it was computed or read
  back and its time, the machine and the load average.
* ``executor`` hands the stages it computes to somewhere else (a Ray cluster,
  :mod:`mam_tf.experiments.cluster`): ``stage`` then returns at once a result whose ``value``
  waits for the stage, so an experiment that reads values only once it has asked for every
  independent stage gets them computed in parallel. Stages are still read back by the caller,
  and still written into ``<out>/stages/`` (by the process that computes them).
  :meth:`Pipeline.wait` waits for every stage asked for. A Pipeline sent to another process
  (pickled) is a quiet copy without its executor: it computes stages where it lands.
* :meth:`Pipeline.import_stages` copies finished stages from other output folders (runs of
  other seeds on other machines), which is how ``--merge`` joins runs: the merged run then
  reads them back instead of computing them.

Stage functions must be deterministic given their parameters (seed everything they draw).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mam_tf.common.machine import load_average

__all__ = ["Pipeline", "StageResult", "stage_key", "code_fingerprint", "jsonable", "write_json",
           "read_json"]

STAGES_DIR = "stages"
STAGE_FILE = "stage.json"
MANIFEST = "manifest.json"


def jsonable(obj):
    """``obj`` as stored in JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(obj):
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"pipeline: {type(obj).__name__} value {obj!r} cannot be stored as JSON")


def stage_key(name: str, params: dict, deps: Sequence["StageResult"] = (), code: str = "") -> str:
    """The cache key of a stage: a hash of its name, its parameters, its dependencies' keys and
    ``code``, the fingerprint of the code that computes it (:func:`code_fingerprint`)."""
    blob = json.dumps({"name": name, "params": jsonable(params),
                       "deps": [d.key for d in deps], "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SOURCE_SUFFIXES = (".py", ".c", ".cc", ".h")


def code_fingerprint(modules: Iterable[str], version: str | None = None) -> str:
    """What computes a stage: ``"<version>+<hash>"``, the package version (default
    the installed distribution's) and a hash of the source files (``.py``, ``.c``, ``.cc``, ``.h``) of
    the named modules or packages (a package: every such file under its folder), by path and
    content. Editing any of those files, or upgrading the package, changes it."""
    import importlib.util

    if version is None:
        from importlib.metadata import version as _dist_version

        version = _dist_version("mam-tf")
    h = hashlib.sha256()
    for module in sorted(set(modules)):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_fingerprint: module '{module}' is not installed")
        origin = Path(spec.origin)
        if spec.submodule_search_locations:  # a package: all its sources
            root = origin.parent
            files = sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES
                           and p.is_file() and "__pycache__" not in p.parts)
        else:
            root, files = origin.parent, [origin]
        for f in files:
            h.update(f"{module}:{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
    return f"{version}+{h.hexdigest()[:16]}"


def write_json(path, obj) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_json(path):
    """Reads a JSON file."""
    with open(path) as fh:
        return json.load(fh)


@dataclasses.dataclass
class StageResult:
    """A finished stage.

    Attributes:
      name: the stage's name (e.g. ``"train"``).
      key: its cache key (:func:`stage_key`).
      path: its folder; the files its function wrote are there (``result.file("m.keras")``).
      value: the JSON value its function returned.
      params: the parameters it was keyed by.
      cached: True when it was read back from disk in this run, False when computed now.
      seconds: how long computing it took (when it was computed, possibly in an earlier run).
    """

    name: str
    key: str
    path: Path
    value: Any
    params: dict
    cached: bool
    seconds: float

    def file(self, name: str) -> Path:
        """The path of a file the stage wrote (an error names the stage if it is missing)."""
        p = self.path / name
        if not p.exists():
            raise FileNotFoundError(f"stage '{self.name}' ({self.path}) has no file '{name}'")
        return p


class Pipeline:
    """One run of an experiment: cached stages under ``out_dir`` and a manifest.

    Args:
      out_dir: the run's folder (created); stages go to ``out_dir/stages``.
      experiment: the experiment's name (printed, and stored in the manifest).
      config: what the run was asked for (scale, seeds, ...), stored in the manifest.
      progress: show tqdm bars (:meth:`progress`) and stage lines.
      log: where stage lines go (default: print to stderr; ``None`` with ``progress=False``
        prints nothing).
      code: the fingerprint of the code that computes the stages (:func:`code_fingerprint`),
        part of every stage's key and stored in the manifest.
      recompute: names of stages to compute again even when they are on disk.
      executor: computes the stages elsewhere (``executor.submit(pipeline, name, params,
        compute, deps, label)`` returns the result, its value pending; ``executor.wait()``
        waits for all), e.g. :class:`mam_tf.experiments.cluster.RayExecutor`; None computes
        them here, one after another.
    """

    def __init__(self, out_dir, experiment: str, *, config: dict | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 code: str = "", recompute: Iterable[str] = (), executor=None):
        self.out = Path(out_dir)
        self.stages_dir = self.out / STAGES_DIR
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment
        self.config = dict(config or {})
        self.code = str(code)
        self.recompute = frozenset(recompute)
        self.show_progress = bool(progress)
        if log is None:
            log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
        self._log = log
        self.records: list[dict] = []
        self.started = time.time()
        self._t0 = time.perf_counter()
        self._load_start = load_average()
        self.executor = executor

    def __getstate__(self):
        # What another process gets: the stage cache's coordinates, no executor, no open
        # files or locks, no output (the sender shows the progress).
        state = {k: v for k, v in self.__dict__.items()
                 if not isinstance(v, (io.IOBase, type(threading.Lock())))}
        state.update(executor=None, records=[], show_progress=False, _log=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._log = _silent

    # -- stages -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Prints one progress line, prefixed with the experiment's name."""
        self._log(f"[{self.experiment}] {message}")

    def stage_path(self, name: str, key: str) -> Path:
        return self.stages_dir / f"{name}-{key}"

    def lookup(self, name: str, params: dict, deps: Sequence[StageResult] = ()) -> StageResult | None:
        """The stage's result if it is on disk, else None (computes nothing)."""
        key = stage_key(name, params, deps, self.code)
        path = self.stage_path(name, key)
        meta_path = path / STAGE_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            return None
        if (meta.get("key") != key or meta.get("params") != jsonable(params)
                or meta.get("code") != self.code):
            return None
        return StageResult(name, key, path, meta.get("value"), meta["params"], True,
                           float(meta.get("seconds", 0.0)))

    def stage(self, name: str, params: dict, compute: Callable[[Path], Any], *,
              deps: Sequence[StageResult] = (), label: str | None = None) -> StageResult:
        """Runs a stage, or reads it back if a run with the same key finished before.

        Args:
          name: the stage's kind (a folder-name-safe word: ``"train"``, ``"prune"``).
          params: every parameter that shapes the result (JSON-able); two calls with equal
            params and deps share one result.
          compute: ``compute(workdir) -> value``: writes any files into ``workdir`` (a fresh,
            empty folder) and returns a JSON-able value. It runs only when the stage is not on
            disk yet.
          deps: the stages whose results ``compute`` reads; their keys are part of this key.
          label: a readable name for progress lines and the manifest (default: ``name``).
        Returns:
          A :class:`StageResult`.
        """
        label = label or name
        found = None if name in self.recompute else self.lookup(name, params, deps)
        if found is not None:
            self.log(f"{label}: read back ({found.path.name}, computed in {found.seconds:.1f} s)")
            self._record(found, label, 0.0)
            return found
        if self.executor is not None:
            return self.executor.submit(self, name, params, compute, deps, label)
        key = stage_key(name, params, deps, self.code)
        final = self.stage_path(name, key)
        self.log(f"{label}: computing ...")
        work = Path(tempfile.mkdtemp(dir=self.stages_dir, prefix=f".tmp-{name}-{key}-"))
        t0 = time.perf_counter()
        try:
            value = jsonable(compute(work))
            seconds = time.perf_counter() - t0
            write_json(work / STAGE_FILE, {
                "name": name, "key": key, "label": label, "params": jsonable(params),
                "deps": [d.key for d in deps], "code": self.code, "value": value,
                "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "ran_on": where_am_i(),
            })
            if final.exists():  # an identical stage finished meanwhile (another process)
                shutil.rmtree(final)
            os.replace(work, final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        self.log(f"{label}: done in {seconds:.1f} s")
        result = StageResult(name, key, final, value, jsonable(params), False, seconds)
        self._record(result, label, seconds, where_am_i())
        return result

    def _record(self, result: StageResult, label: str, wall: float,
                ran_on: dict | None = None) -> dict:
        record = {"stage": result.name, "label": label, "key": result.key,
                  "cached": result.cached, "seconds": round(result.seconds, 3),
                  "wall_seconds_this_run": round(wall, 3), "ran_on": ran_on}
        self.records.append(record)
        return record

    def wait(self) -> None:
        """Returns when every stage asked for is finished (at once without an executor); a
        stage that failed raises its error."""
        if self.executor is not None:
            self.executor.wait()

    @property
    def computed(self) -> list[str]:
        """Labels of the stages computed (not read back) in this run, in order."""
        return [r["label"] for r in self.records if not r["cached"]]

    # -- progress -----------------------------------------------------------------------
    def progress(self, iterable: Iterable, desc: str, total: int | None = None, **kwargs):
        """``iterable`` wrapped in a tqdm bar (a plain iterable when progress is off)."""
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=f"[{self.experiment}] {desc}", total=total, leave=False,
                    **kwargs)

    # -- merging ------------------------------------------------------------------------
    def import_stages(self, dirs: Iterable) -> int:
        """Copies the finished stages of other runs' folders into this run; returns how many.

        Stages already here are kept. Other runs are found by their ``stages/`` folder.
        """
        dirs = list(dirs)
        n = 0
        for d in dirs:
            src = Path(d) / STAGES_DIR
            if not src.is_dir():
                raise FileNotFoundError(f"merge: '{d}' is not a run folder (no '{STAGES_DIR}/')")
            for stage_dir in sorted(src.iterdir()):
                if stage_dir.name.startswith(".") or not (stage_dir / STAGE_FILE).is_file():
                    continue
                dest = self.stages_dir / stage_dir.name
                if dest.exists():
                    continue
                tmp = Path(tempfile.mkdtemp(dir=self.stages_dir, prefix=".tmp-import-"))
                shutil.rmtree(tmp)
                shutil.copytree(stage_dir, tmp)
                os.replace(tmp, dest)
                n += 1
        self.log(f"merge: {n} stages imported from {len(dirs)} run folder(s)")
        return n

    # -- manifest -----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since this Pipeline was made."""
        return time.perf_counter() - self._t0

    def write_manifest(self, extra: dict | None = None) -> Path:
        """Writes ``<out>/manifest.json`` (configuration, stages, timings, machine) and returns
        its path. ``extra`` is merged in (e.g. the outputs written)."""
        self.wait()
        manifest = {
            "experiment": self.experiment,
            "config": jsonable(self.config),
            "code": self.code,
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_seconds": round(self.elapsed(), 2),
            "stages_computed": len(self.computed),
            "stages_read_back": sum(r["cached"] for r in self.records),
            "stages": self.records,
            "machine": machine(),
            "loadavg_start": self._load_start,
            "loadavg_end": load_average(),
        }
        manifest.update(jsonable(extra or {}))
        return write_json(self.out / MANIFEST, manifest)


def _silent(message: str) -> None:
    pass


def where_am_i() -> dict:
    """Where a stage is computed: the host name and the process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def machine() -> dict:
    """The machine a run ran on (:func:`mam_tf.common.machine.describe`)."""
    from mam_tf.common.machine import describe

    return describe()
