"""`reproduce mwscas`: the configuration, its scales, and the paper's fixed setup."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import ClassVar

from mam_tf.experiments.base import ExperimentConfig

NAME = "mwscas"
FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
METHODS = ("magnitude", "activation_rate")
#: The third curve: the magnitude mask, then a short QAT fine-tune with the mask held.
FINE_TUNED = "magnitude_fine_tuned"
KINDS = ("mac", "mam")
SRAM_BYTES = 512 * 1024  # STM32F767ZI
_GIB = 2**30
#: What one stage of each kind asks a cluster for (``--ray``): one CPU each (so that the most
#: stages run side by side; the task's TensorFlow threads follow it), and the memory Ray
#: reserves for it: the peak of its worker process (Python, TensorFlow, the data and models)
#: with the paper scale's data (docs/cluster.md, Memory).
RESOURCES = {"data": {"num_cpus": 1, "memory": 1 * _GIB},
             **{k: {"num_cpus": 1, "memory": 2 * _GIB}
                for k in ("train", "qat", "fine_tune", "records")},
             **{k: {"num_cpus": 1, "memory": 5 * _GIB // 2} for k in ("prune", "deploy")}}


@dataclasses.dataclass
class Config(ExperimentConfig):
    """Everything that shapes a run (a scale fills it; options override single fields)."""

    EXPERIMENT: ClassVar[str] = NAME

    windows: int = 20_000
    epochs: int = 15
    vc_epochs: int = 1          # epochs of the MAC -> MAM blend (vanishing contributions)
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    lr: float = 1e-3
    batch_size: int = 128
    data_seed: int = 1234
    snr_db: float = 35.0
    fractions: tuple = FRACTIONS
    methods: tuple = METHODS
    fine_tune: tuple = (0.2, 0.1, 0.05, 0.02, 0.01)  # FC1 fractions fine-tuned after pruning
    fine_tune_epochs: int = 1
    rate_windows: int = 1000    # training windows that count activation rates
    eval_windows: int | None = None  # test windows evaluated (None: the whole test split)
    deploy: tuple = (("mam", "magnitude", 0.05), ("mam", "magnitude", 0.02),
                     ("mac", "magnitude", 0.05))
    deploy_windows: int = 100
    train_records: str | None = None
    records: str | None = None
    record_windows: int = 2000
    bandpass: tuple | None = (0.5, 40.0)
    mcu: bool = True            # Cortex-M7 figures when its toolchain is here

    def __post_init__(self):
        if self.bandpass is not None and len(self.bandpass) == 0:
            self.bandpass = None  # --no-bandpass

    def check(self):
        super().check()
        bad = [f for f in self.fine_tune if f not in self.fractions or f >= 1.0]
        if bad:
            raise ValueError(f"mwscas: fine_tune fractions must be pruned fractions of "
                             f"{tuple(self.fractions)} below 1, got {list(bad)}")
        if self.fine_tune and "magnitude" not in self.methods:
            raise ValueError(f"mwscas: fine_tune starts from the magnitude masks; methods "
                             f"{tuple(self.methods)} leave them out")
        if self.fine_tune and self.fine_tune_epochs < 1:
            raise ValueError(f"mwscas: fine_tune_epochs must be at least 1, got "
                             f"{self.fine_tune_epochs}")
        if not 1 <= self.vc_epochs < self.epochs:
            raise ValueError(f"mwscas: vc_epochs must be at least 1 and below epochs "
                             f"({self.epochs}) so that MAM trains on after the blend, got "
                             f"{self.vc_epochs}")

    def data_params(self):
        if self.train_records:
            return {"source": "records", "records": dir_fingerprint(self.train_records),
                    "bandpass": self.bandpass, "seed": self.data_seed}
        return {"source": "ecgsyn", "windows": self.windows, "length": 256, "fs": 256,
                "heart_rate": [60, 100], "snr_db": self.snr_db, "seed": self.data_seed,
                "splits": [0.8, 0.1, 0.1]}

    def train_params(self, kind, seed):
        return {"kind": kind, "seed": seed, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size,
                "vc_epochs": self.vc_epochs if kind == "mam" else None}

    def qat_params(self):
        return {"scheme": "int16x8", "weight_range": [-1, 1], "input_range": [-1, 1],
                "epochs": self.qat_epochs, "lr": self.qat_lr, "batch_size": self.batch_size}

    def fine_tune_params(self):
        return {"fractions": list(self.fine_tune), "mask": "magnitude",
                "epochs": self.fine_tune_epochs, "lr": self.qat_lr,
                "batch_size": self.batch_size, "eval_windows": self.eval_windows}

    def prune_params(self):
        return {"fractions": list(self.fractions), "methods": list(self.methods),
                "rate_windows": self.rate_windows, "eval_windows": self.eval_windows}


Config.SCALES = SCALES = {
    # For tests: the real model, a few hundred windows, one seed, seconds of training.
    "tiny": dict(windows=600, epochs=2, vc_epochs=1, qat_epochs=1, seeds=(0,), rate_windows=64,
                 fine_tune=(0.05,),
                 deploy=(("mam", "magnitude", 0.05), ("mac", "magnitude", 0.05)),
                 deploy_windows=8, record_windows=64),
    # The README's first command: one seed, minutes on a 2-core machine.
    "demo": dict(windows=20_000, epochs=15, vc_epochs=1, qat_epochs=2, seeds=(0,),
                 fine_tune=(0.05,),
                 eval_windows=1000),
    # Three seeds, the README's table and figures.
    "small": dict(windows=20_000, epochs=15, vc_epochs=1, qat_epochs=2, seeds=(0, 1, 2)),
    # The paper's sizes: 100 000 windows, 200 float + 10 QAT epochs, 10 seeds. The blend's
    # length there is not measured; 10 epochs keeps 95% of the training in pure MAM.
    "paper": dict(windows=100_000, epochs=200, vc_epochs=10, qat_epochs=10,
                  fine_tune=(0.5, 0.2, 0.1, 0.05, 0.02, 0.01), fine_tune_epochs=2,
                  seeds=tuple(range(10)), rate_windows=2000, deploy_windows=1000),
}


def config_for(scale, **overrides) -> Config:
    """The :class:`Config` of a scale, with ``overrides`` (None values ignored), checked."""
    return Config.for_scale(scale, **overrides)


def command_overrides(cfg, seeds):
    """The options a report's command line needs beyond ``--scale`` to redo ``cfg``."""
    scale = SCALES[cfg.scale]
    opts = "" if tuple(cfg.seeds) == tuple(scale["seeds"]) else " --seeds " + ",".join(map(str, seeds))
    for field, flag in (("epochs", "--epochs"), ("vc_epochs", "--vc-epochs"),
                        ("windows", "--windows")):
        if getattr(cfg, field) != scale.get(field, getattr(Config, field)):
            opts += f" {flag} {getattr(cfg, field)}"
    if tuple(cfg.fine_tune) != tuple(scale.get("fine_tune", Config.fine_tune)):
        opts += " --fine-tune " + (",".join(f"{f:g}" for f in cfg.fine_tune) or "none")
    return opts


def blend_words(vc_epochs):
    if vc_epochs == 1:
        return "the first epoch as MAC, then pure MAM"
    return f"MAC -> MAM blend over the first {vc_epochs} epochs, then pure MAM"


def dir_fingerprint(directory):
    """Names, sizes and a hash of the files of a record folder (what shapes the data)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"mwscas: record folder '{d}' does not exist")
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        if p.suffix in (".hea", ".dat") and p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return {"path": str(d.resolve()), "sha256": h.hexdigest()[:16]}


def device_budget_bytes(model) -> int:
    """FC1's memory budget on the paper's device, computed as the paper does (Fig. 4): 512 kB
    of SRAM minus the other tail layers' weights (8-bit weights, 32-bit biases) minus the
    largest activation buffer, FC1's int16 input (16384 x 2 = 32 768 B, the paper's 32.8 kB)."""
    from mam_tf.models import split

    tail, _ = split(model)
    other = 0
    for layer in tail.layers:
        if layer.name == "fc1" or not layer.weights:
            continue
        kernel = layer.kernel.shape.num_elements()
        bias = layer.bias.shape.num_elements() if layer.use_bias else 0
        other += kernel + 4 * bias
    fc1_inputs = int(tail.get_layer("fc1").input.shape[-1])
    return SRAM_BYTES - other - 2 * fc1_inputs


def stage_cost(cfg, name) -> float:
    """The work of one stage of kind ``name`` at ``cfg``, in windows passed through a model
    (``--plan`` scales measured stage times by its ratios between scales)."""
    train = 0.9 * cfg.windows  # the training and validation splits, every epoch
    test = 0.1 * cfg.windows if cfg.eval_windows is None else min(cfg.eval_windows,
                                                                   0.1 * cfg.windows)
    return {"data": cfg.windows, "train": train * cfg.epochs, "qat": train * cfg.qat_epochs,
            "prune": test * len(cfg.fractions) * len(cfg.methods) + cfg.rate_windows,
            "fine_tune": len(cfg.fine_tune) * (0.8 * cfg.windows * cfg.fine_tune_epochs + test),
            "deploy": cfg.deploy_windows,
            "records": cfg.record_windows * len(cfg.fractions)}[name]
