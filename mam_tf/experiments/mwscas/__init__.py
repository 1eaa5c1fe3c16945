"""`mam-tf reproduce mwscas`: seed 004 (Bich et al., MWSCAS 2023) end to end.

The convolutional ECG autoencoder of the paper (:func:`mam_tf.models.ecg_autoencoder`) with a
MAC (Dense) or a MAM first fully connected layer (FC1, 98.5% of the deployed tail's weights):

1. data: synthetic ECGSYN windows (256 samples at 256 Hz, heart rate 60-100 bpm, white noise
   at 35 dB, each window scaled to [0, 1]), split 80/10/10; or WFDB records (``--train-records``).
2. train: MAC and MAM over several seeds, MSE, Adam 1e-3, batch 128; MAM with vanishing
   contributions: its first epoch as MAC (beta = 1), every later epoch pure MAM (``--vc-epochs``
   blends over more). The MAM layer keeps learning long after the switch, so the epochs in pure
   MAM count most (docs/reproductions.md gives the measured blends).
3. QAT: the tail (what the device runs: convolutions, FC1, FC2) fake-quantized as the paper
   does: 8-bit weights in [-1, 1], 16-bit activations (int16x8; the window input fixed to
   [-1, 1], the other activation ranges learned), 32-bit biases; a few epochs with the
   receiver's float decoder (the head) held fixed.
4. prune FC1 of the QAT model one-shot to {100, 50, 20, 10, 5, 2, 1}% of its weights, by
   magnitude (the paper's method) and by activation rate (how often a weight is the argmax or
   argmin of its row over training windows); a third curve fine-tunes the magnitude-pruned
   model for an epoch of QAT with the mask held (MAC and MAM alike; ``--fine-tune`` fractions).
5. evaluate: ARSNR on the test split (float and QAT), mean / min / max over seeds.
6. footprint: FC1 offset-CSR bytes (8-bit values and offsets, 16-bit row counts, 32-bit
   bias: the paper's representation) and values-only bytes (the paper's dashed lines).
7. deploy: the pruned QAT tail converted to an int16x8 ``.tflite`` (MAM_SPARSE for a MAM FC1,
   MAC_SPARSE for a pruned Dense FC1), run on the host runtime (TFLite-Micro's interpreter
   and the C core), its latent fed to the float head: the ARSNR of what a device would send,
   on a bounded number of test windows. With the Cortex-M7 toolchain present, instruction
   counts of FC1 on the emulated Cortex-M7 are added (else left out).

Outputs in ``-o/--out`` (default ``runs/mwscas-<scale>``): ``results.json``, ``report.md``,
``models/<kind>_seed<k>.keras`` (float) and ``models/<kind>_seed<k>_qat.keras`` (the QAT tail),
``tflite/``, ``fig2_arsnr_vs_weights.png``, ``fig4_arsnr_vs_memory.png``, ``fig5_mcu.png`` (with
MCU figures), ``fig6_reconstruction.png``, ``manifest.json`` and ``stages/`` (the cache a rerun
reads back).

The package: :mod:`.config` (the configuration and its scales), :mod:`.stages` (the stages),
:mod:`.results` (aggregation over seeds), :mod:`.report` (figures, report.md), :mod:`.cli`
(``reproduce mwscas``); :mod:`mam_tf.experiments.base` runs them.
"""
from __future__ import annotations

from mam_tf.experiments import base
from mam_tf.experiments.mwscas.cli import add_command
from mam_tf.experiments.mwscas.config import (
    FINE_TUNED, FRACTIONS, KINDS, METHODS, NAME, RESOURCES, SCALES, Config, config_for,
    device_budget_bytes,
)

__all__ = ["Config", "SCALES", "config_for", "run", "add_command", "FRACTIONS", "METHODS",
           "KINDS", "FINE_TUNED", "NAME", "EXPERIMENT", "device_budget_bytes"]

EXPERIMENT = base.Experiment(NAME, Config, stages=f"{__name__}.stages:run_stages",
                             outputs=f"{__name__}.report:outputs",
                             summary=f"{__name__}.report:summary",
                             code=(__name__, "mam_tf.device"), resources=RESOURCES,
                             cost=f"{__name__}.config:stage_cost")
#: ``run(cfg, out=None, *, progress=True, merge=None, print_fn=print, recompute=())``: runs
#: (or resumes) the experiment into ``out`` (default ``runs/mwscas-<scale>``) and returns the
#: results, also written to ``out/results.json`` (:func:`mam_tf.experiments.base.run`).
run = EXPERIMENT.run
