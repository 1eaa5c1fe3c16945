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
  name is in ``recompute`` (then it is computed again and replaces the stored one).
* A stage found on disk is never trusted blindly. Its ``stage.json`` records the sha256 and
  size of every file it wrote, the digest of each input it was computed from and a checksum
  of itself; a stage whose stage.json is unreadable, altered or from before checksums, whose
  file is missing, truncated or altered, or whose input changed since (:func:`stage_damage`)
  is recomputed, with one line naming the stage, the file and why. A recomputed stage keeps
  its key (the key holds its inputs' keys, not their contents), so the stages reading it
  would match their keys still: that is why they also record their inputs' digests (a hash
  of the value and the files' contents) and are recomputed when those differ. Saved models
  and ``.npz`` files hold their save time, so a recomputed input counts as changed.
* Stages are computed in a temporary directory renamed into place when the function returns:
  an interrupted run leaves no half-written stage, and a rerun resumes after the last finished
  one. A full disk or an unwritable folder stops the stage with :class:`WriteFailed` naming
  the path, its temporary folder removed.
* A Pipeline holds its folder: an exclusive ``flock`` on ``<out>/.lock`` (pid, host and start
  time inside); a second run on the folder raises :class:`RunFolderBusy` naming the holder, or
  waits (``wait=True``). The kernel drops the lock of a run that dies (even by SIGKILL), and
  the next run to take it removes the temporary folders the dead run left.
* A stage's value is JSON with finite numbers only: NaN or infinity is refused, naming the key
  path (:func:`check_finite`); :func:`write_json` refuses them too.
* Every stage prints one line when it starts and one when it is done or read back;
  :meth:`Pipeline.progress` wraps loops in a tqdm bar. ``write_manifest`` writes
  ``<out>/manifest.json``: the configuration, each stage's key, whether it was computed or read
  back, its time, where it ran and its memory (the computing process's resident memory at
  the stage's start and its peak during it), the machine and the load average.
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
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mam_tf._native import tflm_ops_dir
from mam_tf.common.machine import PeakMemory, load_average

__all__ = ["Pipeline", "StageResult", "stage_key", "code_fingerprint", "jsonable", "write_json",
           "read_json", "check_finite", "file_checksums", "stage_damage", "RunFolderBusy",
           "WriteFailed", "WRITE_ERRNOS"]

#: The test hook's environment variable (:func:`kill_point`).
KILL_AT = "MAM_TF_KILL_AT"
STAGES_DIR = "stages"
STAGE_FILE = "stage.json"
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
#: errno values that mean "this folder cannot take the write" (full disk or quota, no
#: permission, read-only filesystem, file too large): the run stops with one line naming the
#: path, keeping every finished stage.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                          errno.EFBIG})


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


_TREE_SUFFIXES = _SOURCE_SUFFIXES + (".cmake", ".ld", ".map")


def code_fingerprint(modules: Iterable[str], version: str | None = None,
                     trees: Iterable[Path] = ()) -> str:
    """What computes a stage: ``"<version>+<hash>"``, the package version (default
    the installed distribution's) and a hash of the source files (``.py``, ``.c``, ``.cc``, ``.h``) of
    the named modules or packages (a package: every such file under its folder), by path and
    content. Editing any of those files, or upgrading the package, changes it.

    ``trees``: folders of native sources outside the Python packages (the C core and glue of
    ``tflm_ops/``, which the deployment stages build and run), hashed the same way with their
    build files (``.cmake``, ``CMakeLists.txt``, linker scripts), by path relative to the
    folder's own name, so that a checkout and an installed package agree."""
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
    for tree in trees:
        tree = Path(tree)
        for f in sorted(p for p in tree.rglob("*") if p.is_file() and (
                p.suffix in _TREE_SUFFIXES or p.name == "CMakeLists.txt")):
            h.update(f"{tree.name}/{f.relative_to(tree).as_posix()}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
    return f"{version}+{h.hexdigest()[:16]}"


def experiment_code(modules: Iterable[str]) -> str:
    """The code fingerprint of an experiment's stages: the sources of ``modules`` and the C
    sources of ``tflm_ops/`` (the core the deployment stages build and run). The driver and
    every cluster node compute it with this one function, so that they agree."""
    return code_fingerprint(modules, trees=(tflm_ops_dir(),))


def check_finite(obj, where: str) -> None:
    """Raises ValueError naming the key path (``points[3].arsnr``) of the first NaN or infinite
    number in ``obj`` (dicts, lists, numbers, numpy scalars and arrays); ``where`` names what
    holds it in the message."""
    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif not isinstance(value, (str, bool, type(None))):
            if hasattr(value, "tolist"):  # numpy scalars and arrays
                return walk(value.tolist(), path)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"{where}: {path or 'the value'} is {value}; non-finite "
                                 "numbers are never stored (a computation diverged or divided "
                                 "by zero)")

    walk(obj, "")


def write_json(path, obj) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` atomically (temporary file + rename).

    NaN and infinite numbers are refused (ValueError naming the file and the key path); a
    full disk or an unwritable folder raises :class:`WriteFailed` naming the path, leaving
    no temporary file."""
    path = Path(path)
    check_finite(obj, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise_write_error(err, path)
        raise
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        kill_point("json-write", path.name)
        os.replace(tmp, path)
    except OSError as err:
        raise_write_error(err, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_json(path):
    """Reads a JSON file."""
    with open(path) as fh:
        return json.load(fh)


# ------------------------------------------------------------------------------------------
# Write errors: a full disk or an unwritable folder is one line naming the path
# ------------------------------------------------------------------------------------------
class WriteFailed(OSError):
    """A write the run needs failed because the disk is full or the folder refuses it; the
    message names the path and what to do. Finished stages are kept."""

    def __str__(self):
        return self.strerror


def raise_write_error(err: OSError, path, what: str = "") -> None:
    """Raises :class:`WriteFailed` for ``err`` when its errno is one of :data:`WRITE_ERRNOS`
    (naming ``err.filename`` or else ``path``, and ``what`` was being written); returns
    otherwise, for the caller to re-raise ``err``."""
    if isinstance(err, WriteFailed):
        if what:  # say which stage (or output) was writing
            raise WriteFailed(err.errno, f"{what}: {err.strerror}") from err.__cause__
        return
    if err.errno not in WRITE_ERRNOS:
        return
    where = err.filename or path
    reason = err.strerror or os.strerror(err.errno)
    hint = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "make it writable")
    raise WriteFailed(err.errno, f"{what}{': ' if what else ''}cannot write '{where}': "
                      f"{reason} ({errno.errorcode.get(err.errno, err.errno)}); "
                      f"{hint} and rerun to continue from the finished stages") from err


# ------------------------------------------------------------------------------------------
# Integrity: every stage's files are checksummed; a damaged stage is recomputed
# ------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_checksums(folder) -> dict:
    """``{relative path: {"sha256": hex, "bytes": size}}`` of every file under ``folder``
    but its ``stage.json`` (what a finished stage records of what it wrote)."""
    folder = Path(folder)
    return {f.relative_to(folder).as_posix(): {"sha256": _sha256(f), "bytes": f.stat().st_size}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != STAGE_FILE}


def _meta_checksum(meta: dict) -> str:
    """The checksum of a stage.json's content (all of it but this field)."""
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _content_digest(value, files: dict) -> str:
    """What a stage's readers see of it: its value and its files' contents. A recomputed
    stage with the same digest changes nothing downstream."""
    blob = json.dumps({"value": value, "files": {k: v["sha256"] for k, v in files.items()}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_damage(path, meta: dict | None, *, key: str, params: dict, code: str,
                 deps: Sequence["StageResult"] = ()) -> str | None:
    """Why the stage folder ``path`` (whose stage.json reads as ``meta``, None when it cannot
    be read) must not be trusted, or None when it is whole: stage.json altered or from before
    checksums, a file missing, truncated, resized or altered, or an input (``deps``) that
    changed since the stage was computed from it."""
    if meta is None:
        return f"{STAGE_FILE} unreadable"
    if not isinstance(meta, dict) or "checksum" not in meta or "files" not in meta:
        return f"{STAGE_FILE} has no checksums (written by an older version)"
    if meta["checksum"] != _meta_checksum(meta):
        return f"{STAGE_FILE} altered (checksum differs)"
    for field, want in (("key", key), ("params", jsonable(params)), ("code", code)):
        if meta.get(field) != want:
            return f"{STAGE_FILE} records another {field}"
    for rel, rec in sorted(meta["files"].items()):
        f = Path(path) / rel
        if not f.is_file():
            return f"{rel} missing"
        size = f.stat().st_size
        if size < rec["bytes"]:
            return f"{rel} truncated ({size} of {rec['bytes']} bytes)"
        if size != rec["bytes"]:
            return f"{rel} altered ({size} bytes, {rec['bytes']} recorded)"
        if _sha256(f) != rec["sha256"]:
            return f"{rel} altered (sha256 differs)"
    inputs = meta.get("inputs", {})
    for d in deps:
        if inputs.get(d.path.name) != d.digest:
            return f"its input {d.path.name} changed since it was computed"
    return None


# ------------------------------------------------------------------------------------------
# One run per folder: an exclusive lock on <out>/.lock
# ------------------------------------------------------------------------------------------
class RunFolderBusy(OSError):
    """Another live run holds the run folder; the message names the folder and the holder."""

    def __str__(self):
        return self.strerror


#: The run folders this process holds: real path -> [lock file descriptor, Pipelines using it].
#: Pipelines of one process share the lock (a notebook or a test may open one folder twice).
_HELD: dict[str, list] = {}


def _lock_holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a run that has not written its name yet"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since "
            f"{info.get('started', '?')}")


def acquire_run_lock(out: Path, *, wait: bool = False,
                     log: Callable[[str], None] = lambda msg: None) -> tuple[str, bool]:
    """Takes the run folder ``out`` for this process (an exclusive ``flock`` on
    ``out/.lock``, holding the pid, host and start time for the message others see). Another
    live run holding it: :class:`RunFolderBusy` naming it, or with ``wait`` a line saying so
    and a wait until it ends. A lock left by a dead run is free (the kernel drops a process's
    locks when it dies). Returns (the folder's key for :func:`release_run_lock`, whether this
    call took it, as opposed to sharing this process's hold)."""
    token = os.path.realpath(out)
    held = _HELD.get(token)
    if held is not None:
        held[1] += 1
        return token, False
    lock_path = Path(out) / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise_write_error(err, lock_path, "run folder lock")
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(lock_path)
            if not wait:
                raise RunFolderBusy(errno.EBUSY, f"run folder '{out}' is in use by another run "
                                    f"({holder}); wait for it, rerun with --wait to start when "
                                    "it ends, or choose another --out") from None
            log(f"waiting for run folder '{out}', in use by another run ({holder})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _HELD[token] = [fd, 1]
    return token, True


def release_run_lock(token: str) -> None:
    """Lets go of this process's hold on a run folder once its last Pipeline closes."""
    held = _HELD.get(token)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[token]
        os.close(held[0])  # closing the descriptor drops the flock


def _remove_temporaries(stages_dir: Path) -> None:
    """Removes the temporary folders a killed run left (only called by the lock's holder,
    so no live run is writing them)."""
    for tmp in stages_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


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
      digest: a hash of its value and its files' contents; the stages computed from it record
        it, and are recomputed when it changes.
      memory: the computing process's resident memory when the stage started and its peak
        while it computed (``{"rss_start_bytes", "peak_rss_bytes"}``,
        :class:`~mam_tf.common.machine.PeakMemory`; None where the OS does not tell, or for a
        stage computed before it was measured).
    """

    name: str
    key: str
    path: Path
    value: Any
    params: dict
    cached: bool
    seconds: float
    digest: str = ""
    memory: dict | None = None

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
      wait: when another live run holds ``out_dir``, wait for it to end instead of raising
        :class:`RunFolderBusy`.
      before_stage: called with no arguments in the process that computes a stage (here, or
        in a task), just before the stage's function: the experiments reset Keras' state
        there (:func:`mam_tf.experiments.base.fresh_keras`), so that a stage's files do not
        depend on the stages its process computed before. It must pickle (a module-level
        function) to go with the Pipeline to a task.

    The Pipeline holds ``out_dir`` (:func:`acquire_run_lock`) until :meth:`close` (or the end
    of a ``with`` block, or of the process).
    """

    def __init__(self, out_dir, experiment: str, *, config: dict | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 code: str = "", recompute: Iterable[str] = (), wait: bool = False,
                 executor=None, before_stage: Callable[[], None] | None = None):
        self.out = Path(out_dir)
        self.stages_dir = self.out / STAGES_DIR
        self.experiment = experiment
        self.config = dict(config or {})
        self.code = str(code)
        self.recompute = frozenset(recompute)
        self.show_progress = bool(progress)
        if log is None:
            log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
        self._log = log
        self._lock_folder(wait)
        self.records: list[dict] = []
        self.started = time.time()
        self._t0 = time.perf_counter()
        self._load_start = load_average()
        self.executor = executor
        self.before_stage = before_stage

    def __getstate__(self):
        # What another process gets: the stage cache's coordinates, no executor, no open
        # files or locks, no output (the sender shows the progress).
        state = {k: v for k, v in self.__dict__.items()
                 if not isinstance(v, (io.IOBase, type(threading.Lock())))}
        state.pop("_release", None)  # the run folder's lock stays with the driver
        state.update(executor=None, records=[], show_progress=False, _log=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._log = _silent
        self._release = _nothing_to_release

    # -- the run folder's lock ----------------------------------------------------------
    def _lock_folder(self, wait: bool) -> None:
        try:
            self.stages_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise_write_error(err, self.stages_dir, f"[{self.experiment}] run folder")
            raise
        token, took = acquire_run_lock(self.out, wait=wait, log=self.log)
        self._release = weakref.finalize(self, release_run_lock, token)
        if took:
            _remove_temporaries(self.stages_dir)

    def close(self) -> None:
        """Lets go of the run folder (another run may then take it)."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- stages -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Prints one progress line, prefixed with the experiment's name."""
        self._log(f"[{self.experiment}] {message}")

    def stage_path(self, name: str, key: str) -> Path:
        return self.stages_dir / f"{name}-{key}"

    def lookup(self, name: str, params: dict, deps: Sequence[StageResult] = (), *,
               label: str | None = None) -> StageResult | None:
        """The stage's result if it is on disk and whole, else None (computes nothing).

        A stage folder that is there but damaged (:func:`stage_damage`: stage.json unreadable,
        altered or without checksums, a file missing, truncated or altered, an input changed
        since) is not trusted: one line names the stage (``label``), the file and why."""
        key = stage_key(name, params, deps, self.code)
        path = self.stage_path(name, key)
        if not path.exists():
            return None
        try:
            meta = read_json(path / STAGE_FILE)
        except FileNotFoundError:
            meta = {}
        except (OSError, ValueError):
            meta = None
        damage = (f"{STAGE_FILE} missing" if meta == {} else
                  stage_damage(path, meta, key=key, params=params, code=self.code, deps=deps))
        if damage is not None:
            self.log(f"{label or name}: {damage}; recomputing")
            return None
        return StageResult(name, key, path, meta.get("value"), meta["params"], True,
                           float(meta.get("seconds", 0.0)),
                           _content_digest(meta.get("value"), meta["files"]), meta.get("memory"))

    def stage(self, name: str, params: dict, compute: Callable[[Path], Any], *,
              deps: Sequence[StageResult] = (), label: str | None = None) -> StageResult:
        """Runs a stage, or reads it back if a run with the same key finished before.

        Args:
          name: the stage's kind (a folder-name-safe word: ``"train"``, ``"prune"``).
          params: every parameter that shapes the result (JSON-able); two calls with equal
            params and deps share one result.
          compute: ``compute(workdir) -> value``: writes any files into ``workdir`` (a fresh,
            empty folder) and returns a JSON-able value (finite numbers only). It runs only
            when the stage is not on disk yet, or is there but damaged.
          deps: the stages whose results ``compute`` reads; their keys are part of this key.
          label: a readable name for progress lines and the manifest (default: ``name``).
        Returns:
          A :class:`StageResult`.
        Raises:
          WriteFailed: the disk is full or the folder refuses writing (nothing of the stage
            is left behind; finished stages are kept).
          ValueError: the value holds a NaN or an infinite number (its key path is named).
        """
        label = label or name
        found = None if name in self.recompute else self.lookup(name, params, deps, label=label)
        if found is not None:
            self.log(f"{label}: read back ({found.path.name}, computed in {found.seconds:.1f} s)")
            self._record(found, label, 0.0)
            return found
        if self.executor is not None:
            return self.executor.submit(self, name, params, compute, deps, label)
        key = stage_key(name, params, deps, self.code)
        final = self.stage_path(name, key)
        self.log(f"{label}: computing ...")
        work = None
        t0 = time.perf_counter()
        try:
            work = Path(tempfile.mkdtemp(dir=self.stages_dir, prefix=f".tmp-{name}-{key}-"))
            kill_point("compute", name)
            if self.before_stage is not None:
                self.before_stage()
            with PeakMemory() as peak:
                value = jsonable(compute(work))
            seconds = time.perf_counter() - t0
            check_finite(value, f"[{self.experiment}] {label}")
            meta = _stage_meta(work, name=name, key=key, label=label, params=params, deps=deps,
                               code=self.code, value=value, seconds=seconds,
                               ran_on=where_am_i(), memory=peak.record())
            write_json(work / STAGE_FILE, meta)
            kill_point("stage-written", name)
            if final.exists():  # a damaged copy, or an identical stage finished meanwhile
                shutil.rmtree(final)
            os.replace(work, final)
        except OSError as err:
            raise_write_error(err, work or self.stages_dir, f"[{self.experiment}] {label}")
            raise
        finally:
            if work is not None and work.exists():
                shutil.rmtree(work, ignore_errors=True)
        self.log(f"{label}: done in {seconds:.1f} s")
        result = StageResult(name, key, final, value, jsonable(params), False, seconds,
                             _content_digest(value, meta["files"]), meta["memory"])
        self._record(result, label, seconds, where_am_i())
        return result

    def _record(self, result: StageResult, label: str, wall: float,
                ran_on: dict | None = None) -> dict:
        record = {"stage": result.name, "label": label, "key": result.key,
                  "cached": result.cached, "seconds": round(result.seconds, 3),
                  "wall_seconds_this_run": round(wall, 3), "ran_on": ran_on,
                  "memory": result.memory}
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
        Imported stages are checked like any other when read (a damaged one is recomputed).
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
                try:
                    shutil.rmtree(tmp)
                    shutil.copytree(stage_dir, tmp)
                    os.replace(tmp, dest)
                except OSError as err:
                    raise_write_error(err, dest, f"[{self.experiment}] merge")
                    raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
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


def _stage_meta(work: Path, *, name, key, label, params, deps, code, value, seconds,
                ran_on=None, memory=None) -> dict:
    """The stage.json of a stage computed into ``work``: what it is, what it was computed
    from (``inputs``: each dependency's digest), its value, its files' checksums and the
    checksum of all that."""
    meta = {
        "name": name, "key": key, "label": label, "params": jsonable(params),
        "deps": [d.key for d in deps], "inputs": {d.path.name: d.digest for d in deps},
        "code": code, "value": value, "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ran_on": ran_on, "memory": memory, "files": file_checksums(work),
    }
    meta["checksum"] = _meta_checksum(meta)
    return meta


def _silent(message: str) -> None:
    pass


def _nothing_to_release() -> None:
    pass


def where_am_i() -> dict:
    """Where a stage is computed: the host name and the process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def machine() -> dict:
    """The machine a run ran on (:func:`mam_tf.common.machine.describe`)."""
    from mam_tf.common.machine import describe

    return describe()


# -- test hook: kill the process at a named point ----------------------------------------------
_kill_counts: dict[str, int] = {}


def kill_point(event: str, stage: str = "") -> None:
    """A test hook (``mam-tf bench kill`` and its tests): SIGKILLs this process at a named point
    when the environment variable ``MAM_TF_KILL_AT`` asks for it; does nothing otherwise.

    ``MAM_TF_KILL_AT=EVENT[/STAGE]:COUNT[+SECONDS]`` kills at the COUNT-th time (from 1) this
    process reaches EVENT (of the stage named STAGE, when given), or SECONDS after it. Events:
    ``compute`` (a stage's function starts), ``stage-written`` (a stage's files and stage.json are
    in its temporary folder, not yet renamed into place), ``json-write`` (a JSON file is written
    to its temporary name, not yet renamed), ``outputs`` (the report and outputs start),
    ``copy`` (an output file is copied to its temporary name, not yet renamed).
    The process's whole group dies when the process leads it (its children with it).
    """
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    count, _, delay = rest.partition("+")
    if target not in (event, f"{event}/{stage}"):
        return
    _kill_counts[target] = _kill_counts.get(target, 0) + 1
    if _kill_counts[target] != int(count):
        return
    if delay:
        timer = threading.Timer(float(delay), _kill_now)
        timer.daemon = True  # a process that ends first is not killed
        timer.start()
    else:
        _kill_now()


def _kill_now() -> None:
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
