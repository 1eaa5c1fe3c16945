"""`reproduce biocas`: the stages (data, train, sweep, deploy).

Each function returns a stage's ``compute(workdir)`` for the
:class:`~mam_tf.experiments.pipeline.Pipeline`; :func:`run_stages` runs them all for a config,
aggregates their results and chooses the oracles to deploy.
"""
from __future__ import annotations

import time

import numpy as np

from mam_tf.experiments.biocas.config import HIDDEN, TOLERANCE_DB, method_name
from mam_tf.experiments.biocas.results import (
    aggregate, chosen_point, min_remaining_keeping_baseline,
)
from mam_tf.experiments.base import fit_callbacks
from mam_tf.experiments.report import summarize

__all__ = ["Data", "run_stages"]


def _make_data(p):
    def compute(work):
        from ecg_data import cs, synthetic_windows

        t0 = time.perf_counter()
        x = synthetic_windows(p["windows"] + p["test"], length=p["n"], fs=p["fs"],
                              snr_db=p["snr_db"], seed=p["data_seed"]).astype(np.float64)
        A = cs.sensing_matrix(p["m"], p["n"], p["sensing"], orthonormal_rows=p["orthonormal_rows"],
                              seed=p["data_seed"])
        D = cs.wavelet_basis(p["n"], p["wavelet"])
        y = cs.measure(x, A)
        labels, k = cs.support_labels(x, A, D, return_k=True)
        np.savez(work / "data.npz", x=x, y=y.astype(np.float32), labels=labels, A=A, D=D)
        test = slice(p["windows"], None)
        oracle = cs.arsnr(x[test], cs.least_squares_reconstruction(y[test], A, D, labels[test]))
        return {"seconds": time.perf_counter() - t0, "mean_support": float(k.mean()),
                "true_support_arsnr": oracle}
    return compute


class Data:
    """The data stage's arrays: train / test measurements, labels and windows, A and D."""

    def __init__(self, stage):
        with np.load(stage.file("data.npz")) as z:
            arrays = {k: z[k] for k in z.files}
        n_train = stage.params["windows"]
        self.A, self.D = arrays["A"], arrays["D"]
        self.m = self.A.shape[0]
        self.y_train, self.y_test = arrays["y"][:n_train], arrays["y"][n_train:]
        self.l_train = arrays["labels"][:n_train].astype(np.float32)
        self.x_test = arrays["x"][n_train:]

    def reconstruct(self, probabilities, threshold):
        from ecg_data import least_squares_reconstruction
        from mam_tf.models import predict_support

        support = predict_support(probabilities, self.m, threshold)
        return least_squares_reconstruction(self.y_test[: len(support)], self.A, self.D, support)

    def arsnr(self, probabilities, threshold):
        from ecg_data import arsnr

        return arsnr(self.x_test[: len(probabilities)], self.reconstruct(probabilities, threshold))


def _fit_callbacks(progress, epochs, desc):
    return fit_callbacks("biocas", progress, epochs, desc)


def _train(data_stage, p, progress):
    def compute(work):
        from mam_tf.train.compat import keras
        from mam_tf.train.schedule import VanishingContributions
        from mam_tf.models import cs_oracle

        d = Data(data_stage)
        t0 = time.perf_counter()
        model = cs_oracle(d.m, d.A.shape[1], p["kind"], seed=p["seed"])
        model.compile(keras.optimizers.Adam(p["lr"]), "binary_crossentropy")
        callbacks = _fit_callbacks(progress, p["epochs"], f"train {p['kind']} seed {p['seed']}")
        if p["kind"] == "mam":
            callbacks.append(VanishingContributions(length=p["vc_epochs"]))
        keras.utils.set_random_seed(p["seed"])
        hist = model.fit(d.y_train, d.l_train, epochs=p["epochs"], batch_size=p["batch_size"],
                         callbacks=callbacks, verbose=0)
        seconds = time.perf_counter() - t0
        model.save(work / "model.keras")
        probs = model.predict(d.y_test, batch_size=1024, verbose=0)
        np.save(work / "examples.npy", probs[:8])
        return {"arsnr": d.arsnr(probs, p["threshold"]), "train_seconds": seconds,
                "final_loss": float(hist.history["loss"][-1])}
    return compute


def _fine_tune_args(p, d, desc):
    from mam_tf.train.compat import keras

    return dict(x=d.y_train, y=d.l_train, optimizer=keras.optimizers.Adam(p["fine_tune_lr"]),
                loss="binary_crossentropy", epochs=p["fine_tune_epochs"],
                batch_size=p["batch_size"], verbose=0,
                callbacks=_fit_callbacks(False, p["fine_tune_epochs"], desc))


def _sweep(data_stage, train_stage, p, progress):
    def compute(work):
        from mam_tf.train.compat import keras
        from mam_tf.train import pruning

        d = Data(data_stage)
        model = keras.models.load_model(train_stage.file("model.keras"), compile=False)
        metric = lambda m: d.arsnr(m.predict(d.y_test, batch_size=1024, verbose=0),  # noqa: E731
                                   p["threshold"])
        one_shot = []

        def tune(pruned):
            one_shot.append(metric(pruned))
            if p["fine_tune_epochs"] > 0:
                keras.utils.set_random_seed(p["seed"])
                kept = p["fractions"][len(one_shot) - 1]
                pruning.fine_tune(pruned, **_fine_tune_args(
                    p, d, f"fine-tune {p['kind']} {p['method']} at {kept:g} kept seed "
                    f"{p['seed']}"))

        t0 = time.perf_counter()
        rows = pruning.sweep(model, list(p["fractions"]), metric,
                             method=p["method"], data=d.y_train, layers=HIDDEN, scope=p["scope"],
                             fine_tune=tune, progress=progress)
        points = []
        for f, row, first in zip(p["fractions"], rows, one_shot):
            points.append({"remaining": f, "fine_tuned": False, "arsnr": first,
                           "nonzero": row["nonzero"], "total": row["total"]})
            if p["fine_tune_epochs"] > 0:
                points.append({"remaining": f, "fine_tuned": True, "arsnr": row["metric"],
                               "nonzero": row["nonzero"], "total": row["total"]})
        return {"points": points, "seconds": time.perf_counter() - t0}
    return compute


def _deploy(data_stage, train_stage, p):
    def compute(work):
        from mam_tf.train.compat import keras
        from mam_tf.train import pruning
        from mam_tf.deploy.convert import convert
        from mam_tf.deploy.runtime import Interpreter

        d = Data(data_stage)
        model = keras.models.load_model(train_stage.file("model.keras"), compile=False)
        if p["remaining"] < 1.0:
            if p["method"] == "magnitude":
                model = pruning.prune_magnitude(model, remaining=p["remaining"], layers=HIDDEN,
                                                scope=p["scope"])
            else:
                model = pruning.prune_activation_rate(model, d.y_train, remaining=p["remaining"],
                                                      layers=HIDDEN, scope=p["scope"])
            if p["fine_tuned"]:
                keras.utils.set_random_seed(p["seed"])
                pruning.fine_tune(model, **_fine_tune_args(
                    p, d, f"deploy fine-tune {p['kind']} at {p['remaining']:g} kept seed "
                    f"{p['seed']}"))
            model = pruning.strip_pruning(model)
        model.save(work / "pruned.keras")
        t0 = time.perf_counter()
        conv = convert(model, d.y_train[:500], mode="int8", mac_sparse_below=0.5,
                       require_mam=p["kind"] == "mam", return_report=True)
        (work / "oracle.tflite").write_bytes(conv.tflite)
        interp = Interpreter(conv.tflite)
        dev = interp.run(d.y_test)
        ref = model.predict(d.y_test, batch_size=1024, verbose=0)
        np.save(work / "examples.npy", dev[:8])
        from mam_tf.deploy import flatbuffer as fb

        tfl = fb.load(conv.tflite)
        support_dev = dev > p["threshold"]
        support_ref = ref > p["threshold"]
        return {
            "keras_arsnr": d.arsnr(ref, p["threshold"]),
            "device_arsnr": d.arsnr(dev, p["threshold"]),
            "max_abs_probability_diff": float(np.abs(dev - ref).max()),
            "output_step": float(interp.output_quantization[0][0]),
            "support_agreement": float((support_dev == support_ref).mean()),
            "ops": [fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators],
            "layers": [{"layer": r.layer, "op": r.op, "nonzeros": r.nonzeros,
                        "sparse_bytes": r.sparse_bytes, "dense_int8_bytes": r.dense_int8_bytes}
                       for r in conv.layers],
            "tflite_bytes": len(conv.tflite),
            "backend": interp.backend,
            "seconds": time.perf_counter() - t0,
        }
    return compute


def run_stages(cfg, run):
    """Runs (or reads back) every stage of ``cfg`` in the pipeline ``run``; returns the
    aggregated results and what the outputs need (the data, trained and deployed stages)."""
    progress = run.show_progress
    data_params = cfg.data_params()
    data = run.stage("data", data_params, _make_data(data_params),
                     label=f"data ({cfg.windows} + {cfg.test} windows, m={cfg.m})")
    trained, sweeps = {}, {}
    train_keys = ("epochs", "vc_epochs", "lr", "batch_size", "threshold")
    for seed in cfg.seeds:
        for kind in ("mac", "mam"):
            p = {"kind": kind, "seed": seed, **{k: getattr(cfg, k) for k in train_keys}}
            if kind == "mac":
                p.pop("vc_epochs")
            trained[kind, seed] = run.stage("train", p, _train(data, p, progress),
                                            deps=[data], label=f"train {kind} seed {seed}")
        for kind, method, scope in cfg.sweeps:
            p = {"kind": kind, "method": method, "scope": scope, "seed": seed,
                 "fractions": list(cfg.fractions), "fine_tune_epochs": cfg.fine_tune_epochs,
                 "fine_tune_lr": cfg.fine_tune_lr, "batch_size": cfg.batch_size,
                 "threshold": cfg.threshold}
            st = run.stage("sweep", p, _sweep(data, trained[kind, seed], p, progress),
                           deps=[data, trained[kind, seed]],
                           label=f"sweep {kind} {method_name(method, scope)} seed {seed}")
            sweeps.setdefault((kind, method, scope), []).append(st)
    # Values are read once every sweep is asked for: on a cluster they run side by side.
    sweeps = {k: [st.value for st in v] for k, v in sweeps.items()}

    points = aggregate(sweeps)
    unpruned = {kind: summarize(trained[kind, s].value["arsnr"] for s in cfg.seeds)
                for kind in ("mac", "mam")}
    baseline = unpruned["mac"]["mean"]
    kept = {kind: min_remaining_keeping_baseline(points, baseline, kind,
                                                unpruned=unpruned[kind]["mean"])
            for kind in ("mac", "mam")}
    kept_by = {}
    for pt in points:
        name = f"{pt['kind']} {pt['method']} {'fine-tuned' if pt['fine_tuned'] else 'one-shot'}"
        sub = [q for q in points if (q["kind"], q["method"], q["fine_tuned"])
               == (pt["kind"], pt["method"], pt["fine_tuned"])]
        kept_by[name] = min_remaining_keeping_baseline(sub, baseline, pt["kind"],
                                                       unpruned=unpruned[pt["kind"]]["mean"])

    # Deploy (first seed), for each kind: the point that kept the baseline at the smallest
    # fraction, and the best one-shot and the best fine-tuned point at each of ``deploy_at``.
    deployed = []
    seed0 = cfg.seeds[0]
    for kind in ("mac", "mam"):
        best = chosen_point(points, kind, kept[kind]) if kept[kind] else None
        wanted = [(kept[kind] or 1.0, best)]
        for f in cfg.deploy_at:
            for ft in (False, True):
                chosen = chosen_point(points, kind, f, ft)
                if chosen is not None and all(chosen is not w[1] for w in wanted):
                    wanted.append((f, chosen))
        for fraction, chosen in wanted:
            method, scope = "none", "global"
            if chosen is not None:
                method = chosen["method"].replace("_per_layer", "")
                scope = "layer" if chosen["method"].endswith("_per_layer") else "global"
            p = {"kind": kind, "seed": seed0, "remaining": fraction, "method": method,
                 "scope": scope, "fine_tuned": bool(chosen and chosen["fine_tuned"]),
                 "fine_tune_epochs": cfg.fine_tune_epochs,
                 "fine_tune_lr": cfg.fine_tune_lr, "batch_size": cfg.batch_size,
                 "threshold": cfg.threshold}
            st = run.stage("deploy", p, _deploy(data, trained[kind, seed0], p),
                           deps=[data, trained[kind, seed0]],
                           label=f"deploy {kind} int8 at {fraction:.0%} kept, seed {seed0}")
            deployed.append(({**{k: p[k] for k in ("kind", "seed", "remaining", "fine_tuned")},
                              "method": method_name(method, scope) if method != "none"
                              else "none"}, st))
    deployed = [({**d, **st.value}, st) for d, st in deployed]

    results = {
        "baseline_arsnr": baseline,
        "tolerance_db": TOLERANCE_DB,
        "unpruned": unpruned,
        "true_support_arsnr": data.value["true_support_arsnr"],
        "mean_support_size": data.value["mean_support"],
        "points": sorted(points, key=lambda q: (q["kind"], q["method"], q["fine_tuned"],
                                                q["remaining"])),
        "min_remaining_keeping_baseline": kept,
        "min_remaining_keeping_baseline_by_method": kept_by,
        "deployed": [d for d, _ in deployed],
        "train_seconds": {f"{k}_seed{s}": st.value["train_seconds"]
                          for (k, s), st in trained.items()},
    }
    return results, {"pipeline": run, "data": data, "trained": trained, "deployed": deployed}
