"""`reproduce biocas`: the configuration, its scales, and the seed's fixed setup."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mam_tf.experiments.base import ExperimentConfig

__all__ = ["NAME", "TOLERANCE_DB", "HIDDEN", "SETUP", "SWEEPS", "SCALES", "RESOURCES", "Config",
           "config_for", "method_name", "stage_cost"]

NAME = "biocas"
#: What one stage of each kind asks a cluster for (``--ray``): one CPU (one TensorFlow thread:
#: the oracles are small) and the memory Ray reserves for it: the peak of its worker process,
#: with the paper scale's data (docs/cluster.md, Memory).
RESOURCES = {"data": {"num_cpus": 1, "memory": 3 * 2**29},
             **{k: {"num_cpus": 1, "memory": 5 * 2**29} for k in ("train", "sweep", "deploy")}}
TOLERANCE_DB = 0.5
HIDDEN = ["hidden_1", "hidden_2"]

#: The fractions of the hidden layers' weights kept, largest first.
_FRACTIONS = (0.75, 0.5, 0.25, 0.1, 0.06, 0.05, 0.04, 0.02)

#: Fixed parts of the setup (the group's public DNO code, ANCHORS.md); ``deploy_at``: kept
#: fractions at which the best one-shot and fine-tuned oracles are also deployed.
SETUP = dict(n=128, m=32, fs=256, snr_db=35.0, sensing="antipodal", orthonormal_rows=True,
             wavelet="sym6", data_seed=0, lr=1e-3, batch_size=64, fine_tune_lr=1e-3,
             threshold=0.5, deploy_at=(0.06,))
#: The pruning sweeps: (kind, method, scope). ``scope="global"`` ranks both hidden layers in one
#: list (the recipe); ``"layer"`` prunes each layer to the same fraction.
SWEEPS = (
    ("mam", "activation_rate", "global"),
    ("mam", "activation_rate", "layer"),
    ("mac", "magnitude", "global"),
    ("mac", "activation_rate", "global"),
)


def method_name(method, scope):
    """The ``method`` of a results point: the pruning method, ``_per_layer`` for layer scope."""
    return method if scope == "global" else f"{method}_per_layer"


@dataclasses.dataclass
class Config(ExperimentConfig):
    """Everything that shapes a run: data, training, pruning (a scale fills it; options
    override single fields). ``windows`` train + ``test`` held out; ``vc_epochs``: the MAC ->
    MAM blend length, a quarter of the training (the epochs in pure MAM after it are what
    concentrates the selections: docs/experiments/biocas.md); ``fine_tune_epochs`` after each
    pruning; ``fractions``: the kept fractions of the sweeps."""

    EXPERIMENT: ClassVar[str] = NAME

    windows: int = 6000
    test: int = 1000
    epochs: int = 15
    vc_epochs: int = 4
    fine_tune_epochs: int = 3
    fractions: tuple = _FRACTIONS
    sweeps: tuple = SWEEPS
    n: int = SETUP["n"]
    m: int = SETUP["m"]
    fs: int = SETUP["fs"]
    snr_db: float = SETUP["snr_db"]
    sensing: str = SETUP["sensing"]
    orthonormal_rows: bool = SETUP["orthonormal_rows"]
    wavelet: str = SETUP["wavelet"]
    data_seed: int = SETUP["data_seed"]
    lr: float = SETUP["lr"]
    batch_size: int = SETUP["batch_size"]
    fine_tune_lr: float = SETUP["fine_tune_lr"]
    threshold: float = SETUP["threshold"]
    deploy_at: tuple = SETUP["deploy_at"]

    def check(self):
        super().check()
        bad = [f for f in tuple(self.fractions) + tuple(self.deploy_at) if not 0 < f <= 1]
        if bad:
            raise ValueError(f"biocas: fractions and deploy_at are kept fractions in (0, 1], "
                             f"got {bad}")

    def data_params(self):
        keys = ("windows", "test", "n", "m", "fs", "snr_db", "sensing", "orthonormal_rows",
                "wavelet", "data_seed")
        return {k: getattr(self, k) for k in keys}


Config.SCALES = SCALES = {
    "tiny": dict(windows=800, test=200, epochs=3, vc_epochs=1, fine_tune_epochs=1,
                 fractions=(0.5, 0.06), seeds=(0,)),
    "demo": dict(windows=6000, test=1000, epochs=15, vc_epochs=4, fine_tune_epochs=3,
                 fractions=_FRACTIONS, seeds=(0,)),
    "small": dict(windows=20000, test=2000, epochs=20, vc_epochs=5, fine_tune_epochs=5,
                  fractions=_FRACTIONS, seeds=(0, 1, 2)),
    "paper": dict(windows=80000, test=10000, epochs=50, vc_epochs=12, fine_tune_epochs=10,
                  fractions=(0.75, 0.5, 0.25, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01),
                  seeds=tuple(range(10))),
}


def config_for(scale, **overrides) -> Config:
    """The :class:`Config` of a scale, with ``overrides`` (None values ignored), checked."""
    return Config.for_scale(scale, **overrides)


def stage_cost(cfg, name) -> float:
    """The work of one stage of kind ``name`` at ``cfg``, in windows passed through an oracle
    (or, for the data, made and labelled); ``--plan`` scales measured stage times by its ratios
    between configurations. A sweep counts the activation rates over the training windows,
    then for each fraction the test windows and the fine-tune's epochs; a deployment is counted
    as a fine-tuned one (the most work one can be)."""
    train, test = cfg.windows, cfg.test
    return {"data": train + test,
            "train": train * cfg.epochs + test,
            "sweep": train + len(cfg.fractions) * (test + train * cfg.fine_tune_epochs),
            "deploy": train * (1 + cfg.fine_tune_epochs) + 2 * test}[name]
