"""`reproduce mwscas`: the outputs of a run: models, figures (Figs. 2, 4, 5, 6), report.md."""
from __future__ import annotations

import numpy as np

from mam_tf.experiments import report as rp
from mam_tf.experiments.base import copy_file
from mam_tf.experiments.mwscas.config import FINE_TUNED, KINDS, blend_words, command_overrides
from mam_tf.experiments.mwscas.results import methods

__all__ = ["outputs", "summary"]


def outputs(cfg, out, results, per):
    """Writes the models, the ``.tflite`` files, the figures and ``report.md`` of a run."""
    models = out / "models"
    tfl = out / "tflite"
    models.mkdir(parents=True, exist_ok=True)
    for (kind, seed), s in per.items():
        copy_file(s["train"].file("model.keras"), models / f"{kind}_seed{seed}.keras")
        copy_file(s["qat"].file("qat_tail.keras"), models / f"{kind}_seed{seed}_qat.keras")
        if s["fine_tune"] is not None and 0.05 in cfg.fine_tune:
            copy_file(s["fine_tune"].file("qat_tail_5pct.keras"),
                  models / f"{kind}_seed{seed}_qat_fine_tuned_5pct.keras")
        for d in s["deploy"]:
            v = d.value
            tfl.mkdir(exist_ok=True)
            copy_file(d.file("tail.tflite"),
                  tfl / f"{kind}_seed{seed}_{v['method']}_{100 * v['remaining']:g}pct_int16x8.tflite")
    _figures(cfg, out, per, results)
    (out / "report.md").write_text(_report(cfg, results, _main_table(results)))


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
        for method in methods(cfg):
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
    def fc1_record(dep, kernel):
        recs = [r for r in (dep.get("mcu") or []) if r.get("kernel") == kernel]
        return next((r for r in recs if r.get("variant") == "optimized"),
                    recs[0] if recs else None)

    def curve(label, rows, color):  # rows: [(fraction, [value per seed])]
        rows = [(f, vs) for f, vs in rows if vs]
        return rp.Curve(label, [100 * f for f, _ in rows], [float(np.mean(v)) for _, v in rows],
                        [min(v) for _, v in rows], [max(v) for _, v in rows], color=color)

    arsnr, timing = [], []
    for kind in KINDS:
        op = "mam_sparse" if kind == "mam" else "mac_sparse"
        deps = [d for d in results["deployed"] if d["kind"] == kind]
        fractions = sorted({d["remaining"] for d in deps})
        if not fractions:
            continue
        color = _STYLE[(kind, "magnitude")]["color"]
        arsnr.append(curve(f"AE-{kind.upper()}, int16x8 tail on the host runtime",
                           [(f, [d["deployed_arsnr"] for d in deps if d["remaining"] == f])
                            for f in fractions], color))
        timed = [(f, [r for r in (fc1_record(d, op) for d in deps if d["remaining"] == f)
                      if r is not None]) for f in fractions]
        variant = next((rs[0].get("variant") for _, rs in timed if rs), None)
        if variant is not None:
            timing.append(curve(f"FC1 {op.upper()} ({variant})",
                                [(f, [r["time_us"] / 1e3 for r in rs]) for f, rs in timed],
                                color))
    dense = [r for d in results["deployed"] for r in (d.get("mcu") or [])
             if r.get("kernel") in ("mac_dense", "cmsis_fc")]
    flat = []
    for kernel, style, label in (("mac_dense", ":", "dense MAC (portable), all weights"),
                                 ("cmsis_fc", "--", "CMSIS-NN FC, all weights")):
        rs = [r["time_us"] / 1e3 for r in dense if r["kernel"] == kernel]
        if rs:
            flat.append((float(np.median(rs)), label, {"color": "tab:blue", "linestyle": style}))
    rp.plot_panels(out / "fig5_mcu.png", [
        rp.Panel(arsnr, ylabel="ARSNR (dB)",
                 title="Seed 004 Fig. 5: deployed tails and FC1 on the emulated Cortex-M7"),
        rp.Panel(timing, ylabel="FC1 estimated time (ms)\n(QEMU instructions / 180 MHz, CPI 1)",
                 xlabel="FC1 weights kept (%)", yscale="log", hlines=flat),
    ], figsize=(6.4, 6.4))


def _fig6(cfg, out, per, results):
    from ecg_data import rsnr

    seed = results["seeds"][0]
    fraction = 0.05 if 0.05 in cfg.fractions else min(cfg.fractions)
    tag = f"magnitude_{fraction:g}" if fraction < 1.0 else f"{cfg.methods[0]}_1"
    panels = []
    for kind in KINDS:
        with np.load(per[(kind, seed)]["prune"].file("recon.npz")) as f:
            x, y = f["x"][0], f[tag][0]
        panels.append((f"AE-{kind.upper()}: RSNR {float(rsnr(x[None], y[None])[0]):.1f} dB",
                       [("input", x, {}),
                        (f"AE-{kind.upper()}, FC1 at {fraction:.0%} (QAT)", y,
                         {"color": _STYLE[(kind, "magnitude")]["color"]})]))
    rp.plot_signals(out / "fig6_reconstruction.png", panels, xlabel="sample (256 Hz)",
                    title=f"Seed 004 Fig. 6: a test window and its reconstructions (seed {seed})")


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
        f"Command: `mam-tf reproduce mwscas --scale {cfg.scale}{command_overrides(cfg, seeds)}`"
        f" (seeds {seeds}; {results['data']['train']} training windows, {cfg.epochs} float "
        f"epochs (MAM: vanishing contributions, {blend_words(cfg.vc_epochs)}), "
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


def summary(cfg, results):
    """What ``reproduce mwscas`` prints: the main table and the deployed tails."""
    return "\n".join([
        f"\nseed 004 ({cfg.scale} scale, seeds {results['seeds']}): ARSNR on "
        f"{results['test_windows']} test windows, QAT int16x8 model, dB (mean [min, max] over "
        "seeds)\n", _main_table(results), "\n" + _deploy_table(results)])
