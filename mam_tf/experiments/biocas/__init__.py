"""`mam-tf reproduce biocas`: seed 000's compressed-sensing Deep Neural Oracle, MAC vs MAM.

A Deep Neural Oracle (DNO) reads the m measurements ``y = A x`` of an n-sample ECG window and
predicts the support of x in a Symmlet-6 wavelet basis; x is recovered by least squares on that
support (``ecg_data.least_squares_reconstruction``). The oracle is ``m -> 2n -> 2n -> n``
(``mam_tf.models.cs_oracle``) with MAC (Dense) or MAM hidden layers; the MAM oracle is trained
with vanishing contributions (MAC -> MAM blend). Both hidden layers are then pruned to a sweep
of kept fractions: MAM by activation rate (the seed's method), MAC by magnitude and by activation
rate; each point is measured one-shot and after a short fine-tune with the masks held. The
quality is the ARSNR of the reconstruction on held-out windows (mean, min and max over seeds),
compared with the unpruned MAC oracle ("the baseline"). The chosen pruned oracles are converted
to int8 ``.tflite`` (MAM_SPARSE / MAC_SPARSE) and run on the host runtime.

The recipe that keeps the baseline down to 6% of the weights kept (94% pruned; see
docs/experiments/biocas.md and report.md):
selection counts taken on the training set and ranked in ONE list across both hidden layers
(``scope="global"``). Every neuron makes exactly two selections per window whatever its fan-in,
so the counts of the two layers are on one scale, and the ranking leaves the narrow first layer
(m inputs per neuron) about 4x as dense as the wide second one. Pruning each layer to the same
fraction (``scope="layer"``, reported as ``activation_rate_per_layer``) starves the first layer.

Outputs in ``-o/--out`` (default ``runs/biocas-<scale>``): results.json, report.md,
arsnr_vs_remaining.png, reconstruction.png, models/<kind>_seed<k>.keras (the trained, unpruned
oracles), models/*.tflite (deployed), manifest.json and the cached stages (a rerun reads them
back).

The package: :mod:`.config` (the configuration and its scales), :mod:`.stages` (the stages),
:mod:`.results` (aggregation over seeds, the baseline rule), :mod:`.report` (figures,
report.md), :mod:`.cli` (``reproduce biocas``); :mod:`mam_tf.experiments.base` runs them.
"""
from __future__ import annotations

import warnings

from mam_tf.experiments import base
from mam_tf.experiments.biocas.cli import add_command
from mam_tf.experiments.biocas.config import (
    HIDDEN, NAME, RESOURCES, SCALES, SETUP, SWEEPS, TOLERANCE_DB, Config, config_for, method_name,
)
from mam_tf.experiments.biocas.results import min_remaining_keeping_baseline

__all__ = ["Config", "SCALES", "SETUP", "SWEEPS", "HIDDEN", "TOLERANCE_DB", "NAME", "EXPERIMENT",
           "config_for", "run", "method_name", "min_remaining_keeping_baseline", "add_command",
           "run_biocas", "max_pruned_keeping_baseline"]

EXPERIMENT = base.Experiment(NAME, Config, stages=f"{__name__}.stages:run_stages",
                             outputs=f"{__name__}.report:outputs",
                             summary=f"{__name__}.report:summary",
                             code=(__name__,), resources=RESOURCES,
                             cost=f"{__name__}.config:stage_cost")
#: ``run(cfg, out=None, *, progress=True, merge=None, print_fn=print, recompute=())``: runs
#: (or resumes) the experiment into ``out`` (default ``runs/biocas-<scale>``) and returns the
#: results, also written to ``out/results.json`` (:func:`mam_tf.experiments.base.run`).
run = EXPERIMENT.run


def _deprecated(old, new):
    from mam_tf.common.deprecation import MamTfDeprecationWarning

    warnings.warn(f"mam_tf.experiments.biocas.{old} is deprecated; use {new}",
                  MamTfDeprecationWarning, stacklevel=3)


def run_biocas(scale="demo", out=None, seeds=None, merge=None, progress=True, overrides=None):
    """Deprecated: ``run(config_for(scale, seeds=seeds, **overrides), out, merge=merge)``.
    Its results are the new ones (kept fractions under ``remaining``)."""
    _deprecated("run_biocas(scale, ...)", "run(config_for(scale, ...), out, ...)")
    cfg = config_for(scale, seeds=tuple(seeds) if seeds else None, **(overrides or {}))
    return run(cfg, out, progress=progress, merge=merge, print_fn=None)


def max_pruned_keeping_baseline(points, baseline, kind, tolerance=TOLERANCE_DB, unpruned=None):
    """Deprecated: the largest pruned fraction (1 - remaining) of points keyed ``pruned``;
    use :func:`min_remaining_keeping_baseline` on points keyed ``remaining``."""
    _deprecated("max_pruned_keeping_baseline", "min_remaining_keeping_baseline")
    kept = min_remaining_keeping_baseline(
        [{**p, "remaining": round(1.0 - p["pruned"], 10)} for p in points], baseline, kind,
        tolerance, unpruned)
    return None if kept is None else round(1.0 - kept, 10)
