"""`mam-tf reproduce transformer`: MAMDense as the MLP of a small transformer encoder block.

A transformer encoder block (token projection, multi-head self-attention, LayerNorm, an MLP,
average pooling, a classifier: :func:`mam_tf.models.token_transformer`) learns a task with a
dependency across tokens (:mod:`.task`: count how often the first token's symbol repeats). Its
MLP is MAC (Dense) or MAM (MAMDense, trained with vanishing contributions); both are pruned by
magnitude to the same kept fraction of the MLP's weights (10% by default), fine-tuned with the
masks held, converted to int8 (every token a row of the sparse op: MAM_SPARSE or MAC_SPARSE) and
run on the host runtime. The sparse ops then run on the emulated Cortex-M7 (QEMU) on the rows
they read in the host runtime, bit for bit against it, with their instruction counts. Given a
TFLite-Micro library built for Cortex-M7 (``$MAM_TF_TFLM_LIB``, ``$MAM_TF_TFLM_ROOT``,
``$MAM_TF_FLATBUFFERS_INCLUDE``), the whole int8 block also runs there through TFLite-Micro,
its output compared bit for bit with the host runtime's, with each op's instructions.

Outputs in ``-o/--out`` (default ``runs/transformer-<scale>``): results.json, report.md,
models/<kind>_seed<k>_int8.tflite, manifest.json and the cached stages.

The package: :mod:`.config`, :mod:`.task`, :mod:`.stages`, :mod:`.report`, :mod:`.cli`.
"""
from __future__ import annotations

from mam_tf.experiments import base
from mam_tf.experiments.transformer.cli import add_command
from mam_tf.experiments.transformer.config import (
    KINDS, NAME, RESOURCES, SCALES, Config, config_for,
)

__all__ = ["Config", "SCALES", "KINDS", "NAME", "RESOURCES", "EXPERIMENT", "config_for", "run",
           "add_command"]

EXPERIMENT = base.Experiment(NAME, Config, stages=f"{__name__}.stages:run_stages",
                             outputs=f"{__name__}.report:outputs",
                             summary=f"{__name__}.report:summary",
                             code=(__name__, "mam_tf.device"), resources=RESOURCES,
                             cost=f"{__name__}.config:stage_cost")
#: ``run(cfg, out=None, *, progress=True, merge=None, print_fn=print, recompute=())``.
run = EXPERIMENT.run
