"""`reproduce mwscas`: the stages (data, train, QAT, prune, fine-tune, deploy, records).

Each function runs one stage through the :class:`~mam_tf.experiments.pipeline.Pipeline` (or
reads it back); :func:`run_stages` runs them all for a config and aggregates their results.
"""
from __future__ import annotations

import time

import numpy as np

from mam_tf.experiments.mwscas.config import FINE_TUNED, KINDS, METHODS, dir_fingerprint
from mam_tf.experiments.mwscas.results import collect

__all__ = ["run_stages", "mcu_status", "mask_from"]


def _fc1(qat):
    """(kernel variable, sparsity-mask variable) of FC1 inside its QAT wrapper."""
    from mam_tf.train import pruning

    return pruning.quantized_kernel(qat, "fc1")


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


def _stop_on_divergence(what, kind, seed):
    """The callback that stops a fit at a NaN or infinite loss, naming the stage and seed."""
    from mam_tf.train.divergence import StopOnDivergence

    return StopOnDivergence(f"mwscas {what} {kind.upper()} seed {seed}")


def _stage_train(cfg, run, data_stage, kind, seed):
    def compute(work):
        from mam_tf.train.layers import mam_layers
        from mam_tf.train.schedule import VanishingContributions
        from mam_tf.train.compat import keras
        from mam_tf.models import ecg_autoencoder
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        model = ecg_autoencoder(kind, seed=seed)
        model.compile(keras.optimizers.Adam(cfg.lr), "mse")
        callbacks = [_stop_on_divergence("train", kind, seed)]
        if kind == "mam":
            callbacks.append(VanishingContributions(length=cfg.vc_epochs))
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


def _load_keras(path):
    # Registers the QAT wrappers' classes: a resumed run reads a QAT tail back in a fresh
    # process, before any stage that quantizes has imported it.
    from mam_tf.train import quantization  # noqa: F401
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

        # Seeded here: otherwise its shuffling would follow from whatever the process drew
        # before (the training stage in one run, nothing in a run resumed after training).
        keras.utils.set_random_seed(int(seed))
        d = _load_npz(data_stage)
        tail, head = split(_load_keras(train_stage.file("model.keras")))
        qat = quantization.quantize_model(tail, "int16x8", weight_range=(-1, 1),
                                          input_range=(-1, 1))
        comp = _qat_composite(qat, head)
        comp.compile(keras.optimizers.Adam(cfg.qat_lr), "mse")
        t0 = time.perf_counter()
        comp.fit(d["train"], d["train"], validation_data=(d["val"], d["val"]),
                 epochs=cfg.qat_epochs, batch_size=cfg.batch_size, verbose=_fit_verbose(run),
                 callbacks=[_stop_on_divergence("QAT", kind, seed)])
        seconds = time.perf_counter() - t0
        _save(qat, work / "qat_tail.keras")
        test = d["test"]  # the whole split: this stage's key does not hold eval_windows
        return {"test_arsnr": float(arsnr(test, comp.predict(test, verbose=0, batch_size=256))),
                "seconds_per_epoch": seconds / max(cfg.qat_epochs, 1)}

    return run.stage("qat", cfg.qat_params(), compute, deps=[data_stage, train_stage],
                     label=f"QAT {kind.upper()} seed {seed}")


def _float_twin(float_model, qat_tail):
    """The float tail holding the QAT-tuned weights (QAT trains the float variables inside its
    wrappers), and the float head."""
    from mam_tf.models import split
    from mam_tf.train import pruning

    tail, head = split(float_model)
    by_inner = {getattr(layer, "layer", layer).name: layer for layer in qat_tail.layers}
    for layer in tail.layers:
        if not layer.weights:
            continue
        wrapper = by_inner[layer.name]
        inner = getattr(wrapper, "layer", wrapper)
        # A QAT wrapper holds the kernel itself; the bias and beta stay in the inner layer.
        found = ({"kernel": pruning.quantized_kernel(qat_tail, layer.name)[0]}
                 if wrapper is not inner else {})
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
        pruned = pruning.prune_magnitude(twin, remaining=fraction, layers=["fc1"])
    elif method == "activation_rate":
        pruned = pruning.prune_activation_rate(twin, rate_data, remaining=fraction, layers=["fc1"])
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
        float_model = _load_keras(train_stage.file("model.keras"))
        qat = _load_keras(qat_stage.file("qat_tail.keras"))
        twin, head = _float_twin(float_model, qat)
        comp = _qat_composite(qat, head)
        x = keras.Input((256,))
        float_comp = keras.Model(x, head(twin(x)))
        kernel, sparsity = _fc1(qat)
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
            float_model = _load_keras(train_stage.file("model.keras"))
            qat = _load_keras(qat_stage.file("qat_tail.keras"))
            mask = mask_from(prune_stage, "magnitude", fraction)
            kernel, sparsity = _fc1(qat)
            if sparsity is None:  # quantize_model's weight quantizers all hold a mask
                raise ValueError(f"mwscas: QAT tail of {kind.upper()} seed {seed} has no "
                                 "sparsity mask on FC1; fine-tuning would regrow pruned weights")
            kernel.assign(kernel.numpy() * mask)
            sparsity.assign(mask.astype(np.float32))
            comp = _qat_composite(qat, split(float_model)[1])
            comp.compile(keras.optimizers.Adam(cfg.qat_lr), "mse")
            comp.fit(d["train"], d["train"], epochs=cfg.fine_tune_epochs,
                     batch_size=cfg.batch_size, shuffle=True, verbose=_fit_verbose(run),
                     callbacks=[_stop_on_divergence(f"fine-tune at {fraction:g} kept", kind,
                                                    seed)])
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


def mask_from(prune_stage, method, fraction):
    tag = f"{method}_{fraction:g}" if fraction < 1.0 else None
    with np.load(prune_stage.file("masks.npz")) as f:
        shape = tuple(int(v) for v in f["shape"])
        if tag is None:
            tag = next(k for k in f.files if k.endswith("_1"))
        bits = f[tag]
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool)


def _stage_deploy(cfg, run, data_stage, train_stage, qat_stage, prune_stage, kind, seed,
                  method, fraction, with_mcu):
    def compute(work):
        from mam_tf.deploy.convert import convert
        from mam_tf.deploy.runtime import Interpreter
        from mam_tf.models import split
        from ecg_data import arsnr

        d = _load_npz(data_stage)
        x = d["test"][:cfg.deploy_windows]
        _, head = split(_load_keras(train_stage.file("model.keras")))
        qat = _load_keras(qat_stage.file("qat_tail.keras"))
        mask = mask_from(prune_stage, method, fraction)
        kernel, sparsity = _fc1(qat)
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
            from mam_tf.device import measure

            value["mcu"] = measure.bench_model(work / "tail.tflite")
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
        float_model = _load_keras(train_stage.file("model.keras"))
        qat = _load_keras(qat_stage.file("qat_tail.keras"))
        twin, head = _float_twin(float_model, qat)
        comp = _qat_composite(qat, head)
        kernel, _ = _fc1(qat)
        k = kernel.numpy()
        out = {"windows": int(len(w)), "float_arsnr": float(ecg_data.arsnr(
            w, float_model.predict(w, verbose=0, batch_size=256))), "points": []}
        for fraction in cfg.fractions:
            kernel.assign(k * mask_from(prune_stage, "magnitude", fraction))
            out["points"].append({"remaining": fraction, "arsnr": float(ecg_data.arsnr(
                w, comp.predict(w, verbose=0, batch_size=256)))})
        kernel.assign(k)
        return out

    params = {"records": dir_fingerprint(cfg.records), "bandpass": cfg.bandpass,
              "windows": cfg.record_windows}
    return run.stage("records", params, compute, deps=[train_stage, qat_stage, prune_stage],
                     label=f"records {kind.upper()} seed {seed}")


def mcu_status():
    """(available, why not): whether the Cortex-M7 toolchain (arm-none-eabi-gcc, newlib,
    qemu-system-arm) is here."""
    from mam_tf.device import mcu

    ok, why = mcu.toolchain_available()
    return bool(ok), why


def run_stages(cfg, p):
    """Runs (or reads back) every stage of ``cfg`` in the pipeline ``p``; returns the
    aggregated results and the stages by ``(kind, seed)`` (what the outputs copy and plot)."""
    with_mcu, mcu_why = mcu_status() if cfg.mcu else (False, "not asked for (--no-mcu)")
    data = _stage_data(cfg, p)
    per = {}
    for seed in cfg.seeds:
        for kind in KINDS:
            tr = _stage_train(cfg, p, data, kind, seed)
            qa = _stage_qat(cfg, p, data, tr, kind, seed)
            pr = _stage_prune(cfg, p, data, tr, qa, kind, seed)
            ft = (_stage_fine_tune(cfg, p, data, tr, qa, pr, kind, seed)
                  if cfg.fine_tune else None)
            per[(kind, seed)] = {"train": tr, "qat": qa, "prune": pr, "fine_tune": ft,
                                 "deploy": [], "records": None}
    for seed in cfg.seeds:
        for kind, method, fraction in cfg.deploy:
            s = per[(kind, seed)]
            s["deploy"].append(_stage_deploy(cfg, p, data, s["train"], s["qat"], s["prune"],
                                             kind, seed, method, fraction, with_mcu))
    if cfg.records:
        for (kind, seed), s in per.items():
            s["records"] = _stage_records(cfg, p, s["train"], s["qat"], s["prune"], kind, seed)
    return collect(cfg, per, data, with_mcu, mcu_why), per
