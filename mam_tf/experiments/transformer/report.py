"""`reproduce transformer`: the outputs of a run (models, report.md) and its summary."""
from __future__ import annotations

import statistics
from pathlib import Path

from mam_tf.experiments import report as rp
from mam_tf.experiments.base import copy_file
from mam_tf.experiments.transformer.config import KINDS
from mam_tf.models.token_transformer import MLP_LAYERS

__all__ = ["outputs", "summary", "device_rows"]


def outputs(cfg, out, results, ctx):
    """Copies the deployed ``.tflite`` files to ``models/`` and writes ``report.md``."""
    for r in results["runs"]:
        copy_file(r["tflite"], out / "models" / f"{r['kind']}_seed{r['seed']}_int8.tflite")
    (out / "report.md").write_text(_report(cfg, results))


def _accuracy_rows(results):
    rows = []
    for kind in KINDS:
        s = results["summary"][kind]
        rows.append([kind.upper()] + [f"{100 * s[k]['mean']:.1f} ({100 * s[k]['min']:.1f}-"
                                      f"{100 * s[k]['max']:.1f})" if s[k]["n"] else "-"
                                      for k in ("trained", "one_shot", "fine_tuned", "int8")])
    return rows


_DEVICE_HEADERS = ["MLP", "seed", "layer", "kernel", "variant", "rows", "M x N", "instructions",
                   "equal to host"]
_ACCURACY_HEADERS = ["MLP", "trained", "pruned one-shot", "pruned + fine-tuned"]


def _layer(tensor_name):
    """The MLP layer an op's output tensor is named after (TFLite joins names with ';')."""
    parts = tensor_name.replace(";", "/").split("/")
    return next((p for p in parts if p in MLP_LAYERS), tensor_name)


def device_rows(results):
    """One row per (kind, seed, MLP layer, variant): rows, M x N, the median instructions over
    the device samples and whether every output equalled the host runtime's."""
    rows = []
    for r in results["runs"]:
        dev = r["device"]
        if not dev.get("ran"):
            continue
        groups = {}
        for rec in dev["ops"]:
            groups.setdefault((rec["op_index"], rec["variant"]), []).append(rec)
        for (_, variant), recs in groups.items():
            m, n = recs[0]["shape"]
            rows.append([r["kind"].upper(), r["seed"], _layer(recs[0]["op_name"]),
                         recs[0]["kernel"].upper(), variant,
                         recs[0]["rows"], f"{m}x{n}",
                         int(statistics.median(x["instructions"] for x in recs)),
                         "yes" if all(x["equal"] for x in recs) else "NO"])
    return rows


def _report(cfg, results):
    chance = 100 * results["chance"]
    lines = [
        "# A transformer encoder block with a MAM MLP",
        "",
        f"Command: `mam-tf reproduce transformer --scale {cfg.scale}` (seeds "
        f"{', '.join(str(s) for s in cfg.seeds)}).",
        "",
        f"Task: count the repeats of the first token's symbol ({cfg.tokens} tokens, "
        f"{cfg.symbols} symbols, {cfg.samples} training / {cfg.test} test sequences; 4 classes, "
        f"chance {chance:.0f}%). Block: token projection to {cfg.width}, {cfg.heads}-head "
        f"self-attention, LayerNorm, MLP {cfg.width} -> {cfg.hidden} (relu) -> {cfg.width} "
        "(MAC: Dense; MAM: MAMDense), average pooling, classifier. "
        f"The MLP pruned by magnitude to {100 * cfg.remaining:g}% of its weights kept, "
        f"fine-tuned {cfg.fine_tune_epochs} epochs, converted to int8 (MAM_SPARSE for MAM, "
        "MAC_SPARSE for MAC) and run on the host runtime.",
        "",
        "## Test accuracy, % (mean over seeds, min-max)",
        "",
        rp.markdown_table(_ACCURACY_HEADERS + [f"int8 deployed ({cfg.deploy_test} samples)"],
                          _accuracy_rows(results)),
        "",
        "## The MLP's sparse ops on the emulated Cortex-M7",
        "",
        "Each op runs on the rows it reads in the host runtime (one row per token); "
        "instructions counted by QEMU (no caches, no wait states).",
        "",
    ]
    rows = device_rows(results)
    if rows:
        lines.append(rp.markdown_table(_DEVICE_HEADERS, rows))
    else:
        reasons = {r["device"].get("reason") for r in results["runs"]}
        lines.append(f"Not run: {'; '.join(sorted(str(x) for x in reasons))}.")
    lines.append("")
    return "\n".join(lines)


def summary(cfg, results) -> str:
    """What the command prints: the accuracy table and the device rows."""
    text = ["accuracy % (mean, min-max over seeds); chance "
            f"{100 * results['chance']:.0f}%",
            rp.markdown_table(_ACCURACY_HEADERS + ["int8 deployed"], _accuracy_rows(results))]
    rows = device_rows(results)
    if rows:
        text += ["", rp.markdown_table(_DEVICE_HEADERS, rows)]
    return "\n".join(text)
