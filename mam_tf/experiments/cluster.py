"""Stages of `mam-tf reproduce` as Ray tasks: ``--ray ADDRESS`` (``--ray local``: a Ray
instance on this machine).

:class:`RayExecutor` is a :class:`~mam_tf.experiments.pipeline.Pipeline` executor. The driver
(the process running ``mam-tf reproduce``) still looks every stage up in the stage cache and
reads finished ones back; a stage to compute becomes a Ray task that waits for the tasks of its
dependencies, and ``Pipeline.stage`` returns at once a :class:`PendingStage` whose ``value``
waits for the task. The experiments ask for every independent stage before they read a value,
so seeds, kinds, fine-tunes and deployments run side by side, each task with the CPUs and
memory its kind declares (``Experiment.resources``) and TensorFlow's intra- and inter-op
threads set to its CPUs, each in a worker process of its own (its memory is its own).

Where results live: the task computes the stage as the serial run does, into
``<out>/stages/`` (a temporary folder renamed into place), so ``--out`` must be a folder every
node sees at the same path (a shared filesystem; ``--ray local`` shares it trivially). The
task returns only the stage's JSON value.

Faults: a task whose worker process or node dies is retried (``max_retries``); a stage that
raises (bad data, a setting that cannot work) fails once with its message, and the run stops
after the stages already running have finished (they stay in the cache). A driver stopped and
started again reads the finished stages back. Every task checks that its node computes with the
driver's code (the code fingerprint of the stage keys) and refuses otherwise.

Ray is imported only here, and only when a run asks for a cluster (the ``[cluster]`` extra).
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

from mam_tf.common import quiet
from mam_tf.experiments import pipeline as pl

__all__ = ["RayExecutor", "PendingStage", "PlanExecutor", "plan_stages", "schedule", "project",
           "plan_text", "start_local", "LOCAL", "DEFAULT_RESOURCES", "MAX_RETRIES"]

#: ``--ray local``: start a Ray instance on this machine (all its CPUs).
LOCAL = "local"
#: What a stage kind not named in ``Experiment.resources`` asks for.
DEFAULT_RESOURCES = {"num_cpus": 1, "memory": 2 * 2**30}
#: Retries of a task whose worker process or node died (never of a stage that raised).
MAX_RETRIES = 3


def _import_ray():
    import ray  # the [cluster] extra; mam_tf.common.extras names it when it is missing

    return ray


def start_local(ray, num_cpus: int | None = None) -> None:
    """``ray.init`` of a Ray instance on this machine (all its usable CPUs by default; no
    dashboard). Ray gives its own processes 30 seconds to start: on a machine whose cores are
    all busy that start can fail ("timed out during startup"); run the command again."""
    from mam_tf.common.machine import cpus_usable

    ray.init(num_cpus=num_cpus or cpus_usable(), include_dashboard=False,
             logging_level="WARNING")


class PendingStage(pl.StageResult):
    """A stage handed to the cluster. ``name``, ``key``, ``path``, ``params`` and ``file()``
    are known at once; ``value``, ``cached`` and ``seconds`` wait for the stage to finish (and
    raise its error if it failed)."""

    # Compared by identity: the dataclass's field comparison would wait for the value.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, executor, name, key, path, params, label, ref):
        self.name, self.key, self.path, self.params = name, key, Path(path), params
        self.label, self.ref = label, ref
        self._executor = executor
        self._result: pl.StageResult | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def result(self) -> pl.StageResult:
        """The finished stage (waits for it)."""
        if not self.done:
            self._executor._until(lambda: self.done)
        if self._error is not None:
            self._executor._fail(self)
        return self._result

    value = property(lambda self: self.result().value)
    cached = property(lambda self: self.result().cached)
    seconds = property(lambda self: self.result().seconds)
    digest = property(lambda self: self.result().digest)
    memory = property(lambda self: self.result().memory)

    def __reduce__(self):
        # Sent to a task (a dependency, or inside a stage's function): its coordinates, and
        # the object that resolves to the finished stage.
        if self._result is not None:
            return (pl.StageResult, tuple(self._result.__dict__[f] for f in _FIELDS))
        return (_RemoteStage, (self.name, self.key, self.path, self.params, self.ref))

    def __repr__(self):
        state = "done" if self.done else "pending"
        return f"PendingStage({self.name!r}, {self.key!r}, {state})"


#: What a finished stage is made of (sent back from a task, and to one).
_FIELDS = tuple(f.name for f in dataclasses.fields(pl.StageResult))


class _RemoteStage(pl.StageResult):
    """A :class:`PendingStage` inside a task: the value is fetched if the task reads it."""

    # Compared by identity: the dataclass's field comparison would wait for the value.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, name, key, path, params, ref):
        self.name, self.key, self.path, self.params, self._ref = name, key, path, params, ref

    def _get(self):
        return _import_ray().get(self._ref)["result"]

    value = property(lambda self: self._get().value)
    cached = property(lambda self: self._get().cached)
    seconds = property(lambda self: self._get().seconds)
    digest = property(lambda self: self._get().digest)
    memory = property(lambda self: self._get().memory)


# ------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------
_CODE_SEEN: dict = {}


def _check_code(modules: tuple, expected: str) -> None:
    """Refuses to compute on a node whose sources differ from the driver's (the fingerprint
    of :func:`~mam_tf.experiments.pipeline.experiment_code`, as the driver's stage keys)."""
    if not modules:
        return
    if modules not in _CODE_SEEN:
        _CODE_SEEN[modules] = pl.experiment_code(modules)
    here = _CODE_SEEN[modules]
    if here != expected:
        raise ValueError(f"node {pl.where_am_i()['host']} runs mam-tf code {here}, the driver "
                         f"{expected}: install the same mam-tf on every node")


def _run_stage(pipe, name, params, compute, deps, label, modules, board, quiet_tf, *_ready):
    """Computes one stage where Ray placed it (``_ready``: the finished dependencies, there
    only so that Ray starts this after them). ``quiet_tf``: keep TensorFlow's start-up noise
    off the worker's stderr (which Ray shows on the driver), as the driver does."""
    import ray

    from mam_tf.common import quiet

    ran_on = {**pl.where_am_i(), "node": ray.get_runtime_context().get_node_id()}
    board.started.remote(pl.stage_key(name, params, deps, pipe.code), ran_on)
    _check_code(modules, pipe.code)
    if not pipe.stages_dir.is_dir():
        raise FileNotFoundError(f"node {ran_on['host']} does not see the run folder "
                                f"'{pipe.out}': --ray needs --out on a filesystem every node "
                                "shares, at the same path")
    t0 = time.perf_counter()
    if quiet_tf:
        quiet.quiet_tensorflow()
    with quiet.filtered_stderr():
        result = pipe.stage(name, params, compute, deps=deps, label=label)
    return {"result": pl.StageResult(*(getattr(result, f) for f in _FIELDS)),
            "ran_on": ran_on, "wall": time.perf_counter() - t0}


class _Board:
    """Which tasks have started, and where (a Ray actor the tasks tell)."""

    def __init__(self):
        self.running = {}

    def started(self, key, ran_on):
        self.running[key] = (time.time(), ran_on)

    def snapshot(self):
        return dict(self.running)


# ------------------------------------------------------------------------------------------
# The executor
# ------------------------------------------------------------------------------------------
class RayExecutor:
    """Runs a Pipeline's stages as Ray tasks.

    Args:
      address: a Ray cluster's address (``ray://host:10001``, ``host:6379``, ``auto``), or
        ``"local"`` to start Ray on this machine with all its CPUs.
      resources: per stage name, what one task asks for: ``{"num_cpus": n, "memory": bytes}``
        (others get :data:`DEFAULT_RESOURCES`); TensorFlow's threads follow ``num_cpus``.
      task_cpus: every task's ``num_cpus`` instead (``--task-cpus``); a node of the cluster
        must have that many CPUs.
      code_modules: the modules of the code fingerprint (a node with other sources refuses).
      progress: show the progress view (stages done, running, waiting, an ETA) on stderr.
      max_retries: retries of a task whose worker or node died.
    """

    def __init__(self, address: str, *, resources: dict | None = None,
                 code_modules: tuple = (), progress: bool = True,
                 max_retries: int = MAX_RETRIES, task_cpus: int | None = None):
        ray = _import_ray()
        self.address = str(address)
        self.resources = {k: {**DEFAULT_RESOURCES, **v} for k, v in (resources or {}).items()}
        self.task_cpus = None if task_cpus is None else int(task_cpus)
        self.code_modules = tuple(code_modules)
        self.max_retries = int(max_retries)
        self.show_progress = bool(progress)
        self._owns_ray = False
        if not ray.is_initialized():
            self._owns_ray = True
            try:
                if self.address == LOCAL:
                    start_local(ray)
                else:
                    ray.init(address=self.address, logging_level="WARNING")
            except ConnectionError as err:
                raise ConnectionError(f"--ray {self.address}: no Ray cluster there ({err})") \
                    from None
        self.cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if self.task_cpus is not None:
            self._check_task_cpus(ray)
        self._board = ray.remote(num_cpus=0)(_Board).remote()
        # A fresh worker process for every stage (max_calls=1): a reused one keeps what
        # TensorFlow and Keras held for the stages it computed before (its resident memory
        # grew by 0.1-0.3 GiB a stage), so a stage's memory would depend on its worker's past.
        self._task = ray.remote(max_calls=1)(_run_stage)
        self.handles: list[PendingStage] = []
        self._pipe = None
        self._bar = None
        self._last_view = 0.0
        self._running: dict = {}
        self._failed: list[PendingStage] = []

    def _check_task_cpus(self, ray) -> None:
        """A task that asks for more CPUs than any node has would wait forever: refused."""
        largest = max((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes()
                       if n.get("Alive")), default=0.0)
        if self.task_cpus > largest:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
            raise ValueError(f"--task-cpus {self.task_cpus}: no node of the Ray cluster at "
                             f"{self.address} has that many CPUs (the largest has "
                             f"{largest:g})")

    # -- submitting ---------------------------------------------------------------------
    def needs(self, name: str) -> dict:
        """What a task of stage ``name`` asks for."""
        need = self.resources.get(name, dict(DEFAULT_RESOURCES))
        return need if self.task_cpus is None else {**need, "num_cpus": self.task_cpus}

    def submit(self, pipe, name, params, compute, deps, label) -> PendingStage:
        """Sends the stage to the cluster (the pipeline has not found it on disk)."""
        self._pipe = pipe
        need = self.needs(name)
        cpus = need["num_cpus"]
        threads = str(max(1, int(round(cpus))))
        env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
               "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2"}
        deps = list(deps)
        waits = [d.ref for d in deps if isinstance(d, PendingStage) and not d.done]
        ref = self._task.options(
            num_cpus=cpus, memory=need.get("memory"), max_retries=self.max_retries,
            retry_exceptions=False, runtime_env={"env_vars": env}, name=f"{name}",
        ).remote(pipe, name, params, compute, deps, label,
                 self.code_modules, self._board,
                 quiet.is_enabled(), *waits)
        key = pl.stage_key(name, params, deps, pipe.code)
        handle = PendingStage(self, name, key, pipe.stage_path(name, key), pl.jsonable(params),
                              label, ref)
        self.handles.append(handle)
        self._view(force=True)
        return handle

    # -- waiting ------------------------------------------------------------------------
    def wait(self) -> None:
        """Waits for every stage submitted; raises the first failure's error."""
        self._until(lambda: all(h.done for h in self.handles))
        if self._failed:
            self._fail(self._failed[0])
        self._close_bar()

    def _until(self, condition) -> None:
        ray = _import_ray()
        while not condition():
            pending = {h.ref: h for h in self.handles if not h.done}
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                self._finish(pending[ref], ray)
            self._view()

    def _finish(self, handle: PendingStage, ray) -> None:
        try:
            out = ray.get(handle.ref)
        except ray.exceptions.RayTaskError as err:
            handle._error = err
            self._failed.append(handle)
            self._say(f"{handle.label}: failed: {_one_line(_cause(err))}")
            return
        except ray.exceptions.RayError as err:  # the retries of a dying worker ran out
            handle._error = err
            self._failed.append(handle)
            self._say(f"{handle.label}: failed: {_one_line(err)}")
            return
        handle._result = result = out["result"]
        where = out["ran_on"]
        self._running.pop(handle.key, None)
        if self._pipe is not None:
            self._pipe._record(result, handle.label, out["wall"], where)
        how = "read back" if result.cached else f"done in {result.seconds:.1f} s"
        self._say(f"{handle.label}: {how} on {where['host']} (pid {where['pid']})")

    def _fail(self, handle: PendingStage):
        """Raises a failed stage's error, once the stages still running have finished (they
        are kept in the cache)."""
        running = [h for h in self.handles if not h.done]
        if running:
            self._say(f"{handle.label} failed; waiting for {len(running)} other stage(s) to "
                      "finish before stopping")
            self._until(lambda: all(h.done for h in self.handles))
        self._close_bar()
        err = handle._error
        cause = _cause(err)
        if isinstance(cause, (ValueError, OSError)):  # a user error: its own one line
            raise cause.with_traceback(None) from None
        raise err

    # -- the progress view --------------------------------------------------------------
    def _say(self, message: str) -> None:
        if not self.show_progress or self._pipe is None:
            return
        if self._bar is not None:
            self._bar.clear()
        self._pipe.log(message)
        self._view(force=True)

    def counts(self) -> dict:
        """Stages done, running and waiting (asked for, not started), and the seconds left:
        an estimate from the finished stages of each kind (computed or read back in this run),
        their CPU-seconds spread over the cluster's CPUs; ``eta_unknown`` stages are of a kind
        none of which has finished yet (left out of the estimate)."""
        ray = _import_ray()
        try:
            started = ray.get(self._board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001  (the view must not stop the run)
            started = {}
        now = time.time()
        done = [h for h in self.handles if h.done]
        running = [h for h in self.handles if not h.done and h.key in started]
        waiting = [h for h in self.handles if not h.done and h.key not in started]
        known: dict = {}
        for r in (self._pipe.records if self._pipe is not None else []):
            if r["seconds"]:
                known.setdefault(r["stage"], []).append(r["seconds"])
        eta, unknown = 0.0, 0
        for h in running + waiting:
            if h.name not in known:
                unknown += 1
                continue
            est = sum(known[h.name]) / len(known[h.name])
            if h in running:
                est = max(est - (now - started[h.key][0]), 0.0)
            eta += est * self.needs(h.name)["num_cpus"]
        eta /= max(self.cluster_cpus, 1.0)
        return {"done": len(done), "running": len(running), "waiting": len(waiting),
                "eta_seconds": eta, "eta_unknown": unknown}

    def _view(self, force: bool = False) -> None:
        if not self.show_progress or not self.handles:
            return
        now = time.monotonic()
        interval = 1.0 if sys.stderr.isatty() else 30.0
        if not force and now - self._last_view < interval:
            return
        self._last_view = now
        c = self.counts()
        if self._bar is None:
            from tqdm.auto import tqdm

            name = self._pipe.experiment if self._pipe is not None else "cluster"
            self._bar = tqdm(total=len(self.handles), desc=f"[{name}] stages on Ray",
                             bar_format="{desc}: {n}/{total} done |{bar:20}| {unit}",
                             leave=False, mininterval=0, file=sys.stderr)
        eta = (f"~{_duration(c['eta_seconds'])}" if not c["eta_unknown"] else
               f">{_duration(c['eta_seconds'])} (+{c['eta_unknown']} of a kind not timed yet)"
               if c["eta_seconds"] else "? (no stage of a waiting kind has finished yet)")
        self._bar.total = len(self.handles)
        self._bar.n = c["done"]
        self._bar.unit = f"{c['running']} running, {c['waiting']} waiting, ETA {eta}"
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Ends the progress view, and the Ray instance if this executor started it."""
        self._close_bar()
        if self._owns_ray:
            _import_ray().shutdown()
            self._owns_ray = False


def _cause(err):
    return getattr(err, "cause", None) or err


def _one_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if isinstance(err, Exception) and text else type(err).__name__


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------
# Projection (``--plan RUN_DIR``): how long a run would take on a cluster
# ------------------------------------------------------------------------------------------
class _Planned(pl.StageResult):
    """A stage the plan asks for: its coordinates only."""

    # Compared by identity: the dataclass's field comparison would wait for the value.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, name, key, path, params, label, deps):
        self.name, self.key, self.path, self.params = name, key, Path(path), params
        self.label, self.deps = label, deps

    def _stop(self):
        raise _PlanEnds

    value = property(lambda self: self._stop())
    cached = property(lambda self: self._stop())
    seconds = property(lambda self: self._stop())


class _PlanEnds(Exception):
    """The experiment reads a value: the stages asked for after it depend on results."""


class PlanExecutor:
    """Records the stages an experiment asks for, computing none: the plan ends where the
    experiment first reads a value (mwscas reads none before it has asked for every stage;
    biocas chooses what to deploy from the sweeps' results, so its deployments are not in)."""

    def __init__(self):
        self.stages: list[_Planned] = []

    def submit(self, pipe, name, params, compute, deps, label):
        key = pl.stage_key(name, params, deps, pipe.code)
        st = _Planned(name, key, pipe.stage_path(name, key), pl.jsonable(params), label,
                      [d.key for d in deps])
        self.stages.append(st)
        return st

    def wait(self):
        pass


def plan_stages(exp, cfg) -> list:
    """The stages ``exp`` asks for with ``cfg`` (name, key, label, dependency keys)."""
    import tempfile

    ex = PlanExecutor()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = pl.Pipeline(tmp, exp.name, config=cfg.as_dict(), progress=False,
                           code="plan", executor=ex)
        try:
            exp.part("stages")(cfg, pipe)
        except _PlanEnds:
            pass
    return ex.stages


def schedule(stages, seconds, cpus_of, nodes: int, cpus_per_node: int) -> float:
    """The makespan of ``stages`` (in the order asked for, each after its dependencies) on
    ``nodes`` nodes of ``cpus_per_node`` CPUs, greedily: a stage starts as soon as its
    dependencies are done and a node has its CPUs free. ``seconds(stage)``, ``cpus_of(stage)``."""
    import heapq

    free = [float(cpus_per_node)] * nodes
    finish: dict = {}
    running: list = []  # (end, node, cpus)
    todo = list(stages)
    now = 0.0
    while todo:
        started = False
        for st in list(todo):
            if not all(k in finish and finish[k] <= now for k in st.deps):
                continue
            need = min(float(cpus_of(st)), float(cpus_per_node))
            node = next((i for i in range(nodes) if free[i] >= need), None)
            if node is None:
                continue
            free[node] -= need
            end = now + seconds(st)
            finish[st.key] = end
            heapq.heappush(running, (end, node, need))
            todo.remove(st)
            started = True
        if not started:
            if not running:
                raise ValueError("plan: a stage depends on a stage that is not planned")
            end, node, need = heapq.heappop(running)
            now = end
            free[node] += need
    return max(finish.values(), default=0.0)


def project(exp, cfg, measured_dir, nodes: int, cpus_per_node: int,
            task_cpus: int | None = None) -> dict:
    """A projection of running ``exp`` with ``cfg`` on ``nodes`` x ``cpus_per_node`` CPUs from
    a finished run's per-stage times (``measured_dir/manifest.json``), each scaled by
    ``exp.cost`` (the work of a stage kind at the target config over the measured one).
    ``task_cpus``: every stage takes that many CPUs (``--task-cpus``) instead of its kind's
    declaration; the stage times are still the measured ones."""
    path = Path(measured_dir) / pl.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"--plan: '{measured_dir}' has no {pl.MANIFEST} (not a "
                                "finished run folder)")
    manifest = pl.read_json(path)
    if manifest.get("experiment") != exp.name:
        raise ValueError(f"--plan: '{measured_dir}' is a {manifest.get('experiment')!r} run, "
                         f"not {exp.name!r}")
    measured_cfg = exp.config(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in manifest["config"].items()})
    per_kind: dict = {}
    peaks: dict = {}
    for r in manifest["stages"]:
        if r.get("seconds"):
            per_kind.setdefault(r["stage"], []).append(float(r["seconds"]))
        if (r.get("memory") or {}).get("peak_rss_bytes"):
            peaks[r["stage"]] = max(peaks.get(r["stage"], 0), r["memory"]["peak_rss_bytes"])
    stages = plan_stages(exp, cfg)
    if exp.cost is None and manifest["config"] != cfg.as_dict():
        raise ValueError(f"--plan: {exp.name} has no cost model; it projects only the "
                         f"measured configuration (scale {manifest['config'].get('scale')!r})")
    cost = exp.part("cost") if exp.cost else (lambda c, name: 1.0)
    missing = sorted({s.name for s in stages} - set(per_kind))
    if missing:
        raise ValueError(f"--plan: '{measured_dir}' has no measured {missing[0]!r} stage")

    def seconds(st):
        return statistics.median(per_kind[st.name]) * cost(cfg, st.name) / cost(
            measured_cfg, st.name)

    def declared(name):
        return {**DEFAULT_RESOURCES, **exp.resources.get(name, {})}

    def cpus_of(st):
        if task_cpus is not None:
            return task_cpus
        return declared(st.name)["num_cpus"]

    kinds = {}
    for st in stages:
        k = kinds.setdefault(st.name, {"stages": 0, "measured_seconds": statistics.median(
            per_kind[st.name]), "projected_seconds": seconds(st),
            "peak_rss_bytes": peaks.get(st.name), "memory": declared(st.name)["memory"]})
        k["stages"] += 1
    serial = sum(seconds(st) for st in stages)
    makespan = schedule(stages, seconds, cpus_of, nodes, cpus_per_node)
    # The longest chain of dependent stages: no number of machines makes a run shorter.
    chain: dict = {}
    for st in stages:
        chain[st.key] = seconds(st) + max((chain[k] for k in st.deps if k in chain),
                                          default=0.0)
    return {"experiment": exp.name, "scale": cfg.scale, "measured": str(measured_dir),
            "measured_scale": manifest["config"].get("scale"), "nodes": nodes,
            "cpus_per_node": cpus_per_node, "stages": len(stages), "kinds": kinds,
            "serial_seconds": serial, "makespan_seconds": makespan,
            "critical_path_seconds": max(chain.values(), default=0.0),
            "measured_loadavg": [manifest.get("loadavg_start"), manifest.get("loadavg_end")]}


def plan_text(p: dict) -> str:
    """The projection as the lines ``--plan`` prints."""
    lines = [f"PROJECTION (not a measurement): {p['experiment']} at scale {p['scale']} on "
             f"{p['nodes']} node(s) x {p['cpus_per_node']} CPUs, from the stage times of "
             f"{p['measured']} (scale {p['measured_scale']}, load average "
             f"{p['measured_loadavg'][0]} at its start)",
             f"{'stage':<12}{'count':>6}{'measured s':>12}{'projected s':>14}"
             f"{'peak MiB':>10}{'declared MiB':>14}"]
    over = []
    for name, k in p["kinds"].items():
        peak = k.get("peak_rss_bytes")
        lines.append(f"{name:<12}{k['stages']:>6}{k['measured_seconds']:>12.1f}"
                     f"{k['projected_seconds']:>14.0f}"
                     f"{'-' if peak is None else f'{peak / 2**20:.0f}':>10}"
                     f"{k['memory'] / 2**20:>14.0f}")
        if peak is not None and peak > k["memory"]:
            over.append(name)
    lines += [f"{p['stages']} stages: {_duration(p['serial_seconds'])} one after another, "
              f"{_duration(p['makespan_seconds'])} on the cluster (longest chain of dependent "
              f"stages {_duration(p['critical_path_seconds'])})",
              "Assumes each stage runs on its declared CPUs as fast as measured, times scaling "
              "with the work of the target scale, and no time to move files. peak MiB: the "
              "largest resident memory of a process computing a stage of that kind in the "
              "measured run (at its scale; docs/cluster.md projects it to others)."]
    if over:
        lines.append(f"WARNING: measured peaks above the memory declared for {', '.join(over)}"
                     ": Ray may place too many of them on one node (raise RESOURCES)")
    return "\n".join(lines)
