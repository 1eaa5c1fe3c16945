"""`reproduce transformer`: the configuration and its scales."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mam_tf.experiments.base import ExperimentConfig

__all__ = ["NAME", "KINDS", "SCALES", "RESOURCES", "Config", "config_for", "stage_cost"]

NAME = "transformer"
KINDS = ("mac", "mam")
_GIB = 2**30
#: What one stage of each kind asks a cluster for (``--ray``): one CPU (one TensorFlow thread:
#: the block is small) and the memory Ray reserves for it: the peak of a worker process that
#: has computed other stages before, above its data at every scale (docs/cluster.md, Memory).
RESOURCES = {"data": {"num_cpus": 1, "memory": 1 * _GIB},
             **{k: {"num_cpus": 1, "memory": 3 * _GIB // 2} for k in ("train", "prune", "deploy")}}


@dataclasses.dataclass
class Config(ExperimentConfig):
    """Everything that shapes a run. The task (:mod:`.task`): ``samples`` training and ``test``
    held-out sequences of ``tokens`` tokens over ``symbols`` symbols. The block
    (:func:`mam_tf.models.token_transformer`): ``width``, ``heads``, ``hidden``. Training:
    ``epochs`` (the MAM block's first ``vc_epochs`` blend MAC into MAM), then the MLP pruned by
    magnitude to ``remaining`` of its weights and fine-tuned for ``fine_tune_epochs``. Deployment:
    int8, calibrated on ``calibration`` training samples; ``deploy_test`` test samples on the host
    runtime, ``device_samples`` of them through the sparse ops on the emulated Cortex-M7."""

    EXPERIMENT: ClassVar[str] = NAME

    samples: int = 4000
    test: int = 1000
    tokens: int = 6
    symbols: int = 4
    noise: float = 0.1
    data_seed: int = 0
    width: int = 16
    heads: int = 2
    hidden: int = 32
    epochs: int = 12
    vc_epochs: int = 4
    lr: float = 3e-3
    batch_size: int = 32
    remaining: float = 0.1
    fine_tune_epochs: int = 6
    fine_tune_lr: float = 1e-3
    calibration: int = 300
    deploy_test: int = 1000
    device_samples: int = 2

    def check(self):
        super().check()
        if not 0 < self.remaining <= 1:
            raise ValueError(f"transformer: remaining is the kept fraction in (0, 1], got "
                             f"{self.remaining}")
        if self.tokens < 4:
            raise ValueError(f"transformer: tokens must be >= 4 (labels count up to 3 repeats), "
                             f"got {self.tokens}")
        if self.symbols < 2:
            raise ValueError(f"transformer: symbols must be >= 2, got {self.symbols}")
        for key in ("samples", "test", "epochs", "calibration", "deploy_test"):
            if getattr(self, key) < 1:
                raise ValueError(f"transformer: {key} must be >= 1, got {getattr(self, key)}")
        if self.deploy_test > self.test or self.device_samples > self.deploy_test:
            raise ValueError(f"transformer: needs device_samples <= deploy_test <= test, got "
                             f"{self.device_samples}, {self.deploy_test}, {self.test}")


Config.SCALES = SCALES = {
    "tiny": dict(samples=2000, test=300, epochs=5, vc_epochs=2, fine_tune_epochs=2,
                 calibration=100, deploy_test=200, device_samples=1, seeds=(0,)),
    "demo": dict(seeds=(0,)),
    "small": dict(seeds=(0, 1, 2)),
    "paper": dict(samples=16000, test=2000, epochs=20, vc_epochs=6, fine_tune_epochs=8,
                  deploy_test=2000, seeds=(0, 1, 2, 3, 4)),
}


def config_for(scale, **overrides) -> Config:
    """The :class:`Config` of a scale, with ``overrides`` (None values ignored), checked."""
    return Config.for_scale(scale, **overrides)


def stage_cost(cfg, name) -> float:
    """The work of one stage of kind ``name`` at ``cfg``, in sequences passed through the block
    (or, for the data, made); ``--plan`` scales measured stage times by its ratios between
    configurations. The deployment's few samples on the emulated Cortex-M7 are left out."""
    return {"data": cfg.samples + cfg.test,
            "train": cfg.samples * cfg.epochs + cfg.test,
            "prune": cfg.samples * cfg.fine_tune_epochs + 2 * cfg.test,
            "deploy": cfg.calibration + 2 * cfg.deploy_test}[name]
