"""`reproduce transformer`: the stages (data, train, prune, deploy) and their aggregation.

Each function returns a stage's ``compute(workdir)`` for the
:class:`~mam_tf.experiments.pipeline.Pipeline`; :func:`run_stages` runs them for every kind
(MAC, MAM) and seed and aggregates the accuracies over the seeds.
"""
from __future__ import annotations

import time

import numpy as np

from mam_tf.experiments.base import fit_callbacks
from mam_tf.experiments.report import summarize
from mam_tf.experiments.transformer.config import KINDS
from mam_tf.experiments.transformer.task import CLASSES

__all__ = ["run_stages"]


def _make_data(p):
    def compute(work):
        from mam_tf.experiments.transformer.task import repeat_count_task

        shape = dict(tokens=p["tokens"], symbols=p["symbols"], noise=p["noise"])
        x, y = repeat_count_task(p["samples"], seed=p["data_seed"], **shape)
        x_test, y_test = repeat_count_task(p["test"], seed=p["data_seed"] + 1_000_003, **shape)
        np.savez(work / "data.npz", x=x, y=y, x_test=x_test, y_test=y_test)
        return {"classes": CLASSES, "test_class_counts": np.bincount(y_test, minlength=CLASSES)}
    return compute


def _data(stage):
    with np.load(stage.file("data.npz")) as z:
        return {k: z[k] for k in z.files}


def _accuracy(model, x, y):
    return float((model.predict(x, batch_size=512, verbose=0).argmax(-1) == y).mean())


def _loss():
    from mam_tf.train.compat import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train(data_stage, p, progress):
    def compute(work):
        from mam_tf.models import token_transformer
        from mam_tf.train.compat import keras
        from mam_tf.train.schedule import VanishingContributions

        d = _data(data_stage)
        model = token_transformer(d["x"].shape[1], d["x"].shape[2], CLASSES, p["kind"],
                                  width=p["width"], heads=p["heads"], hidden=p["hidden"],
                                  seed=p["seed"])
        model.compile(keras.optimizers.Adam(p["lr"]), _loss())
        callbacks = fit_callbacks("transformer", progress, p["epochs"],
                                  f"train {p['kind']} seed {p['seed']}")
        if p["kind"] == "mam":
            callbacks.append(VanishingContributions(length=p["vc_epochs"]))
        t0 = time.perf_counter()
        hist = model.fit(d["x"], d["y"], epochs=p["epochs"], batch_size=p["batch_size"],
                         callbacks=callbacks, verbose=0)
        seconds = time.perf_counter() - t0
        model.save(work / "model.keras")
        return {"accuracy": _accuracy(model, d["x_test"], d["y_test"]), "train_seconds": seconds,
                "final_loss": float(hist.history["loss"][-1])}
    return compute


def _prune(data_stage, train_stage, p):
    def compute(work):
        from mam_tf.models.token_transformer import MLP_LAYERS
        from mam_tf.train import pruning
        from mam_tf.train.compat import keras

        d = _data(data_stage)
        model = keras.models.load_model(train_stage.file("model.keras"), compile=False)
        pruned = pruning.prune_magnitude(model, remaining=p["remaining"], layers=list(MLP_LAYERS))
        one_shot = _accuracy(pruned, d["x_test"], d["y_test"])
        keras.utils.set_random_seed(p["seed"])
        pruning.fine_tune(pruned, d["x"], d["y"], optimizer=keras.optimizers.Adam(p["lr"]),
                          loss=_loss(), epochs=p["epochs"], batch_size=p["batch_size"],
                          callbacks=fit_callbacks("transformer", False, p["epochs"],
                                                  f"fine-tune {p['kind']} seed {p['seed']}"))
        stripped = pruning.strip_pruning(pruned)
        stripped.save(work / "pruned.keras")
        kernels = [stripped.get_layer(name).kernel.numpy() for name in MLP_LAYERS]
        return {"one_shot": one_shot, "fine_tuned": _accuracy(stripped, d["x_test"], d["y_test"]),
                "nonzero": int(sum(np.count_nonzero(k) for k in kernels)),
                "total": int(sum(k.size for k in kernels))}
    return compute


def _device(tflite, x_raw, host_out):
    """The sparse ops on the emulated Cortex-M7 (:mod:`mam_tf.device.measure`), or why not;
    and the whole model in TFLite-Micro there when the build has a TFLite-Micro library: its
    output on every device sample against the host runtime's, each operator's instructions in
    the first sample (``ops``: [name, instructions] in execution order) and their sum."""
    from mam_tf.device import mcu
    from mam_tf.device.measure import sparse_ops_on_device

    ok, why = mcu.toolchain_available()
    if not ok:
        return {"ran": False, "reason": why}
    b = mcu.build()
    records = sparse_ops_on_device(tflite, x_raw, b, probe=False)  # probed by _deploy
    result = {"ran": True, "equal": all(r["equal"] for r in records), "ops": records,
              "whole_model": None}
    if b.model_elf is not None:
        try:
            run = mcu.run_model(tflite, x_raw, b)
        except mcu.McuError as err:  # e.g. a builtin the model firmware does not register
            result["whole_model"] = {"ran": False, "reason": " ".join(str(err).split())[-400:]}
        else:
            result["whole_model"] = {"ran": True,
                                     "equal": bool(np.array_equal(run["output"], host_out)),
                                     "ops": run["ops"], "arena_used": run["arena_used"],
                                     "instructions": sum(c for _, c in run["ops"])}
    return result


def _deploy(data_stage, prune_stage, p):
    def compute(work):
        from mam_tf.deploy.convert import convert
        from mam_tf.deploy.runtime import Interpreter
        from mam_tf.train.compat import keras

        d = _data(data_stage)
        model = keras.models.load_model(prune_stage.file("pruned.keras"), compile=False)
        mam = p["kind"] == "mam"
        # The MAC MLP goes to MAC_SPARSE: the same offset-CSR storage, FULLY_CONNECTED's results.
        conv = convert(model, d["x"][:p["calibration"]], mode="int8", require_mam=mam,
                       mac_sparse_below=None if mam else 0.5, return_report=True)
        (work / "model.tflite").write_bytes(conv.tflite)
        x, y = d["x_test"][:p["deploy_test"]], d["y_test"][:p["deploy_test"]]
        interp = Interpreter(conv.tflite)  # checks the model, TFLite-Micro's kernels included
        x_raw = interp.quantize_input(x)
        logits = interp.run_raw(x_raw)
        np.save(work / "host_logits.npy", logits)
        return {"int8": float((logits.argmax(-1) == y).mean()),
                "float": _accuracy(model, x, y), "samples": int(len(y)),
                "model_bytes": len(conv.tflite),
                "layers": [{"layer": r.layer, "op": r.op, "shape": list(r.shape),
                            "nonzeros": r.nonzeros, "sparse_bytes": r.sparse_bytes,
                            "dense_int8_bytes": r.dense_int8_bytes} for r in conv.layers],
                "device": _device(conv.tflite, x_raw[:p["device_samples"]],
                                  logits[:p["device_samples"]])}
    return compute


def _model_params(cfg):
    keys = ("width", "heads", "hidden", "epochs", "vc_epochs", "lr", "batch_size")
    return {k: getattr(cfg, k) for k in keys}


def run_stages(cfg, pipe):
    """Every stage for every kind and seed; returns (results, context)."""
    data_params = {k: getattr(cfg, k) for k in ("samples", "test", "tokens", "symbols", "noise",
                                                "data_seed")}
    data = pipe.stage("data", data_params, _make_data(data_params))
    asked = []
    for seed in cfg.seeds:
        for kind in KINDS:
            p = {"kind": kind, "seed": int(seed), **_model_params(cfg)}
            train = pipe.stage("train", p, _train(data, p, pipe.show_progress), deps=[data],
                               label=f"train {kind} seed {seed}")
            pp = {**p, "remaining": cfg.remaining, "epochs": cfg.fine_tune_epochs,
                  "lr": cfg.fine_tune_lr}
            pruned = pipe.stage("prune", pp, _prune(data, train, pp), deps=[data, train],
                                label=f"prune {kind} seed {seed}")
            dp = {"kind": kind, "calibration": cfg.calibration, "deploy_test": cfg.deploy_test,
                  "device_samples": cfg.device_samples}
            deploy = pipe.stage("deploy", dp, _deploy(data, pruned, dp), deps=[data, pruned],
                                label=f"deploy {kind} seed {seed}")
            asked.append((kind, seed, train, pruned, deploy))
    # Values are read once every stage is asked for: on a cluster they run side by side.
    runs = []
    for kind, seed, train, pruned, deploy in asked:
        runs.append({"kind": kind, "seed": int(seed), "remaining": cfg.remaining,
                     "trained": train.value["accuracy"],
                     "one_shot": pruned.value["one_shot"],
                     "fine_tuned": pruned.value["fine_tuned"],
                     "int8": deploy.value["int8"], "float_on_deployed": deploy.value["float"],
                     "nonzero": pruned.value["nonzero"], "total": pruned.value["total"],
                     "model_bytes": deploy.value["model_bytes"],
                     "layers": deploy.value["layers"], "device": deploy.value["device"],
                     "tflite": str(deploy.path / "model.tflite")})
    summary = {kind: {key: summarize([r[key] for r in runs if r["kind"] == kind])
                      for key in ("trained", "one_shot", "fine_tuned", "int8")}
               for kind in KINDS}
    return {"chance": 1.0 / CLASSES, "runs": runs, "summary": summary}, None
