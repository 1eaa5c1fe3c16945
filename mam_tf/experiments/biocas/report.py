"""`reproduce biocas`: the outputs of a run: models, figures, report.md."""
from __future__ import annotations

import numpy as np

from mam_tf.experiments import report as rp
from mam_tf.experiments.base import copy_file
from mam_tf.experiments.biocas.config import TOLERANCE_DB
from mam_tf.experiments.biocas.stages import Data

__all__ = ["outputs", "summary", "tflite_name"]


def tflite_name(d) -> str:
    """The file name of a deployed oracle in ``models/``."""
    tag = "_fine_tuned" if d["fine_tuned"] else ""
    return f"{d['kind']}_seed{d['seed']}_{d['method']}_{100 * d['remaining']:g}pct{tag}_int8.tflite"


def outputs(cfg, out, results, ctx):
    """Writes the models, the deployed ``.tflite`` files, the figures and ``report.md``."""
    models = out / "models"
    for (kind, seed), st in ctx["trained"].items():
        copy_file(st.file("model.keras"), models / f"{kind}_seed{seed}.keras")
    for d, st in ctx["deployed"]:
        copy_file(st.file("oracle.tflite"), models / tflite_name(d))
    _plot_curves(out / "arsnr_vs_remaining.png", cfg, results)
    _plot_examples(out / "reconstruction.png", cfg, ctx)
    (out / "report.md").write_text(_report(cfg, results, ctx["pipeline"].elapsed()))


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
        pts.sort(key=lambda q: q["remaining"])
        style = dict(_STYLE.get((kind, method), {}), linestyle="-" if ft else "--",
                     marker="o" if ft else "s")
        curves.append(rp.Curve(f"{kind.upper()} {method.replace('_', ' ')}"
                               f"{', fine-tuned' if ft else ', one-shot'}",
                               [100 * q["remaining"] for q in pts], [q["arsnr_mean"] for q in pts],
                               [q["arsnr_min"] for q in pts], [q["arsnr_max"] for q in pts],
                               **style))
    return curves


def _plot_curves(path, cfg, results):
    b = results["baseline_arsnr"]
    ys = [p["arsnr_mean"] for p in results["points"]]
    rp.plot_curves(path, _curves(results), xlabel="hidden-layer weights kept (%)",
                   ylabel="ARSNR (dB)", xscale="log", figsize=(8, 5),
                   title=f"Deep Neural Oracle, m={cfg.m}, n={cfg.n}: mean, min-max over "
                   f"{len(cfg.seeds)} seed(s)",
                   ylim=(max(min(ys + [b]) - 1, b - 12), max(ys + [b]) + 1),
                   hlines=[(b, "unpruned MAC oracle", {"color": "black"}),
                           (b - TOLERANCE_DB, f"baseline - {TOLERANCE_DB} dB", {"color": "gray"})],
                   vlines=[(6, "6% kept (seed 000)", {"color": "tab:green"})])


def _plot_examples(path, cfg, ctx):
    from ecg_data import least_squares_reconstruction, rsnr
    from mam_tf.models import predict_support

    d = Data(ctx["data"])
    seed0 = cfg.seeds[0]
    rows = [("unpruned MAC oracle (Keras)",
             np.load(ctx["trained"]["mac", seed0].file("examples.npy")))]
    for dep, st in ctx["deployed"]:
        rows.append((f"{dep['kind'].upper()} {dep['remaining']:.0%} kept, int8 on the host runtime",
                     np.load(st.file("examples.npy"))))
    panels = []
    for i in (0, 1):
        lines = [("window x", d.x_test[i], {"lw": 2})]
        for label, probs in rows:
            xh = least_squares_reconstruction(d.y_test[i:i + 1], d.A, d.D, predict_support(
                probs[i:i + 1], d.m, cfg.threshold))[0]
            lines.append((f"{label}: {rsnr(d.x_test[i], xh):.1f} dB", xh, {"lw": 1}))
        panels.append(("", lines))
    rp.plot_signals(path, panels, xlabel="sample", figsize=(9, 6),
                    title=f"Least-squares reconstruction on the predicted support (m={cfg.m} "
                    f"measurements of n={cfg.n})")


def _pct(f):
    return "none" if f is None else f"{100 * f:g}%"


def _report(cfg, results, elapsed):
    b = results["baseline_arsnr"]
    groups = sorted({(p["kind"], p["method"], p["fine_tuned"]) for p in results["points"]})
    fractions = sorted({p["remaining"] for p in results["points"]}, reverse=True)
    by = {(p["kind"], p["method"], p["fine_tuned"], p["remaining"]): p for p in results["points"]}
    rows = []
    for kind, method, ft in groups:
        cells = []
        for f in fractions:
            p = by.get((kind, method, ft, f))
            cells.append("-" if p is None else
                         f"{p['arsnr_mean']:.2f} ({p['arsnr_min']:.2f}-{p['arsnr_max']:.2f})")
        rows.append([kind.upper(), method, "yes" if ft else "no", *cells])
    table = rp.markdown_table(["oracle", "pruning", "fine-tuned", *[_pct(f) for f in fractions]],
                              rows)
    kept = results["min_remaining_keeping_baseline"]
    kept_rows = [[name, _pct(f)]
                 for name, f in results["min_remaining_keeping_baseline_by_method"].items()]
    dep_rows = [[d["kind"].upper(), _pct(d["remaining"]), d["method"],
                 "yes" if d["fine_tuned"] else "no", d["keras_arsnr"], d["device_arsnr"],
                 d["device_arsnr"] - d["keras_arsnr"], d["support_agreement"],
                 " ".join(d["ops"]), d["tflite_bytes"]] for d in results["deployed"]]
    un = results["unpruned"]
    fmt = lambda s: f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f})"  # noqa: E731
    return "\n".join([
        f"# Deep Neural Oracle (seed 000): MAC vs MAM under pruning, scale '{cfg.scale}'",
        "",
        f"Data: {cfg.windows} training + {cfg.test} test synthetic ECG windows, n = "
        f"{cfg.n} at {cfg.fs} Hz, noise at {cfg.snr_db} dB SNR; {cfg.sensing} sensing "
        f"matrix with orthonormal rows, m = {cfg.m}; {cfg.wavelet} periodized wavelet basis; "
        f"support labels = the top-k coefficients maximizing the reconstruction SNR (k <= m; mean "
        f"k = {results['mean_support_size']:.1f}). Reconstruction from the true supports: "
        f"{results['true_support_arsnr']:.2f} dB (the ceiling).",
        f"Oracle {cfg.m} -> {2 * cfg.n} -> {2 * cfg.n} -> {cfg.n}, ReLU, sigmoid, "
        f"binary cross-entropy, Adam {cfg.lr}, {cfg.epochs} epochs (MAM: MAC -> MAM blend "
        f"over {cfg.vc_epochs}); support = outputs > {cfg.threshold}, at most m. Seeds "
        f"{list(cfg.seeds)}. Pruned: both hidden layers; counts for activation-rate pruning on "
        f"the training set; fine-tuning {cfg.fine_tune_epochs} epochs at {cfg.fine_tune_lr} "
        "with masks held, from the trained model, at each fraction.",
        "",
        f"Unpruned: MAC {fmt(un['mac'])} dB, MAM {fmt(un['mam'])} dB (mean (min-max) over "
        f"seeds). Baseline = unpruned MAC mean = {b:.2f} dB; kept = mean >= "
        f"{b - TOLERANCE_DB:.2f} dB.",
        "",
        f"**Smallest fraction of the weights kept that keeps the baseline: MAM "
        f"{_pct(kept['mam'])}, MAC {_pct(kept['mac'])}.**",
        "",
        "## ARSNR (dB) by fraction of hidden-layer weights kept: mean (min-max) over seeds",
        "",
        table,
        "",
        "`activation_rate` / `magnitude`: one ranking over both hidden layers; `_per_layer`: each "
        "layer pruned to the same fraction.",
        "",
        "## Smallest fraction kept that keeps the baseline, by method",
        "",
        rp.markdown_table(["oracle, method", "kept"], kept_rows),
        "",
        f"## Deployed int8 oracles (host runtime, seed {cfg.seeds[0]}, {cfg.test} test "
        "windows)",
        "",
        rp.markdown_table(["oracle", "kept", "method", "fine-tuned", "Keras ARSNR", "int8 ARSNR",
                           "difference", "support agreement", "ops", ".tflite bytes"], dep_rows),
        "",
        "![ARSNR vs weights kept](arsnr_vs_remaining.png)",
        "",
        "![reconstructions](reconstruction.png)",
        "",
        f"Wall time this run: {elapsed:.0f} s (stages read back are not recomputed); "
        "timings per stage and the load average in manifest.json.",
        "",
    ])


def summary(cfg, results):
    """What ``reproduce biocas`` prints: the baseline, the smallest fraction kept that keeps
    it, and the deployed oracles."""
    kept = results["min_remaining_keeping_baseline"]
    lines = [f"baseline (unpruned MAC oracle): {results['baseline_arsnr']:.2f} dB; smallest "
             f"fraction kept within {TOLERANCE_DB} dB: MAM {_pct(kept['mam'])}, MAC "
             f"{_pct(kept['mac'])}"]
    for d in results["deployed"]:
        lines.append(f"deployed {d['kind'].upper()} int8 at {_pct(d['remaining'])} kept: "
                     f"{d['device_arsnr']:.2f} dB on the host runtime vs {d['keras_arsnr']:.2f} "
                     "dB Keras")
    return "\n".join(lines)
