"""`mam-tf reproduce biocas`: seed 000's compressed-sensing Deep Neural Oracle, MAC vs MAM.

A Deep Neural Oracle (DNO) reads the m measurements ``y = A x`` of an n-sample ECG window and
predicts the support of x in a Symmlet-6 wavelet basis; x is recovered by least squares on that
support (``ecg_data.least_squares_reconstruction``). The oracle is ``m -> 2n -> 2n -> n``
(``mam_tf.models.cs_oracle``) with MAC (Dense) or MAM hidden layers; the MAM oracle is trained
with vanishing contributions (MAC -> MAM blend). Both hidden layers are then pruned to a sweep
of fractions: MAM by activation rate (the seed's method), MAC by magnitude and by activation
rate; each point is measured one-shot and after a short fine-tune with the masks held. The
quality is the ARSNR of the reconstruction on held-out windows (mean, min and max over seeds),
compared with the unpruned MAC oracle ("the baseline"). The chosen pruned oracles are converted
to int8 ``.tflite`` (MAM_SPARSE / MAC_SPARSE) and run on the host runtime.

The recipe that keeps the baseline to >= 94% pruned (see the README section and report.md):
selection counts taken on the training set and ranked in ONE list across both hidden layers
(``scope="global"``). Every neuron makes exactly two selections per window whatever its fan-in,
so the counts of the two layers are on one scale, and the ranking leaves the narrow first layer
(m inputs per neuron) about 4x as dense as the wide second one. Pruning each layer to the same
fraction (``scope="layer"``, reported as ``activation_rate_per_layer``) starves the first layer.

Outputs in ``--out``: results.json, report.md, arsnr_vs_pruned.png, reconstruction.png,
models/<kind>_seed<k>.keras (the trained, unpruned oracles), models/*.tflite (deployed), and
the cached stages (a rerun reads them back).
"""
from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

import numpy as np

from mam_tf.experiments.pipeline import Pipeline, read_json, write_json
from mam_tf.experiments.report import Curve, markdown_table, plot_curves, summarize

__all__ = ["SCALES", "SWEEPS", "run_biocas", "max_pruned_keeping_baseline", "add_command"]

NAME = "biocas"
TOLERANCE_DB = 0.5
HIDDEN = ["hidden_1", "hidden_2"]

_FRACTIONS = [0.25, 0.5, 0.75, 0.9, 0.94, 0.95, 0.96, 0.98]

#: Per scale: data, training, pruning. ``windows`` train + ``test`` held out; ``vc_epochs``: the
#: MAC -> MAM blend length, a quarter of the training (the epochs in pure MAM after it are what
#: concentrates the selections: docs/reproductions.md); ``fine_tune_epochs`` after each
#: pruning.
SCALES = {
    "tiny": dict(windows=800, test=200, epochs=3, vc_epochs=1, fine_tune_epochs=1,
                 fractions=[0.5, 0.94], seeds=[0]),
    "demo": dict(windows=6000, test=1000, epochs=15, vc_epochs=4, fine_tune_epochs=3,
                 fractions=_FRACTIONS, seeds=[0]),
    "small": dict(windows=20000, test=2000, epochs=20, vc_epochs=5, fine_tune_epochs=5,
                  fractions=_FRACTIONS, seeds=[0, 1, 2]),
    "paper": dict(windows=80000, test=10000, epochs=50, vc_epochs=12, fine_tune_epochs=10,
                  fractions=[0.25, 0.5, 0.75, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99],
                  seeds=list(range(10))),
}
#: Fixed parts of the setup (the group's public DNO code, ANCHORS.md).
SETUP = dict(n=128, m=32, fs=256, snr_db=35.0, sensing="antipodal", orthonormal_rows=True,
             wavelet="sym6", data_seed=0, lr=1e-3, batch_size=64, fine_tune_lr=1e-3,
             threshold=0.5, deploy_at=[0.94])
#: The pruning sweeps: (kind, method, scope). ``scope="global"`` ranks both hidden layers in one
#: list (the recipe); ``"layer"`` prunes each layer to the same fraction.
SWEEPS = [
    ("mam", "activation_rate", "global"),
    ("mam", "activation_rate", "layer"),
    ("mac", "magnitude", "global"),
    ("mac", "activation_rate", "global"),
]


def method_name(method, scope):
    """The ``method`` of a results point: the pruning method, ``_per_layer`` for layer scope."""
    return method if scope == "global" else f"{method}_per_layer"


def config_for(scale, overrides=None):
    """The full configuration of a scale (SETUP + SCALES[scale]), with ``overrides`` applied."""
    if scale not in SCALES:
        raise ValueError(f"reproduce biocas: scale is {scale!r}; must be one of {list(SCALES)}")
    cfg = {**SETUP, **copy.deepcopy(SCALES[scale]), "scale": scale,
           "sweeps": [list(s) for s in SWEEPS]}
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ValueError(f"reproduce biocas: unknown setting {key!r}; settings are "
                             f"{sorted(cfg)}")
        cfg[key] = value
    return cfg


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------
def _data_params(cfg):
    keys = ("windows", "test", "n", "m", "fs", "snr_db", "sensing", "orthonormal_rows",
            "wavelet", "data_seed")
    return {k: cfg[k] for k in keys}


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
    if not progress:
        return []
    from tqdm.keras import TqdmCallback

    return [TqdmCallback(epochs=epochs, verbose=0, desc=desc, leave=False)]


def _train(data_stage, p, progress):
    def compute(work):
        from mam_tf import VanishingContributions, keras
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


def _fine_tune_args(p, d):
    from mam_tf import keras

    return dict(x=d.y_train, y=d.l_train, optimizer=keras.optimizers.Adam(p["fine_tune_lr"]),
                loss="binary_crossentropy", epochs=p["fine_tune_epochs"],
                batch_size=p["batch_size"], verbose=0)


def _sweep(data_stage, train_stage, p, progress):
    def compute(work):
        from mam_tf import keras
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
                pruning.fine_tune(pruned, **_fine_tune_args(p, d))

        t0 = time.perf_counter()
        rows = pruning.sweep(model, [1.0 - f for f in p["fractions"]], metric,
                             method=p["method"], data=d.y_train, layers=HIDDEN, scope=p["scope"],
                             fine_tune=tune, progress=progress)
        points = []
        for f, row, first in zip(p["fractions"], rows, one_shot):
            points.append({"pruned": f, "fine_tuned": False, "arsnr": first,
                           "nonzero": row["nonzero"], "total": row["total"]})
            if p["fine_tune_epochs"] > 0:
                points.append({"pruned": f, "fine_tuned": True, "arsnr": row["metric"],
                               "nonzero": row["nonzero"], "total": row["total"]})
        return {"points": points, "seconds": time.perf_counter() - t0}
    return compute


def _deploy(data_stage, train_stage, p):
    def compute(work):
        from mam_tf import keras
        from mam_tf.train import pruning
        from mam_tf.deploy.convert import convert
        from mam_tf.deploy.runtime import Interpreter

        d = Data(data_stage)
        model = keras.models.load_model(train_stage.file("model.keras"), compile=False)
        if p["pruned"] > 0:
            if p["method"] == "magnitude":
                model = pruning.prune_magnitude(model, p["pruned"], layers=HIDDEN,
                                                scope=p["scope"])
            else:
                model = pruning.prune_activation_rate(model, d.y_train, p["pruned"],
                                                      layers=HIDDEN, scope=p["scope"])
            if p["fine_tuned"]:
                keras.utils.set_random_seed(p["seed"])
                pruning.fine_tune(model, **_fine_tune_args(p, d))
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


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
def max_pruned_keeping_baseline(points, baseline, kind, tolerance=TOLERANCE_DB, unpruned=None):
    """The largest pruned fraction whose mean ARSNR is within ``tolerance`` dB of ``baseline``
    among the ``points`` of ``kind`` (any method, with or without fine-tuning); 0.0 if only the
    unpruned oracle (mean ARSNR ``unpruned``) is, None if not even that."""
    ok = [p["pruned"] for p in points
          if p["kind"] == kind and p["arsnr_mean"] >= baseline - tolerance]
    if unpruned is not None and unpruned >= baseline - tolerance:
        ok.append(0.0)
    return max(ok) if ok else None


def _aggregate(sweep_values):
    """{(kind, method, fine_tuned, pruned): [arsnr per seed]} -> points with mean/min/max."""
    groups = {}
    for (kind, method, scope), per_seed in sweep_values.items():
        for value in per_seed:
            for pt in value["points"]:
                key = (kind, method_name(method, scope), pt["fine_tuned"], pt["pruned"])
                groups.setdefault(key, []).append(pt["arsnr"])
    points = []
    for (kind, method, fine_tuned, pruned), vals in groups.items():
        s = summarize(vals)
        points.append({"kind": kind, "method": method, "fine_tuned": fine_tuned,
                       "pruned": pruned, "arsnr_mean": s["mean"], "arsnr_min": s["min"],
                       "arsnr_max": s["max"], "seeds": s["n"]})
    return points


def _chosen_point(points, kind, fraction, fine_tuned=None):
    """The point of ``kind`` at ``fraction`` (one-shot or fine-tuned only, if ``fine_tuned`` is
    given) with the best mean; among equals, the one-shot one first (no fine-tuning needed)."""
    cands = [p for p in points if p["kind"] == kind and p["pruned"] == fraction
             and fine_tuned in (None, p["fine_tuned"])]
    return max(cands, key=lambda p: (p["arsnr_mean"], not p["fine_tuned"])) if cands else None


def _seeds_of(dirs):
    seeds = set()
    for d in dirs:
        manifest = Path(d) / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"reproduce biocas --merge: '{d}' has no manifest.json "
                                    "(not a finished run folder)")
        seeds.update(read_json(manifest).get("config", {}).get("seeds", []))
    return sorted(seeds)


def run_biocas(scale="demo", out=None, seeds=None, merge=None, progress=True, overrides=None):
    """Runs (or reads back) every stage and writes the outputs; returns the results dict.

    ``seeds``: training seeds (default the scale's); ``merge``: run folders whose finished
    stages are imported first (their seeds are added); ``overrides``: settings replacing the
    scale's (``fractions``, ``epochs``, ``sweeps``, ...: see :func:`config_for`).
    """
    cfg = config_for(scale, overrides)
    out = Path(out or f"runs/{NAME}-{scale}")
    if merge:
        seeds = sorted(set(seeds or []) | set(_seeds_of(merge)))
    cfg["seeds"] = list(seeds) if seeds else cfg["seeds"]
    run = Pipeline(out, NAME, config=cfg, progress=progress)
    if merge:
        run.import_stages(merge)
    from mam_tf.train.compat import tf

    tf.get_logger().setLevel("ERROR")  # one predict function per pruned model: retrace notes

    data = run.stage("data", _data_params(cfg), _make_data(_data_params(cfg)),
                     label=f"data ({cfg['windows']} + {cfg['test']} windows, m={cfg['m']})")
    trained, sweeps = {}, {}
    train_keys = ("epochs", "vc_epochs", "lr", "batch_size", "threshold")
    for seed in cfg["seeds"]:
        for kind in ("mac", "mam"):
            p = {"kind": kind, "seed": seed, **{k: cfg[k] for k in train_keys}}
            if kind == "mac":
                p.pop("vc_epochs")
            trained[kind, seed] = run.stage("train", p, _train(data, {**cfg, **p}, progress),
                                            deps=[data], label=f"train {kind} seed {seed}")
        for kind, method, scope in cfg["sweeps"]:
            p = {"kind": kind, "method": method, "scope": scope, "seed": seed,
                 "fractions": cfg["fractions"], "fine_tune_epochs": cfg["fine_tune_epochs"],
                 "fine_tune_lr": cfg["fine_tune_lr"], "batch_size": cfg["batch_size"],
                 "threshold": cfg["threshold"]}
            st = run.stage("sweep", p, _sweep(data, trained[kind, seed], p, progress),
                           deps=[data, trained[kind, seed]],
                           label=f"sweep {kind} {method_name(method, scope)} seed {seed}")
            sweeps.setdefault((kind, method, scope), []).append(st.value)

    points = _aggregate(sweeps)
    unpruned = {kind: summarize(trained[kind, s].value["arsnr"] for s in cfg["seeds"])
                for kind in ("mac", "mam")}
    baseline = unpruned["mac"]["mean"]
    kept = {kind: max_pruned_keeping_baseline(points, baseline, kind,
                                              unpruned=unpruned[kind]["mean"])
            for kind in ("mac", "mam")}
    kept_by = {}
    for pt in points:
        name = f"{pt['kind']} {pt['method']} {'fine-tuned' if pt['fine_tuned'] else 'one-shot'}"
        sub = [q for q in points if (q["kind"], q["method"], q["fine_tuned"])
               == (pt["kind"], pt["method"], pt["fine_tuned"])]
        kept_by[name] = max_pruned_keeping_baseline(sub, baseline, pt["kind"],
                                                    unpruned=unpruned[pt["kind"]]["mean"])

    # Deploy (seed 1st), for each kind: the point that kept the baseline at the largest
    # fraction, and the best one-shot and the best fine-tuned point at each of ``deploy_at``.
    deployed = []
    seed0 = cfg["seeds"][0]
    for kind in ("mac", "mam"):
        best = _chosen_point(points, kind, kept[kind]) if kept[kind] else None
        wanted = [(kept[kind] or 0.0, best)]
        for f in cfg["deploy_at"]:
            for ft in (False, True):
                chosen = _chosen_point(points, kind, f, ft)
                if chosen is not None and all(chosen is not w[1] for w in wanted):
                    wanted.append((f, chosen))
        for fraction, chosen in wanted:
            method, scope = "none", "global"
            if chosen is not None:
                method = chosen["method"].replace("_per_layer", "")
                scope = "layer" if chosen["method"].endswith("_per_layer") else "global"
            p = {"kind": kind, "seed": seed0, "pruned": fraction, "method": method,
                 "scope": scope, "fine_tuned": bool(chosen and chosen["fine_tuned"]),
                 "fine_tune_epochs": cfg["fine_tune_epochs"],
                 "fine_tune_lr": cfg["fine_tune_lr"], "batch_size": cfg["batch_size"],
                 "threshold": cfg["threshold"]}
            st = run.stage("deploy", p, _deploy(data, trained[kind, seed0], p),
                           deps=[data, trained[kind, seed0]],
                           label=f"deploy {kind} int8 at {fraction:.0%} pruned, seed {seed0}")
            deployed.append({**{k: p[k] for k in ("kind", "seed", "pruned", "fine_tuned")},
                             "method": method_name(method, scope) if method != "none" else "none",
                             **st.value, "_stage": st})

    results = {
        "experiment": NAME,
        "scale": scale,
        "config": cfg,
        "baseline_arsnr": baseline,
        "tolerance_db": TOLERANCE_DB,
        "unpruned": unpruned,
        "true_support_arsnr": data.value["true_support_arsnr"],
        "mean_support_size": data.value["mean_support"],
        "points": sorted(points, key=lambda q: (q["kind"], q["method"], q["fine_tuned"],
                                                q["pruned"])),
        "max_pruned_keeping_baseline": kept,
        "max_pruned_keeping_baseline_by_method": kept_by,
        "deployed": [{k: v for k, v in d.items() if k != "_stage"} for d in deployed],
        "train_seconds": {f"{k}_seed{s}": st.value["train_seconds"]
                          for (k, s), st in trained.items()},
    }
    _write_outputs(run, out, results, data, trained, deployed)
    return results


def _write_outputs(run, out, results, data, trained, deployed):
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    for (kind, seed), st in trained.items():
        shutil.copyfile(st.file("model.keras"), models / f"{kind}_seed{seed}.keras")
    for d in deployed:
        st = d["_stage"]
        tag = "_fine_tuned" if d["fine_tuned"] else ""
        name = f"{d['kind']}_seed{d['seed']}_pruned{round(100 * d['pruned'])}{tag}_int8.tflite"
        shutil.copyfile(st.file("oracle.tflite"), models / name)
    write_json(out / "results.json", results)
    _plot_curves(out / "arsnr_vs_pruned.png", results)
    _plot_examples(out / "reconstruction.png", results, data, trained, deployed)
    (out / "report.md").write_text(_report(results, run))
    run.write_manifest({"outputs": ["results.json", "report.md", "arsnr_vs_pruned.png",
                                    "reconstruction.png", "models/"]})
    run.log(f"wrote {out / 'results.json'}, report.md and the figures "
            f"({run.elapsed():.0f} s this run)")


_STYLE = {
    ("mam", "activation_rate"): dict(color="tab:red"),
    ("mam", "activation_rate_per_layer"): dict(color="tab:orange"),
    ("mac", "magnitude"): dict(color="tab:blue"),
    ("mac", "magnitude_per_layer"): dict(color="tab:cyan"),
    ("mac", "activation_rate"): dict(color="tab:purple"),
}


def _curves(results):
    groups = {}
    for p in results["points"]:
        groups.setdefault((p["kind"], p["method"], p["fine_tuned"]), []).append(p)
    curves = []
    for (kind, method, ft), pts in sorted(groups.items()):
        pts.sort(key=lambda q: q["pruned"])
        style = dict(_STYLE.get((kind, method), {}), linestyle="-" if ft else "--",
                     marker="o" if ft else "s")
        curves.append(Curve(f"{kind.upper()} {method.replace('_', ' ')}"
                            f"{', fine-tuned' if ft else ', one-shot'}",
                            [100 * q["pruned"] for q in pts], [q["arsnr_mean"] for q in pts],
                            [q["arsnr_min"] for q in pts], [q["arsnr_max"] for q in pts],
                            **style))
    return curves


def _plot_curves(path, results):
    b = results["baseline_arsnr"]
    ys = [p["arsnr_mean"] for p in results["points"]]
    plot_curves(path, _curves(results), xlabel="hidden-layer weights pruned (%)",
                ylabel="ARSNR (dB)", figsize=(8, 5),
                title=f"Deep Neural Oracle, m={results['config']['m']}, n={results['config']['n']}"
                      f": mean, min-max over {len(results['config']['seeds'])} seed(s)",
                ylim=(max(min(ys + [b]) - 1, b - 12), max(ys + [b]) + 1),
                hlines=[(b, "unpruned MAC oracle", {"color": "black"}),
                        (b - TOLERANCE_DB, f"baseline - {TOLERANCE_DB} dB", {"color": "gray"})],
                vlines=[(94, "94% (seed 000)", {"color": "tab:green"})])


def _plot_examples(path, results, data, trained, deployed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ecg_data import rsnr

    d = Data(data)
    thr = results["config"]["threshold"]
    seed0 = results["config"]["seeds"][0]
    rows = [("unpruned MAC oracle (Keras)", np.load(trained["mac", seed0].file("examples.npy")))]
    for dep in deployed:
        rows.append((f"{dep['kind'].upper()} {dep['pruned']:.0%} pruned, int8 on the host runtime",
                     np.load(dep["_stage"].file("examples.npy"))))
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, i in zip(axes, (0, 1)):
        ax.plot(d.x_test[i], color="black", lw=2, label="window x")
        for label, probs in rows:
            xh = _one(d, probs[i:i + 1], thr, i)
            ax.plot(xh, lw=1, label=f"{label}: {rsnr(d.x_test[i], xh):.1f} dB")
        ax.set_ylabel("amplitude (scaled)")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_title(f"Least-squares reconstruction on the predicted support "
                      f"(m={results['config']['m']} measurements of n={results['config']['n']})",
                      fontsize=10)
    axes[-1].set_xlabel("sample")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _one(d, probs, thr, i):
    from ecg_data import least_squares_reconstruction
    from mam_tf.models import predict_support

    return least_squares_reconstruction(d.y_test[i:i + 1], d.A, d.D,
                                        predict_support(probs, d.m, thr))[0]


def _report(results, run):
    cfg = results["config"]
    b = results["baseline_arsnr"]
    groups = sorted({(p["kind"], p["method"], p["fine_tuned"]) for p in results["points"]})
    fractions = sorted({p["pruned"] for p in results["points"]})
    by = {(p["kind"], p["method"], p["fine_tuned"], p["pruned"]): p for p in results["points"]}
    rows = []
    for kind, method, ft in groups:
        cells = []
        for f in fractions:
            p = by.get((kind, method, ft, f))
            cells.append("-" if p is None else
                         f"{p['arsnr_mean']:.2f} ({p['arsnr_min']:.2f}-{p['arsnr_max']:.2f})")
        rows.append([kind.upper(), method, "yes" if ft else "no", *cells])
    table = markdown_table(["oracle", "pruning", "fine-tuned", *[f"{f:.0%}" for f in fractions]],
                           rows)
    kept = results["max_pruned_keeping_baseline"]
    kept_rows = [[name, "-" if f is None else f"{f:.0%}"]
                 for name, f in results["max_pruned_keeping_baseline_by_method"].items()]
    dep_rows = [[d["kind"].upper(), f"{d['pruned']:.0%}", d["method"],
                 "yes" if d["fine_tuned"] else "no", d["keras_arsnr"], d["device_arsnr"],
                 d["device_arsnr"] - d["keras_arsnr"], d["support_agreement"],
                 " ".join(d["ops"]), d["tflite_bytes"]] for d in results["deployed"]]
    un = results["unpruned"]
    fmt = lambda s: f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f})"  # noqa: E731
    return "\n".join([
        f"# Deep Neural Oracle (seed 000): MAC vs MAM under pruning, scale '{cfg['scale']}'",
        "",
        f"Data: {cfg['windows']} training + {cfg['test']} test synthetic ECG windows, n = "
        f"{cfg['n']} at {cfg['fs']} Hz, noise at {cfg['snr_db']} dB SNR; {cfg['sensing']} sensing "
        f"matrix with orthonormal rows, m = {cfg['m']}; {cfg['wavelet']} periodized wavelet basis; "
        f"support labels = the top-k coefficients maximizing the reconstruction SNR (k <= m; mean "
        f"k = {results['mean_support_size']:.1f}). Reconstruction from the true supports: "
        f"{results['true_support_arsnr']:.2f} dB (the ceiling).",
        f"Oracle {cfg['m']} -> {2 * cfg['n']} -> {2 * cfg['n']} -> {cfg['n']}, ReLU, sigmoid, "
        f"binary cross-entropy, Adam {cfg['lr']}, {cfg['epochs']} epochs (MAM: MAC -> MAM blend "
        f"over {cfg['vc_epochs']}); support = outputs > {cfg['threshold']}, at most m. Seeds "
        f"{cfg['seeds']}. Pruned: both hidden layers; counts for activation-rate pruning on the "
        f"training set; fine-tuning {cfg['fine_tune_epochs']} epochs at {cfg['fine_tune_lr']} "
        "with masks held, from the trained model, at each fraction.",
        "",
        f"Unpruned: MAC {fmt(un['mac'])} dB, MAM {fmt(un['mam'])} dB (mean (min-max) over "
        f"seeds). Baseline = unpruned MAC mean = {b:.2f} dB; kept = mean >= "
        f"{b - TOLERANCE_DB:.2f} dB.",
        "",
        f"**Largest pruned fraction keeping the baseline: MAM {_pct(kept['mam'])}, MAC "
        f"{_pct(kept['mac'])}.**",
        "",
        "## ARSNR (dB) by fraction of hidden-layer weights pruned: mean (min-max) over seeds",
        "",
        table,
        "",
        "`activation_rate` / `magnitude`: one ranking over both hidden layers; `_per_layer`: each "
        "layer pruned to the same fraction.",
        "",
        "## Largest fraction keeping the baseline, by method",
        "",
        markdown_table(["oracle, method", "pruned"], kept_rows),
        "",
        f"## Deployed int8 oracles (host runtime, seed {cfg['seeds'][0]}, {cfg['test']} test "
        "windows)",
        "",
        markdown_table(["oracle", "pruned", "method", "fine-tuned", "Keras ARSNR", "int8 ARSNR",
                        "difference", "support agreement", "ops", ".tflite bytes"], dep_rows),
        "",
        "![ARSNR vs pruned](arsnr_vs_pruned.png)",
        "",
        "![reconstructions](reconstruction.png)",
        "",
        f"Wall time this run: {run.elapsed():.0f} s (stages read back are not recomputed); "
        "timings per stage and the load average in manifest.json.",
        "",
    ])


def _pct(f):
    return "none" if f is None else f"{f:.0%}"


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _cmd(args):
    res = run_biocas(scale=args.scale, out=args.out, seeds=args.seeds, merge=args.merge,
                     progress=not args.no_progress)
    kept = res["max_pruned_keeping_baseline"]
    print(f"baseline (unpruned MAC oracle): {res['baseline_arsnr']:.2f} dB; largest pruned "
          f"fraction within {TOLERANCE_DB} dB: MAM {_pct(kept['mam'])}, MAC {_pct(kept['mac'])}")
    for d in res["deployed"]:
        print(f"deployed {d['kind'].upper()} int8 at {d['pruned']:.0%} pruned: "
              f"{d['device_arsnr']:.2f} dB on the host runtime vs {d['keras_arsnr']:.2f} dB Keras")
    return 0


def add_command(subparsers, common):
    p = subparsers.add_parser(
        NAME, parents=[common], help="seed 000: the compressed-sensing Deep Neural Oracle, MAC "
        "vs MAM under pruning", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scales: " + "; ".join(
            f"{k}: {v['windows']} windows, {v['epochs']} epochs, {len(v['seeds'])} seed(s), "
            f"{len(v['fractions'])} fractions" for k, v in SCALES.items()))
    p.set_defaults(func=_cmd)
    return p
