"""`mam-tf reproduce mwscas`: seed 004 (Bich et al., MWSCAS 2023) end to end.

The convolutional ECG autoencoder of the paper (:func:`mam_tf.models.ecg_autoencoder`) with a
MAC (Dense) or a MAM first fully connected layer (FC1, 98.5% of the deployed tail's weights):

1. data: synthetic ECGSYN windows (256 samples at 256 Hz, heart rate 60-100 bpm, white noise
   at 35 dB, each window scaled to [0, 1]), split 80/10/10; or WFDB records (``--train-records``).
2. train: MAC and MAM over several seeds, MSE, Adam 1e-3, batch 128; MAM with vanishing
   contributions: its first epoch as MAC (beta = 1), every later epoch pure MAM (``--vc-epochs``
   blends over more). Measured on seed 0 at the small scale (15 epochs, float ARSNR): a blend
   over 8 / 4 / 2 / 1 epochs gave 29.4 / 30.7 / 31.0 / 31.9 dB (``--seeds 0 --vc-epochs N``).
   The MAM layer keeps learning long after the switch, so the epochs count in pure MAM.
3. QAT: the tail (what the device runs: convolutions, FC1, FC2) fake-quantized as the paper
   does: 8-bit weights in [-1, 1], 16-bit activations (int16x8; the window input fixed to
   [-1, 1], the other activation ranges learned), 32-bit biases; a few epochs with the
   receiver's float decoder (the head) held fixed.
4. prune FC1 of the QAT model one-shot to {100, 50, 20, 10, 5, 2, 1}% of its weights, by
   magnitude (the paper's method) and by activation rate (how often a weight is the argmax or
   argmin of its row over training windows); a third curve fine-tunes the magnitude-pruned
   model for an epoch of QAT with the mask held (MAC and MAM alike; ``fine_tune`` fractions).
5. evaluate: ARSNR on the test split (float and QAT), mean / min / max over seeds.
6. footprint: FC1 offset-CSR bytes (8-bit values and offsets, 16-bit row counts, 32-bit
   bias: the paper's representation) and values-only bytes (the paper's dashed lines).
7. deploy: the pruned QAT tail converted to an int16x8 ``.tflite`` (MAM_SPARSE for a MAM FC1,
   MAC_SPARSE for a pruned Dense FC1), run on the host runtime (TFLite-Micro's interpreter
   and the C core), its latent fed to the float head: the ARSNR of what a device would send,
   on a bounded number of test windows. With the Cortex-M7 toolchain and ``mam_tf.bench.mcu``
   present, instruction counts of FC1 on the emulated Cortex-M7 are added (else left out).

Outputs in ``--out``: ``results.json``, ``report.md``, ``models/<kind>_seed<k>.keras`` (float)
and ``models/<kind>_seed<k>_qat.keras`` (the QAT tail), ``tflite/``, ``fig2_arsnr_vs_weights.png``,
``fig4_arsnr_vs_memory.png``, ``fig5_mcu.png`` (with MCU figures), ``fig6_reconstruction.png``,
``manifest.json`` and ``stages/`` (the cache a rerun reads back).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from mam_tf.experiments import pipeline as pl
from mam_tf.experiments import report as rp

__all__ = ["Config", "SCALES", "run", "add_command", "FRACTIONS", "METHODS", "device_budget_bytes"]

NAME = "mwscas"
FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
METHODS = ("magnitude", "activation_rate")
#: The third curve: the magnitude mask, then a short QAT fine-tune with the mask held.
FINE_TUNED = "magnitude_fine_tuned"
KINDS = ("mac", "mam")
SRAM_BYTES = 512 * 1024  # STM32F767ZI


@dataclasses.dataclass
class Config:
    """Everything that shapes a run (a scale fills it; options override single fields)."""

    scale: str = "demo"
    windows: int = 20_000
    epochs: int = 15
    vc_epochs: int = 1          # epochs of the MAC -> MAM blend (vanishing contributions)
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    lr: float = 1e-3
    batch_size: int = 128
    seeds: tuple = (0,)
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
    mcu: bool = True            # Cortex-M7 figures when mam_tf.bench.mcu and its toolchain exist

    def data_params(self):
        if self.train_records:
            return {"source": "records", "records": _dir_fingerprint(self.train_records),
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


SCALES = {
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
    """The :class:`Config` of a scale, with ``overrides`` (None values ignored)."""
    if scale not in SCALES:
        raise ValueError(f"mwscas: scale must be one of {tuple(SCALES)}, got {scale!r}")
    fields = {**SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = Config(scale=scale, **fields)
    bad = [f for f in cfg.fine_tune if f not in cfg.fractions or f >= 1.0]
    if bad:
        raise ValueError(f"mwscas: fine_tune fractions must be pruned fractions of "
                         f"{tuple(cfg.fractions)} below 1, got {bad}")
    if cfg.fine_tune and "magnitude" not in cfg.methods:
        raise ValueError(f"mwscas: fine_tune starts from the magnitude masks; methods "
                         f"{tuple(cfg.methods)} leave them out")
    if cfg.fine_tune and cfg.fine_tune_epochs < 1:
        raise ValueError(f"mwscas: fine_tune_epochs must be at least 1, got {cfg.fine_tune_epochs}")
    if not 1 <= cfg.vc_epochs < cfg.epochs:
        raise ValueError(f"mwscas: vc_epochs must be at least 1 and below epochs ({cfg.epochs}) "
                         f"so that MAM trains on after the blend, got {cfg.vc_epochs}")
    return cfg


def _command_overrides(cfg, seeds):
    """The options a report's command line needs beyond ``--scale`` to redo ``cfg``."""
    scale = SCALES[cfg.scale]
    opts = "" if tuple(cfg.seeds) == tuple(scale["seeds"]) else " --seeds " + ",".join(map(str, seeds))
    for field, flag in (("epochs", "--epochs"), ("vc_epochs", "--vc-epochs"),
                        ("windows", "--windows")):
        if getattr(cfg, field) != scale.get(field, getattr(Config, field)):
            opts += f" {flag} {getattr(cfg, field)}"
    if tuple(cfg.fine_tune) != tuple(scale.get("fine_tune", Config.fine_tune)):
        opts += " --fine-tune " + (",".join(f"{100 * f:g}" for f in cfg.fine_tune) or "none")
    return opts


def _blend_words(vc_epochs):
    if vc_epochs == 1:
        return "the first epoch as MAC, then pure MAM"
    return f"MAC -> MAM blend over the first {vc_epochs} epochs, then pure MAM"


def _dir_fingerprint(directory):
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


# ------------------------------------------------------------------------------------------
# Stage functions
# ------------------------------------------------------------------------------------------
def _load_npz(stage, name="data.npz"):
    with np.load(stage.file(name)) as f:
        return {k: f[k] for k in f.files}


def _stage_data(cfg, run):
    def compute(work):
        import ecg_data

        if cfg.train_records:
            x = ecg_data.load_record_windows(cfg.train_records, bandpass=cfg.bandpass)
            x = x[np.random.default_rng(cfg.data_seed).permutation(len(x))]
            data = ecg_data.split_windows(x, (0.8, 0.1, 0.1), ("train", "val", "test"))
        else:
            data = ecg_data.build_synthetic_dataset(
                cfg.windows, 256, 256, (60, 100), cfg.snr_db, cfg.data_seed,
                progress=run.show_progress)
        np.savez(work / "data.npz", **data)
        return {k: int(len(v)) for k, v in data.items()}

    return run.stage("data", cfg.data_params(), compute, label="data")


def _fit_verbose(run):
    return 2 if run.show_progress else 0


def _stage_train(cfg, run, data_stage, kind, seed):
    def compute(work):
        from mam_tf import VanishingContributions, mam_layers
        from mam_tf.train.compat import keras
        from mam_tf.models import ecg_autoencoder
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        model = ecg_autoencoder(kind, seed=seed)
        model.compile(keras.optimizers.Adam(cfg.lr), "mse")
        callbacks = [VanishingContributions(length=cfg.vc_epochs)] if kind == "mam" else []
        t0 = time.perf_counter()
        hist = model.fit(d["train"], d["train"], validation_data=(d["val"], d["val"]),
                         epochs=cfg.epochs, batch_size=cfg.batch_size, callbacks=callbacks,
                         shuffle=True, verbose=_fit_verbose(run))
        seconds = time.perf_counter() - t0
        for layer in mam_layers(model):
            if layer.get_beta() != 0.0:
                raise ValueError(f"mwscas: MAMDense '{layer.name}' ended training with beta "
                                 f"{layer.get_beta():g}; epochs ({cfg.epochs}) must exceed "
                                 f"vc_epochs ({cfg.vc_epochs})")
        _save(model, work / "model.keras")
        test = d["test"]  # the whole split: this stage's key does not hold eval_windows
        return {"test_arsnr": float(arsnr(test, model.predict(test, verbose=0, batch_size=256))),
                "val_loss": [float(v) for v in hist.history["val_loss"]],
                "seconds_per_epoch": seconds / cfg.epochs, "params": int(model.count_params())}

    return run.stage("train", cfg.train_params(kind, seed), compute, deps=[data_stage],
                     label=f"train {kind.upper()} seed {seed}")


def _save(model, path):
    """Saves a trained model without its optimizer state (a third of the file)."""
    model.optimizer = None
    model.save(path)


def _load(path):
    from mam_tf.train.compat import keras

    return keras.models.load_model(path, compile=False)


def _qat_composite(qat_tail, head):
    from mam_tf.train.compat import keras

    head.trainable = False
    x = keras.Input(tuple(qat_tail.inputs[0].shape[1:]), name="window")
    return keras.Model(x, head(qat_tail(x)), name="qat_autoencoder")


def _stage_qat(cfg, run, data_stage, train_stage, kind, seed):
    def compute(work):
        from mam_tf.train import quantization
        from mam_tf.train.compat import keras
        from mam_tf.models import split
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        tail, head = split(_load(train_stage.file("model.keras")))
        qat = quantization.quantize_model(tail, "int16x8", weight_range=(-1, 1),
                                          input_range=(-1, 1))
        comp = _qat_composite(qat, head)
        comp.compile(keras.optimizers.Adam(cfg.qat_lr), "mse")
        t0 = time.perf_counter()
        comp.fit(d["train"], d["train"], validation_data=(d["val"], d["val"]),
                 epochs=cfg.qat_epochs, batch_size=cfg.batch_size, verbose=_fit_verbose(run))
        seconds = time.perf_counter() - t0
        _save(qat, work / "qat_tail.keras")
        test = d["test"]  # the whole split: this stage's key does not hold eval_windows
        return {"test_arsnr": float(arsnr(test, comp.predict(test, verbose=0, batch_size=256))),
                "seconds_per_epoch": seconds / max(cfg.qat_epochs, 1)}

    return run.stage("qat", cfg.qat_params(), compute, deps=[data_stage, train_stage],
                     label=f"QAT {kind.upper()} seed {seed}")


def _qat_fc1(qat_tail):
    """(kernel variable, sparsity-mask variable) of FC1 inside its QAT wrapper."""
    for layer in qat_tail.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name == "fc1":
            for weight, _, qvars in layer._weight_vars:  # noqa: SLF001 (tfmot's record)
                return weight, qvars.get("sparsity_mask")
    raise ValueError(f"mwscas: QAT tail '{qat_tail.name}' has no wrapped layer 'fc1'")


def _float_twin(float_model, qat_tail):
    """The float tail holding the QAT-tuned weights (QAT trains the float variables inside its
    wrappers), and the float head."""
    from mam_tf.models import split

    tail, head = split(float_model)
    by_inner = {getattr(layer, "layer", layer).name: layer for layer in qat_tail.layers}
    for layer in tail.layers:
        if not layer.weights:
            continue
        wrapper = by_inner[layer.name]
        inner = getattr(wrapper, "layer", wrapper)
        # A QAT wrapper holds the kernel itself (its record of quantized weights); the bias
        # and beta stay in the inner layer.
        found = {"kernel": wrapper._weight_vars[0][0]} if hasattr(wrapper, "_weight_vars") else {}  # noqa: SLF001
        for w in inner.weights:
            found.setdefault(w.name.split("/")[-1].split(":")[0], w)
        values = []
        for w in layer.weights:
            key = w.name.split("/")[-1].split(":")[0]
            if key not in found or tuple(found[key].shape) != tuple(w.shape):
                raise ValueError(f"mwscas: QAT layer '{layer.name}' has no {key} of shape "
                                 f"{tuple(w.shape)} (it has {sorted(found)})")
            values.append(found[key].numpy())
        layer.set_weights(values)
    return tail, head


def _masks_for(twin, method, fraction, rate_data):
    """FC1's keep-mask at ``fraction`` remaining, by the library's one-shot pruning."""
    from mam_tf.train import pruning

    shape = tuple(twin.get_layer("fc1").kernel.shape)
    if fraction >= 1.0:
        return np.ones(shape, bool)
    if method == "magnitude":
        pruned = pruning.prune_magnitude(twin, 1.0 - fraction, layers=["fc1"])
    elif method == "activation_rate":
        pruned = pruning.prune_activation_rate(twin, rate_data, 1.0 - fraction, layers=["fc1"])
    else:
        raise ValueError(f"mwscas: pruning method must be one of {METHODS}, got {method!r}")
    return pruning.get_masks(pruned)["fc1"]


def _fc1_footprint(twin, mask):
    """FC1's storage with ``mask``: pruning.summary's offset-CSR bytes (8-bit values and
    offsets, 16-bit row counts, 32-bit bias) and the values-only bytes (nonzero int8 weights)."""
    from mam_tf.train import pruning

    fc1 = twin.get_layer("fc1")
    original = fc1.kernel.numpy()
    fc1.kernel.assign(original * mask)
    try:
        row = next(r for r in pruning.summary(twin, print_fn=None)["layers"] if r["layer"] == "fc1")
    finally:
        fc1.kernel.assign(original)
    return {"fc1_bytes": row["csr_bytes"], "fc1_values_bytes": row["nonzero"],
            "fc1_nonzero": row["nonzero"], "fc1_dense_int8_bytes": row["dense_int8_bytes"]}


def _stage_prune(cfg, run, data_stage, train_stage, qat_stage, kind, seed):
    def compute(work):
        from mam_tf.train.compat import keras
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        test = d["test"] if cfg.eval_windows is None else d["test"][:cfg.eval_windows]
        rate_data = d["train"][:cfg.rate_windows]
        float_model = _load(train_stage.file("model.keras"))
        qat = _load(qat_stage.file("qat_tail.keras"))
        twin, head = _float_twin(float_model, qat)
        comp = _qat_composite(qat, head)
        x = keras.Input((256,))
        float_comp = keras.Model(x, head(twin(x)))
        kernel, sparsity = _qat_fc1(qat)
        k_qat = kernel.numpy()
        k_float = twin.get_layer("fc1").kernel.numpy()
        points, masks, recon = [], {}, {}
        todo = [(m, f) for m in cfg.methods for f in cfg.fractions]
        for method, fraction in run.progress(todo, f"prune {kind.upper()} seed {seed}"):
            if fraction >= 1.0 and method != cfg.methods[0]:
                continue  # 100% is the same model for every method
            mask = _masks_for(twin, method, fraction, rate_data)
            twin.get_layer("fc1").kernel.assign(k_float * mask)
            float_db = float(arsnr(test, float_comp.predict(test, verbose=0, batch_size=256)))
            twin.get_layer("fc1").kernel.assign(k_float)
            kernel.assign(k_qat * mask)
            if sparsity is not None:
                sparsity.assign(mask.astype(np.float32))
            y = comp.predict(test, verbose=0, batch_size=256)
            kernel.assign(k_qat)
            if sparsity is not None:
                sparsity.assign(np.ones_like(k_qat, np.float32))
            tag = f"{method}_{fraction:g}"
            masks[tag] = np.packbits(mask.ravel())
            recon[tag] = y[:4]
            for m in (cfg.methods if fraction >= 1.0 else (method,)):
                points.append({"method": m, "remaining": fraction, "arsnr": float(arsnr(test, y)),
                               "float_arsnr": float_db, **_fc1_footprint(twin, mask)})
        np.savez_compressed(work / "masks.npz", shape=np.array(k_qat.shape), **masks)
        np.savez_compressed(work / "recon.npz", x=test[:4], **recon)
        return {"points": points, "test_windows": int(len(test))}

    return run.stage("prune", cfg.prune_params(), compute,
                     deps=[data_stage, train_stage, qat_stage],
                     label=f"prune+evaluate {kind.upper()} seed {seed}")


def _stage_fine_tune(cfg, run, data_stage, train_stage, qat_stage, prune_stage, kind, seed):
    """FC1 pruned by magnitude, then ``fine_tune_epochs`` of QAT with the mask held (the
    sparsity-preserving quantizer keeps pruned weights at 0): one model per fraction, each
    from the unpruned QAT model."""
    def compute(work):
        from mam_tf.train.compat import keras
        from mam_tf.models import split
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        test = d["test"] if cfg.eval_windows is None else d["test"][:cfg.eval_windows]
        points, recon = [], {}
        for fraction in run.progress(list(cfg.fine_tune), f"fine-tune {kind.upper()} seed {seed}"):
            keras.utils.set_random_seed(int(seed))
            float_model = _load(train_stage.file("model.keras"))
            qat = _load(qat_stage.file("qat_tail.keras"))
            mask = _mask_from(prune_stage, "magnitude", fraction)
            kernel, sparsity = _qat_fc1(qat)
            if sparsity is None:  # quantize_model's weight quantizers all hold a mask
                raise ValueError(f"mwscas: QAT tail of {kind.upper()} seed {seed} has no "
                                 "sparsity mask on FC1; fine-tuning would regrow pruned weights")
            kernel.assign(kernel.numpy() * mask)
            sparsity.assign(mask.astype(np.float32))
            comp = _qat_composite(qat, split(float_model)[1])
            comp.compile(keras.optimizers.Adam(cfg.qat_lr), "mse")
            comp.fit(d["train"], d["train"], epochs=cfg.fine_tune_epochs,
                     batch_size=cfg.batch_size, shuffle=True, verbose=_fit_verbose(run))
            kept = int(np.count_nonzero(kernel.numpy()))
            y = comp.predict(test, verbose=0, batch_size=256)
            twin, head = _float_twin(float_model, qat)
            x = keras.Input((256,))
            float_db = float(arsnr(test, keras.Model(x, head(twin(x))).predict(
                test, verbose=0, batch_size=256)))
            recon[f"{FINE_TUNED}_{fraction:g}"] = y[:4]
            if fraction == 0.05:  # the paper's point: kept, to deploy or check
                _save(qat, work / "qat_tail_5pct.keras")
            points.append({"method": FINE_TUNED, "remaining": fraction,
                           "arsnr": float(arsnr(test, y)), "float_arsnr": float_db,
                           "fc1_nonzero_after": kept, **_fc1_footprint(twin, mask)})
            keras.backend.clear_session()
        np.savez_compressed(work / "recon.npz", x=test[:4], **recon)
        return {"points": points, "test_windows": int(len(test))}

    return run.stage("fine_tune", cfg.fine_tune_params(), compute,
                     deps=[data_stage, train_stage, qat_stage, prune_stage],
                     label=f"fine-tune {kind.upper()} seed {seed}")


def _mask_from(prune_stage, method, fraction):
    tag = f"{method}_{fraction:g}" if fraction < 1.0 else None
    with np.load(prune_stage.file("masks.npz")) as f:
        shape = tuple(int(v) for v in f["shape"])
        if tag is None:
            tag = next(k for k in f.files if k.endswith("_1"))
        bits = f[tag]
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool)


def mcu_status():
    """(available, why not): whether ``mam_tf.bench.mcu`` exists and its toolchain is here."""
    import mam_tf

    spec = importlib.util.find_spec("mam_tf.bench.mcu")
    here = Path(mam_tf.__file__).resolve().parent
    # (an editable install elsewhere could lend a module of another checkout: not this one's)
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != here:
        return False, "mam_tf.bench.mcu is not part of this installation"
    from mam_tf.bench import mcu

    ok, why = mcu.toolchain_available()
    return bool(ok), why


def _stage_deploy(cfg, run, data_stage, train_stage, qat_stage, prune_stage, kind, seed,
                  method, fraction, with_mcu):
    def compute(work):
        from mam_tf.deploy.convert import convert
        from mam_tf.deploy.runtime import Interpreter
        from mam_tf.models import split
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        x = d["test"][:cfg.deploy_windows]
        _, head = split(_load(train_stage.file("model.keras")))
        qat = _load(qat_stage.file("qat_tail.keras"))
        mask = _mask_from(prune_stage, method, fraction)
        kernel, sparsity = _qat_fc1(qat)
        kernel.assign(kernel.numpy() * mask)
        if sparsity is not None:
            sparsity.assign(mask.astype(np.float32))
        t0 = time.perf_counter()
        conv = convert(qat, None, mode="int16x8", require_mam=(kind == "mam"),
                       mac_sparse_below=0.5 if kind == "mac" else None, return_report=True)
        convert_s = time.perf_counter() - t0
        (work / "tail.tflite").write_bytes(conv.tflite)
        interp = Interpreter(conv.tflite)
        t0 = time.perf_counter()
        z_dev = np.concatenate([interp.run(x[i:i + 16]) for i in
                                run.progress(range(0, len(x), 16), f"host runtime {kind} "
                                             f"{fraction:.0%}")])
        run_s = time.perf_counter() - t0
        z_keras = qat.predict(x, verbose=0)
        y_dev = head.predict(z_dev, verbose=0)
        y_keras = head.predict(z_keras, verbose=0)
        fc1 = next((r for r in conv.layers if r.layer == "fc1"), None)
        value = {
            "kind": kind, "seed": seed, "method": method, "remaining": fraction,
            "windows": int(len(x)), "deployed_arsnr": float(arsnr(x, y_dev)),
            "keras_qat_arsnr": float(arsnr(x, y_keras)),
            "latent_max_abs_diff": float(np.abs(z_dev - z_keras).max()),
            "tflite_bytes": len(conv.tflite), "convert_seconds": convert_s,
            "runtime_ms_per_window": 1000 * run_s / len(x), "backend": interp.backend,
            "fc1_op": None if fc1 is None else fc1.op,
            "fc1_nonzeros": None if fc1 is None else int(fc1.nonzeros),
            "fc1_offset_csr_bytes": None if fc1 is None else int(fc1.sparse_bytes),
            "mcu": None,
        }
        if with_mcu and value["fc1_op"] in ("MAM_SPARSE", "MAC_SPARSE"):
            from mam_tf.bench import mcu

            value["mcu"] = mcu.bench_model(work / "tail.tflite")
        return value

    firmware = False
    if with_mcu:
        from mam_tf.device import mcu

        firmware = mcu.build_key()  # the firmware's sources: a kernel change redoes the counts
    params = {"method": method, "remaining": fraction, "windows": cfg.deploy_windows,
              "mode": "int16x8", "mcu": firmware}
    return run.stage("deploy", params, compute,
                     deps=[data_stage, train_stage, qat_stage, prune_stage],
                     label=f"deploy {kind.upper()} seed {seed} {method} {fraction:.0%}")


def _stage_records(cfg, run, train_stage, qat_stage, prune_stage, kind, seed):
    def compute(work):
        import ecg_data

        w = ecg_data.load_record_windows(cfg.records, bandpass=cfg.bandpass)
        if len(w) > cfg.record_windows:
            w = w[np.linspace(0, len(w) - 1, cfg.record_windows).astype(int)]
        float_model = _load(train_stage.file("model.keras"))
        qat = _load(qat_stage.file("qat_tail.keras"))
        twin, head = _float_twin(float_model, qat)
        comp = _qat_composite(qat, head)
        kernel, _ = _qat_fc1(qat)
        k = kernel.numpy()
        out = {"windows": int(len(w)), "float_arsnr": float(ecg_data.arsnr(
            w, float_model.predict(w, verbose=0, batch_size=256))), "points": []}
        for fraction in cfg.fractions:
            kernel.assign(k * _mask_from(prune_stage, "magnitude", fraction))
            out["points"].append({"remaining": fraction, "arsnr": float(ecg_data.arsnr(
                w, comp.predict(w, verbose=0, batch_size=256)))})
        kernel.assign(k)
        return out

    params = {"records": _dir_fingerprint(cfg.records), "bandpass": cfg.bandpass,
              "windows": cfg.record_windows}
    return run.stage("records", params, compute, deps=[train_stage, qat_stage, prune_stage],
                     label=f"records {kind.upper()} seed {seed}")


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
def run(cfg: Config, out_dir, *, progress=True, merge=None, print_fn=print) -> dict:
    """Runs (or resumes) the experiment into ``out_dir``; returns the results dict (also
    written to ``out_dir/results.json``)."""
    out = Path(out_dir)
    p = pl.Pipeline(out, NAME, config=dataclasses.asdict(cfg), progress=progress)
    seeds = list(cfg.seeds)
    if not seeds and not merge:
        raise ValueError("mwscas: no seeds to run (give --seeds, or --merge run folders)")
    if merge:
        p.import_stages(merge)
        for d in merge:
            res = Path(d) / "results.json"
            if res.is_file():
                other = pl.read_json(res)
                if other.get("scale") != cfg.scale:
                    raise ValueError(f"merge: '{d}' is a {other.get('scale')!r} run, this one "
                                     f"{cfg.scale!r}")
                seeds = sorted(set(seeds) | set(other.get("seeds", [])))
        cfg = dataclasses.replace(cfg, seeds=tuple(seeds))
    with_mcu, mcu_why = mcu_status() if cfg.mcu else (False, "not asked for (--no-mcu)")
    data = _stage_data(cfg, p)
    per = {}
    for seed in seeds:
        for kind in KINDS:
            tr = _stage_train(cfg, p, data, kind, seed)
            qa = _stage_qat(cfg, p, data, tr, kind, seed)
            pr = _stage_prune(cfg, p, data, tr, qa, kind, seed)
            ft = (_stage_fine_tune(cfg, p, data, tr, qa, pr, kind, seed)
                  if cfg.fine_tune else None)
            per[(kind, seed)] = {"train": tr, "qat": qa, "prune": pr, "fine_tune": ft,
                                 "deploy": [], "records": None}
    for seed in seeds:
        for kind, method, fraction in cfg.deploy:
            s = per[(kind, seed)]
            s["deploy"].append(_stage_deploy(cfg, p, data, s["train"], s["qat"], s["prune"],
                                             kind, seed, method, fraction, with_mcu))
    if cfg.records:
        for (kind, seed), s in per.items():
            s["records"] = _stage_records(cfg, p, s["train"], s["qat"], s["prune"], kind, seed)
    results = _collect(cfg, per, data, with_mcu, mcu_why)
    _write_outputs(cfg, out, per, results)
    pl.write_json(out / "results.json", results)
    table = _main_table(results)
    (out / "report.md").write_text(_report(cfg, results, table))
    p.write_manifest({"outputs": sorted(str(f.relative_to(out)) for f in out.rglob("*")
                                        if f.is_file() and "stages" not in f.parts)})
    results["wall_seconds"] = round(p.elapsed(), 1)
    if print_fn is not None:
        print_fn(f"\nseed 004 ({cfg.scale} scale, seeds {seeds}): ARSNR on "
                 f"{results['test_windows']} test windows, QAT int16x8 model, dB "
                 "(mean [min, max] over seeds)\n")
        print_fn(table)
        print_fn("\n" + _deploy_table(results))
        print_fn(f"\nwrote {out / 'report.md'}, results.json, figures and models "
                 f"({p.elapsed():.0f} s, {len(p.computed)} stages computed)")
    return results


def _method_points(per, kind, seed, method):
    """The per-seed point records of one method (the fine-tuned curve starts from the unpruned
    QAT model, the 100% point every method shares)."""
    pruned = per[(kind, seed)]["prune"].value["points"]
    if method != FINE_TUNED:
        return [q for q in pruned if q["method"] == method]
    unpruned = next(q for q in pruned if q["remaining"] >= 1.0)
    return [{**unpruned, "method": FINE_TUNED}] + per[(kind, seed)]["fine_tune"].value["points"]


def _methods(cfg):
    return tuple(cfg.methods) + ((FINE_TUNED,) if cfg.fine_tune else ())


def _collect(cfg, per, data, with_mcu, mcu_why):
    points = []
    for kind in KINDS:
        for method in _methods(cfg):
            fractions = (cfg.fractions if method != FINE_TUNED
                         else [f for f in cfg.fractions if f >= 1.0 or f in cfg.fine_tune])
            for fraction in fractions:
                rows = [next(q for q in _method_points(per, kind, s, method)
                             if q["remaining"] == fraction)
                        for s in cfg.seeds]
                deps = [d.value for s in cfg.seeds for d in per[(kind, s)]["deploy"]
                        if d.value["method"] == method and d.value["remaining"] == fraction]
                q = rp.summarize(r["arsnr"] for r in rows)
                f = rp.summarize(r["float_arsnr"] for r in rows)
                dv = rp.summarize(d["deployed_arsnr"] for d in deps)
                dk = rp.summarize(d["keras_qat_arsnr"] for d in deps)
                points.append({
                    "kind": kind, "method": method, "remaining": fraction,
                    "arsnr_mean": q["mean"], "arsnr_min": q["min"], "arsnr_max": q["max"],
                    "float_arsnr_mean": f["mean"], "float_arsnr_min": f["min"],
                    "float_arsnr_max": f["max"],
                    "fc1_bytes": int(round(np.mean([r["fc1_bytes"] for r in rows]))),
                    "fc1_values_bytes": int(round(np.mean([r["fc1_values_bytes"] for r in rows]))),
                    "fc1_nonzero": int(round(np.mean([r["fc1_nonzero"] for r in rows]))),
                    "deployed_arsnr": dv["mean"], "deployed_keras_arsnr": dk["mean"],
                    "deployed_windows": deps[0]["windows"] if deps else None,
                    "deployed_seeds": len(deps), "seeds": len(rows),
                })
    first = per[(KINDS[0], cfg.seeds[0])]["prune"].value
    from mam_tf.models import ecg_autoencoder

    budget = device_budget_bytes(ecg_autoencoder("mac"))
    return {
        "experiment": NAME, "scale": cfg.scale, "seeds": list(cfg.seeds),
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "data": data.value, "test_windows": first["test_windows"],
        "fc1_budget_bytes": budget,
        "points": points,
        "training": [{"kind": k, "seed": s, **v["train"].value,
                      "qat_test_arsnr": v["qat"].value["test_arsnr"],
                      "qat_seconds_per_epoch": v["qat"].value["seconds_per_epoch"]}
                     for (k, s), v in per.items()],
        "deployed": [d.value for v in per.values() for d in v["deploy"]],
        "records": [{"kind": k, "seed": s, **v["records"].value} for (k, s), v in per.items()
                    if v["records"] is not None] or None,
        "mcu": "included" if with_mcu else f"left out: {mcu_why}",
    }


def _write_outputs(cfg, out, per, results):
    models = out / "models"
    tfl = out / "tflite"
    models.mkdir(parents=True, exist_ok=True)
    for (kind, seed), s in per.items():
        _copy(s["train"].file("model.keras"), models / f"{kind}_seed{seed}.keras")
        _copy(s["qat"].file("qat_tail.keras"), models / f"{kind}_seed{seed}_qat.keras")
        if s["fine_tune"] is not None and 0.05 in cfg.fine_tune:
            _copy(s["fine_tune"].file("qat_tail_5pct.keras"),
                  models / f"{kind}_seed{seed}_qat_fine_tuned_5pct.keras")
        for d in s["deploy"]:
            v = d.value
            tfl.mkdir(exist_ok=True)
            _copy(d.file("tail.tflite"),
                  tfl / f"{kind}_seed{seed}_{v['method']}_{100 * v['remaining']:g}pct_int16x8.tflite")
    _figures(cfg, out, per, results)


def _copy(src, dest):
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


_STYLE = {("mac", "magnitude"): dict(color="tab:blue"),
          ("mam", "magnitude"): dict(color="tab:red"),
          ("mac", "activation_rate"): dict(color="tab:blue", linestyle="--", marker="s"),
          ("mam", "activation_rate"): dict(color="tab:red", linestyle="--", marker="s"),
          ("mac", FINE_TUNED): dict(color="tab:cyan", linestyle=":", marker="^"),
          ("mam", FINE_TUNED): dict(color="tab:orange", linestyle=":", marker="^")}
_METHOD_LABEL = {"magnitude": "magnitude", "activation_rate": "activation rate",
                 FINE_TUNED: "magnitude + fine-tune"}


def _pts(results, kind, method):
    return sorted((p for p in results["points"] if p["kind"] == kind and p["method"] == method),
                  key=lambda p: p["remaining"])


def _figures(cfg, out, per, results):
    n = len(results["seeds"])
    curves = []
    for kind in KINDS:
        for method in _methods(cfg):
            pts = _pts(results, kind, method)
            curves.append(rp.Curve(f"AE-{kind.upper()}, {_METHOD_LABEL[method]}",
                                   [100 * p["remaining"] for p in pts],
                                   [p["arsnr_mean"] for p in pts], [p["arsnr_min"] for p in pts],
                                   [p["arsnr_max"] for p in pts], **_STYLE[(kind, method)]))
    rp.plot_curves(out / "fig2_arsnr_vs_weights.png", curves,
                   xlabel="FC1 weights kept (%)", ylabel="ARSNR (dB)", xscale="log",
                   title=f"Seed 004 Fig. 2: QAT int16x8, pruning of FC1 "
                   f"(mean, min-max over {n} seed{'s' * (n > 1)})")
    curves = []
    for kind in KINDS:
        pts = _pts(results, kind, "magnitude")
        color = _STYLE[(kind, "magnitude")]["color"]
        curves.append(rp.Curve(f"AE-{kind.upper()}, offset-CSR", [p["fc1_bytes"] / 1e3 for p in pts],
                               [p["arsnr_mean"] for p in pts], [p["arsnr_min"] for p in pts],
                               [p["arsnr_max"] for p in pts], color=color))
        curves.append(rp.Curve(f"AE-{kind.upper()}, values only",
                               [p["fc1_values_bytes"] / 1e3 for p in pts],
                               [p["arsnr_mean"] for p in pts], color=color, linestyle="--",
                               marker="."))
    rp.plot_curves(out / "fig4_arsnr_vs_memory.png", curves, xlabel="FC1 memory (kB)",
                   ylabel="ARSNR (dB)", xscale="log",
                   vlines=[(results["fc1_budget_bytes"] / 1e3,
                            f"FC1 budget on a 512 kB SRAM device "
                            f"({results['fc1_budget_bytes'] / 1e3:.0f} kB)",
                            {"color": "black"})],
                   title="Seed 004 Fig. 4: ARSNR vs FC1 footprint (magnitude pruning)")
    if any(d.get("mcu") for d in results["deployed"]):
        _fig5(out, results)
    _fig6(cfg, out, per, results)


def _fig5(out, results):
    """Seed 004 Fig. 5: the deployed ARSNR (mean, min-max over seeds) and FC1's estimated time on
    the emulated Cortex-M7 vs weights kept; the kernel a Cortex-M7 build runs (the ARMv7E-M one
    where it was built) and, as flat lines, the dense MAC over all of FC1's weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def spread(values):
        v = np.asarray(values, dtype=float)
        return v.mean(), v.mean() - v.min(), v.max() - v.mean()

    def fc1_record(dep, kernel):
        recs = [r for r in (dep.get("mcu") or []) if r.get("kernel") == kernel]
        return next((r for r in recs if r.get("variant") == "optimized"),
                    recs[0] if recs else None)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    for kind in KINDS:
        op = "mam_sparse" if kind == "mam" else "mac_sparse"
        deps = [d for d in results["deployed"] if d["kind"] == kind]
        fractions = sorted({d["remaining"] for d in deps})
        if not fractions:
            continue
        color = _STYLE[(kind, "magnitude")]["color"]
        xs, ys, lo, hi = [], [], [], []
        for f in fractions:
            m, dl, dh = spread([d["deployed_arsnr"] for d in deps if d["remaining"] == f])
            xs.append(100 * f); ys.append(m); lo.append(dl); hi.append(dh)
        a1.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color=color, capsize=3,
                    label=f"AE-{kind.upper()}, int16x8 tail on the host runtime")
        timed = [(f, [fc1_record(d, op) for d in deps if d["remaining"] == f]) for f in fractions]
        timed = [(f, [r for r in rs if r is not None]) for f, rs in timed]
        timed = [(f, rs) for f, rs in timed if rs]
        if timed:
            xs, ys, lo, hi = [], [], [], []
            for f, rs in timed:
                m, dl, dh = spread([r["time_us"] / 1e3 for r in rs])
                xs.append(100 * f); ys.append(m); lo.append(dl); hi.append(dh)
            a2.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color=color, capsize=3,
                        label=f"FC1 {op.upper()} ({timed[0][1][0].get('variant')})")
    dense = [r for d in results["deployed"] for r in (d.get("mcu") or [])
             if r.get("kernel") in ("mac_dense", "cmsis_fc")]
    for kernel, style, label in (("mac_dense", ":", "dense MAC (portable), all weights"),
                                 ("cmsis_fc", "--", "CMSIS-NN FC, all weights")):
        rs = [r["time_us"] / 1e3 for r in dense if r["kernel"] == kernel]
        if rs:
            a2.axhline(float(np.median(rs)), color="tab:blue", linestyle=style, label=label)
    a1.set_ylabel("ARSNR (dB)")
    a2.set_ylabel("FC1 estimated time (ms)\n(QEMU instructions / 180 MHz, CPI 1)")
    a2.set_xlabel("FC1 weights kept (%)")
    a2.set_yscale("log")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    a1.set_title("Seed 004 Fig. 5: deployed tails and FC1 on the emulated Cortex-M7",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig5_mcu.png", dpi=130)
    plt.close(fig)


def _fig6(cfg, out, per, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = results["seeds"][0]
    fraction = 0.05 if 0.05 in cfg.fractions else min(cfg.fractions)
    tag = f"magnitude_{fraction:g}" if fraction < 1.0 else f"{cfg.methods[0]}_1"
    fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for ax, kind in zip(axes, KINDS):
        with np.load(per[(kind, seed)]["prune"].file("recon.npz")) as f:
            x, y = f["x"][0], f[tag][0]
        ax.plot(x, color="black", lw=1.4, label="input")
        ax.plot(y, color=_STYLE[(kind, "magnitude")]["color"], lw=1.1,
                label=f"AE-{kind.upper()}, FC1 at {fraction:.0%} (QAT)")
        from ecg_data import rsnr

        ax.set_title(f"AE-{kind.upper()}: RSNR {float(rsnr(x[None], y[None])[0]):.1f} dB",
                     fontsize=9)
        ax.set_ylabel("amplitude (scaled)")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("sample (256 Hz)")
    fig.suptitle(f"Seed 004 Fig. 6: a test window and its reconstructions (seed {seed})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "fig6_reconstruction.png", dpi=130)
    plt.close(fig)


def _cell(p):
    if p is None or p["arsnr_mean"] is None:
        return "-"
    if p["seeds"] > 1:
        return f"{p['arsnr_mean']:.2f} [{p['arsnr_min']:.2f}, {p['arsnr_max']:.2f}]"
    return f"{p['arsnr_mean']:.2f}"


def _main_table(results):
    methods = list(dict.fromkeys(p["method"] for p in results["points"]))
    fracs = sorted({p["remaining"] for p in results["points"]}, reverse=True)
    headers = ["FC1 kept"]
    for method in methods:
        for kind in KINDS:
            headers.append(f"{kind.upper()} {_METHOD_LABEL[method]}")
    headers += ["MAM FC1 bytes (CSR / values)", "MAC FC1 bytes (CSR / values)"]
    rows = []
    for f in fracs:
        row = [f"{100 * f:g}%"]
        for method in methods:
            for kind in KINDS:
                row.append(_cell(next((p for p in results["points"] if p["kind"] == kind and
                                       p["method"] == method and p["remaining"] == f), None)))
        for kind in ("mam", "mac"):
            p = next(p for p in results["points"] if p["kind"] == kind and
                     p["method"] == "magnitude" and p["remaining"] == f) \
                if "magnitude" in methods else None
            row.append("-" if p is None else f"{p['fc1_bytes']} / {p['fc1_values_bytes']}")
        rows.append(row)
    return rp.markdown_table(headers, rows)


def _deploy_table(results):
    rows = []
    for d in results["deployed"]:
        rows.append([d["kind"].upper(), str(d["seed"]), f"{d['method']} {100 * d['remaining']:g}%",
                     d["keras_qat_arsnr"], d["deployed_arsnr"],
                     d["deployed_arsnr"] - d["keras_qat_arsnr"],
                     f"{d['fc1_op']}: {d['fc1_nonzeros']} nonzeros, {d['fc1_offset_csr_bytes']} B"
                     if d["fc1_op"] else "FULLY_CONNECTED (dense int8)",
                     str(d["tflite_bytes"]), d["runtime_ms_per_window"]])
    head = ["model", "seed", "FC1", "Keras QAT (dB)", "int16x8 .tflite, host runtime (dB)",
            "difference (dB)", "FC1 op", ".tflite bytes", "ms / window (host)"]
    n = results["deployed"][0]["windows"] if results["deployed"] else 0
    return f"Deployed tails, on the first {n} test windows:\n\n" + rp.markdown_table(head, rows)


def _report(cfg, results, table):
    seeds = results["seeds"]
    lines = [
        f"# Seed 004 (MWSCAS 2023) reproduced: `{cfg.scale}` scale",
        "",
        f"Command: `mam-tf reproduce mwscas --scale {cfg.scale}{_command_overrides(cfg, seeds)}`"
        f" (seeds {seeds}; {results['data']['train']} training windows, {cfg.epochs} float "
        f"epochs (MAM: vanishing contributions, {_blend_words(cfg.vc_epochs)}), "
        f"{cfg.qat_epochs} QAT epochs).",
        "",
        f"ARSNR (dB) on {results['test_windows']} test windows of the QAT int16x8 autoencoder "
        f"(8-bit weights in [-1, 1], 16-bit activations), FC1 pruned one-shot"
        + (f" (magnitude + fine-tune: then {cfg.fine_tune_epochs} QAT epoch(s) with the mask "
           f"held, at {', '.join(f'{100 * f:g}%' for f in cfg.fine_tune)})"
           if cfg.fine_tune else "") + "; mean [min, max] "
        f"over {len(seeds)} seed(s). FC1 bytes: offset-CSR (8-bit values and offsets, 16-bit row "
        "counts, 32-bit bias) / values only.",
        "",
        table,
        "",
        _deploy_table(results),
        "",
        f"FC1 budget on a 512 kB SRAM device: {results['fc1_budget_bytes']} B (512 KiB minus the "
        "other tail layers' 8-bit weights and 32-bit biases minus FC1's 32 768 B int16 input "
        "buffer), the vertical line of Fig. 4.",
        "",
        "Training (per model):",
        "",
        rp.markdown_table(["model", "seed", "float ARSNR", "QAT ARSNR", "s / epoch", "QAT s / epoch"],
                          [[t["kind"].upper(), str(t["seed"]), t["test_arsnr"], t["qat_test_arsnr"],
                            t["seconds_per_epoch"], t["qat_seconds_per_epoch"]]
                           for t in results["training"]]),
        "",
        "Figures: `fig2_arsnr_vs_weights.png`, `fig4_arsnr_vs_memory.png`, "
        "`fig6_reconstruction.png`" + (", `fig5_mcu.png`" if results["mcu"] == "included" else "")
        + ".",
        "",
        f"Cortex-M7 figures: {results['mcu']}.",
    ]
    if results.get("records"):
        lines += ["", "Real ECG records (band-pass "
                  f"{cfg.bandpass} Hz): ARSNR (dB) of the models above on "
                  f"{results['records'][0]['windows']} record windows:", "",
                  rp.markdown_table(
                      ["model", "seed", "float"] + [f"QAT {100 * f:g}%" for f in cfg.fractions],
                      [[r["kind"].upper(), str(r["seed"]), r["float_arsnr"]]
                       + [q["arsnr"] for q in r["points"]] for r in results["records"]])]
    lines += ["", "What these numbers mean: the windows are synthetic (ECGSYN with white noise); "
              "a model trained on them learns that signal family. They show how MAC and MAM "
              "layers of the same autoencoder degrade under pruning, not how well a real ECG "
              "would be compressed: models trained on synthetic windows reach far lower ARSNR "
              "on real records (`--records`), and a model for real ECG is trained on real "
              "records (`--train-records`)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _cmd(args):
    from mam_tf.train.compat import tf

    tf.get_logger().setLevel("ERROR")  # retracing / AutoGraph notices drown the progress lines
    # With --merge and no --seeds, the merged runs' seeds are the run's seeds.
    seeds = tuple(args.seeds) if args.seeds else (() if args.merge else None)
    cfg = config_for(args.scale, seeds=seeds, fine_tune=args.fine_tune,
                     epochs=args.epochs, vc_epochs=args.vc_epochs, windows=args.windows,
                     records=args.records,
                     train_records=args.train_records, deploy_windows=args.deploy_windows)
    if args.no_mcu:
        cfg = dataclasses.replace(cfg, mcu=False)
    if args.no_bandpass:
        cfg = dataclasses.replace(cfg, bandpass=None)
    out = args.out or f"runs/{NAME}-{args.scale}"
    run(cfg, out, progress=not args.no_progress, merge=args.merge)
    return 0


def _fine_tune_arg(text):
    import argparse

    if text.strip().lower() == "none":
        return ()
    try:
        pcts = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fine-tune takes percentages like 5,2 or 'none', "
                                         f"got {text!r}") from None
    fracs = {round(f, 6) for f in FRACTIONS}
    bad = [p for p in pcts if round(p / 100, 6) not in fracs or p >= 100]
    if bad or not pcts:
        raise argparse.ArgumentTypeError(
            f"--fine-tune: percentages must be among the pruned points "
            f"{[f'{100 * f:g}' for f in FRACTIONS if f < 1]}, got {text!r}")
    return tuple(next(f for f in FRACTIONS if round(f, 6) == round(p / 100, 6)) for p in pcts)


def add_command(subparsers, common):
    """Adds ``reproduce mwscas`` (``common``: the shared options' parent parser)."""
    p = subparsers.add_parser(
        NAME, parents=[common], help="seed 004: the ECG autoencoder, MAC vs MAM under pruning, "
        "QAT int16x8, deployed", description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    g = p.add_argument_group("mwscas options")
    g.add_argument("--records", default=None, metavar="DIR",
                   help="also evaluate every trained model on the WFDB records of DIR "
                   "(e.g. MIT-BIH Arrhythmia, lead MLII)")
    g.add_argument("--train-records", default=None, metavar="DIR",
                   help="train on the windows of the WFDB records of DIR instead of synthetic ones")
    g.add_argument("--no-bandpass", action="store_true",
                   help="do not band-pass filter records (default 0.5-40 Hz before windowing)")
    g.add_argument("--no-mcu", action="store_true",
                   help="leave out the Cortex-M7 figures even when mam_tf.bench.mcu and its "
                   "toolchain are present")
    g.add_argument("--epochs", type=int, default=None, help="float epochs (default: the scale's)")
    g.add_argument("--vc-epochs", type=int, default=None, metavar="N",
                   help="MAM: epochs of the MAC -> MAM blend, beta from 1 down to 0 in N "
                   "equal steps, one per epoch (default: the scale's, 1: the first epoch MAC)")
    g.add_argument("--fine-tune", type=_fine_tune_arg, default=None, metavar="PCT,...|none",
                   help="FC1 percentages kept at which the magnitude-pruned model is also "
                   "fine-tuned (an epoch of QAT with the mask held), e.g. 5,2; 'none' for no "
                   "fine-tuned curve (default: the scale's; small: 20,10,5,2,1)")
    g.add_argument("--windows", type=int, default=None,
                   help="synthetic windows in all (default: the scale's)")
    g.add_argument("--deploy-windows", type=int, default=None,
                   help="test windows run through the host runtime per deployed model "
                   "(default: the scale's; about 60-120 ms each on a 2-core machine)")
    p.set_defaults(func=_cmd)
    return p
