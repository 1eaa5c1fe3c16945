"""The experiment base: one config type, one ``run``, one merge, one output layout.

An experiment (a paper's reproduction) is a package of this folder holding:

* a config, a dataclass deriving from :class:`ExperimentConfig` with its scale presets in
  ``SCALES``; ``config_for(scale, **overrides)`` is :meth:`ExperimentConfig.for_scale`;
* its stages: ``stages(cfg, pipeline) -> (results, context)`` runs (or reads back) every
  stage of :mod:`.pipeline` and returns the JSON results and whatever its outputs need;
* its outputs: ``outputs(cfg, out, results, context)`` writes the figures (:mod:`.report`),
  the models and ``report.md``; ``summary(cfg, results) -> str`` is what the command prints;
* an :class:`Experiment` naming those (as ``"module:function"`` strings, imported when the run
  starts, so that building the command line loads no TensorFlow), ``run = EXPERIMENT.run``,
  and ``add_command`` built on :func:`add_parser`.

:func:`run` does the rest the same way for every experiment: the output folder
(``runs/<experiment>-<scale>`` by default), the stages' code fingerprint (the package version
and a hash of the sources the experiment names in ``Experiment.code``), ``--merge`` (run
folders of the same scale: their ``results.json`` gives their seeds, their ``stages/`` are
imported), ``results.json`` (``experiment``, ``scale``, ``seeds``, ``config``, ``code`` and the
experiment's own keys) and ``manifest.json``. Records in ``results.json`` spell the kept fraction
``remaining`` (in (0, 1]), the training seed ``seed``, the layer kind ``kind`` (``mac`` or
``mam``) and the pruning method ``method`` (docs/vocabulary.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from mam_tf.experiments import pipeline as pl

__all__ = ["ExperimentConfig", "Experiment", "run", "default_out", "merged_seeds",
           "parse_fractions", "add_parser", "copy_file", "fit_progress", "fit_callbacks", "RESULTS"]

RESULTS = "results.json"
#: The modules every experiment's stages run on: a change in them recomputes its stages.
BASE_CODE = ("mam_tf.experiments.base", "mam_tf.experiments.pipeline", "mam_tf.train",
             "mam_tf.deploy", "mam_tf.models", "mam_tf.common", "ecg_data")


@dataclasses.dataclass
class ExperimentConfig:
    """What shapes a run. A subclass adds its fields (with the ``demo`` values as defaults)
    and its presets: ``SCALES = {"tiny": {...}, "demo": {...}, "small": {...}, "paper": {...}}``,
    each a dict of the fields that differ from the defaults; ``EXPERIMENT`` names it in errors.
    """

    EXPERIMENT: ClassVar[str] = "experiment"
    SCALES: ClassVar[dict] = {}

    scale: str = "demo"
    seeds: tuple = (0,)

    @classmethod
    def for_scale(cls, scale: str, **overrides):
        """The config of ``scale`` with ``overrides`` (None values ignored), checked."""
        if scale not in cls.SCALES:
            raise ValueError(f"{cls.EXPERIMENT}: scale is {scale!r}; must be one of "
                             f"{tuple(cls.SCALES)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"scale"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"{cls.EXPERIMENT}: unknown setting {unknown[0]!r}; settings are "
                             f"{sorted(names)}")
        fields = {**cls.SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(scale=scale, **fields)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raises ValueError naming a setting that cannot work (a subclass adds its rules)."""
        if any(int(s) < 0 for s in self.seeds):
            raise ValueError(f"{self.EXPERIMENT}: seeds are >= 0, got {list(self.seeds)}")

    def replace(self, **changes):
        """A copy with ``changes``, checked."""
        cfg = dataclasses.replace(self, **changes)
        cfg.check()
        return cfg

    def as_dict(self) -> dict:
        """The fields as JSON values (what results.json and manifest.json hold)."""
        return pl.jsonable(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One paper's reproduction, as :func:`run` drives it (see the module's docstring).

    ``stages``, ``outputs`` and ``summary`` are functions or ``"module:function"`` names."""

    name: str
    config: type
    stages: Callable[[Any, pl.Pipeline], tuple[dict, Any]] | str
    outputs: Callable[[Any, Path, dict, Any], None] | str
    summary: Callable[[Any, dict], str] | str
    #: Its own modules (the package) and any it runs on beyond :data:`BASE_CODE`.
    code: tuple = ()
    #: On a cluster (``--ray``): what one task of each stage kind asks for, ``{stage name:
    #: {"num_cpus": n, "memory": bytes}}`` (:data:`mam_tf.experiments.cluster.DEFAULT_RESOURCES`
    #: for the others).
    resources: dict = dataclasses.field(default_factory=dict)
    #: ``cost(cfg, stage name) -> float``: the work of one stage of that kind at ``cfg`` in
    #: any unit (``--plan`` scales measured stage times by its ratios); None: unknown.
    cost: Callable[[Any, str], float] | str | None = None

    def code_modules(self) -> tuple:
        return BASE_CODE + tuple(self.code)

    def code_fingerprint(self) -> str:
        """Its modules, :data:`BASE_CODE` and the C sources of ``tflm_ops/``
        (:func:`~mam_tf.experiments.pipeline.experiment_code`)."""
        return pl.experiment_code(self.code_modules())

    def part(self, name: str) -> Callable:
        """``stages``, ``outputs`` or ``summary`` as a function (imported if named)."""
        fn = getattr(self, name)
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn

    def run(self, cfg, out=None, *, progress: bool = True, merge=None, print_fn=print,
            recompute: Sequence[str] = (), wait: bool = False, ray: str | None = None,
            task_cpus: int | None = None) -> dict:
        """Runs (or resumes) the experiment into ``out`` (default
        ``runs/<experiment>-<scale>``); returns the results, also written to
        ``out/results.json``. See :func:`run`."""
        return run(self, cfg, out, progress=progress, merge=merge, print_fn=print_fn,
                   recompute=recompute, wait=wait, ray=ray, task_cpus=task_cpus)


def default_out(experiment: str, scale: str) -> Path:
    """Where a run writes when no ``out`` is given: ``runs/<experiment>-<scale>``."""
    return Path("runs") / f"{experiment}-{scale}"


def merged_seeds(experiment: str, scale: str, dirs: Sequence) -> list[int]:
    """The seeds of finished run folders, read from their results.json; each must be a run of
    ``experiment`` at ``scale``."""
    seeds: set[int] = set()
    for d in dirs:
        path = Path(d) / RESULTS
        if not path.is_file():
            raise FileNotFoundError(f"{experiment} --merge: '{d}' has no {RESULTS} (not a "
                                    "finished run folder)")
        other = pl.read_json(path)
        if other.get("experiment") != experiment or other.get("scale") != scale:
            raise ValueError(f"{experiment} --merge: '{d}' is a {other.get('experiment')!r} run "
                             f"at scale {other.get('scale')!r}, this one {experiment!r} at "
                             f"{scale!r}")
        seeds.update(int(s) for s in other.get("seeds", []))
    return sorted(seeds)


def run(exp: Experiment, cfg, out=None, *, progress: bool = True, merge=None,
        print_fn=print, recompute: Sequence[str] = (), wait: bool = False,
        ray: str | None = None, task_cpus: int | None = None) -> dict:
    """Runs (or resumes) ``exp`` with ``cfg`` into ``out`` (default
    ``runs/<experiment>-<scale>``); returns the results, also written to ``out/results.json``.

    ``merge``: run folders of the same experiment and scale (other seeds, other machines):
    their finished stages are imported and their seeds added to ``cfg.seeds``.
    ``recompute``: stage names computed again even when on disk. ``print_fn``: where the
    summary goes (None: nowhere). ``wait``: when another run is using ``out``, wait for it
    instead of stopping (:class:`~mam_tf.experiments.pipeline.RunFolderBusy`).

    The run holds ``out`` from start to end; results, figures and models are written
    atomically and only with finite numbers; a full disk stops it with
    :class:`~mam_tf.experiments.pipeline.WriteFailed` naming the path. ``ray``: a Ray
    cluster's address, or ``"local"``: the stages run there as tasks, side by side where they
    do not depend on each other (:mod:`mam_tf.experiments.cluster`; ``out`` must be on a
    filesystem every node sees). ``task_cpus``: every task asks for that many CPUs and
    computes with as many TensorFlow threads, whatever its kind declares (with the serial
    run's thread count, the serial run's numbers).
    """
    if not isinstance(cfg, exp.config):
        raise TypeError(f"{exp.name}: run needs a {exp.config.__name__} (config_for(scale, "
                        f"...)), got {type(cfg).__name__}")
    out = Path(out) if out is not None else default_out(exp.name, cfg.scale)
    if merge:
        seeds = sorted(set(int(s) for s in cfg.seeds) | set(merged_seeds(exp.name, cfg.scale,
                                                                         merge)))
        cfg = cfg.replace(seeds=tuple(seeds))
    if not cfg.seeds:
        raise ValueError(f"{exp.name}: no seeds to run (give --seeds, or --merge run folders)")
    if task_cpus is not None and ray is None:
        raise ValueError(f"{exp.name}: --task-cpus {task_cpus} sets the CPUs of Ray tasks; it "
                         "needs --ray (or --plan)")
    code = exp.code_fingerprint()
    executor = None
    if ray is not None:
        from mam_tf.experiments.cluster import RayExecutor

        out = out.resolve()  # the tasks run in other folders, maybe on other machines
        executor = RayExecutor(ray, resources=exp.resources, code_modules=exp.code_modules(),
                               progress=progress, task_cpus=task_cpus)
    try:
        return _run(exp, cfg, out, code, executor, progress, merge, print_fn, recompute, wait)
    finally:
        if executor is not None:
            executor.close()


def _run(exp, cfg, out, code, executor, progress, merge, print_fn, recompute, wait):
    with pl.Pipeline(out, exp.name, config=cfg.as_dict(), progress=progress, code=code,
                     recompute=recompute, wait=wait, executor=executor,
                     before_stage=fresh_keras) as pipe:
        if merge:
            pipe.import_stages(merge)
        own, context = exp.part("stages")(cfg, pipe)
        pipe.wait()
        results = {"experiment": exp.name, "scale": cfg.scale, "seeds": list(cfg.seeds),
                   "config": cfg.as_dict(), "code": code, **own}
        pl.write_json(out / RESULTS, results)
        pl.kill_point("outputs")
        try:
            exp.part("outputs")(cfg, out, results, context)
        except OSError as err:
            pl.raise_write_error(err, out, f"[{exp.name}] outputs")
            raise
        pipe.write_manifest({"outputs": sorted(
            str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()
            and pl.STAGES_DIR not in f.relative_to(out).parts
            and f.name not in (pl.MANIFEST, pl.LOCK_FILE))})
    if print_fn is not None:
        print_fn(exp.part("summary")(cfg, results))
        print_fn(f"\nwrote {out / 'report.md'}, {RESULTS}, figures and models "
                 f"({pipe.elapsed():.0f} s, {len(pipe.computed)} stages computed)")
    return results


def fresh_keras() -> None:
    """Keras' process-wide state back to a new process's: the counters that number layer
    names (``quantize_layer``, ``quantize_layer_1``, ...; the tensor names of a ``.tflite``
    carry them) and the graph Keras keeps. Called before every stage a process computes, so
    that a stage's files are the same whether its process computed other stages before (a
    serial run) or none (a Ray task in a fresh worker). Does nothing before Keras is imported
    (and imports nothing)."""
    keras = sys.modules.get("tf_keras")
    if keras is not None:
        keras.backend.clear_session()


def copy_file(src, dest) -> Path:
    """Copies ``src`` to ``dest`` through a temporary file and a rename (never half a file)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    pl.kill_point("copy", dest.name)
    os.replace(tmp, dest)
    return dest


def fit_progress(progress: bool, epochs: int, desc: str) -> list:
    """Keras callbacks showing a training's progress (a tqdm bar over the epochs), or none."""
    if not progress:
        return []
    from tqdm.keras import TqdmCallback

    return [TqdmCallback(epochs=epochs, verbose=0, desc=desc, leave=False)]


def fit_callbacks(experiment: str, progress: bool, epochs: int, desc: str) -> list:
    """The callbacks of a tf_keras training in a stage: a stop at a NaN or infinite loss
    naming ``experiment`` and ``desc`` (the stage and seed), and :func:`fit_progress`."""
    from mam_tf.train.divergence import StopOnDivergence

    return [StopOnDivergence(f"{experiment} {desc}"), *fit_progress(progress, epochs, desc)]


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def parse_fractions(flag: str):
    """An argparse type for a list of kept fractions: ``"0.05,0.02"`` -> (0.05, 0.02);
    ``"none"`` -> (). Values above 1 are the old percent spelling (``5,2``): read as percent,
    with a deprecation line on stderr."""
    def parse(text: str) -> tuple:
        if text.strip().lower() == "none":
            return ()
        try:
            values = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            values = []
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(
                f"{flag} is {text!r}; give kept fractions like 0.05,0.02 or 'none'")
        if any(v > 1 for v in values):
            print(f"mam-tf: {flag} {text} reads as percent; percent is deprecated, give the "
                  f"kept fractions ({','.join(f'{v / 100:g}' for v in values)})",
                  file=sys.stderr)
            values = [round(v / 100, 10) for v in values]
        return tuple(values)

    return parse


def _command(exp: Experiment, overrides: Callable[[argparse.Namespace], dict]):
    def cmd(args) -> int:
        if args.plan:
            from mam_tf.experiments import cluster

            nodes, cpus = args.cluster
            cfg = exp.config.for_scale(args.scale, seeds=tuple(args.seeds) if args.seeds
                                       else None, **overrides(args))
            print(cluster.plan_text(cluster.project(exp, cfg, args.plan, nodes, cpus,
                                                    task_cpus=args.task_cpus)))
            return 0
        from mam_tf.train.compat import tf

        tf.get_logger().setLevel("ERROR")  # retracing / AutoGraph notices drown the progress
        # With --merge and no --seeds, the merged runs' seeds are the run's seeds.
        seeds = tuple(args.seeds) if args.seeds else (() if args.merge else None)
        cfg = exp.config.for_scale(args.scale, seeds=seeds, **overrides(args))
        run(exp, cfg, args.out, progress=not args.no_progress, merge=args.merge,
            recompute=args.recompute or (), wait=args.wait, ray=args.ray,
            task_cpus=args.task_cpus)
        return 0

    return cmd


def add_parser(subparsers, common, exp: Experiment, *, help: str, description: str,
               overrides: Callable[[argparse.Namespace], dict] = lambda args: {},
               epilog: str | None = None) -> argparse.ArgumentParser:
    """Adds ``reproduce <experiment>`` (``common``: the shared options' parent parser); the
    experiment adds its own options to the returned parser and maps them to config fields with
    ``overrides(args) -> {field: value or None}``."""
    p = subparsers.add_parser(exp.name, parents=[common], help=help, description=description,
                              epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_command(exp, overrides))
    return p
