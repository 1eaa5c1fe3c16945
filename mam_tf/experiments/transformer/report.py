"""`reproduce transformer`: the outputs of a run (models, report.md) and its summary."""
from __future__ import annotations

import statistics
from pathlib import Path

from mam_tf.experiments import report as rp
from mam_tf.experiments.base import copy_file
from mam_tf.experiments.transformer.config import KINDS
from mam_tf.models.token_transformer import MLP_LAYERS

__all__ = ["outputs", "summary", "device_rows", "whole_model_rows", "operator_rows"]


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


_WHOLE_HEADERS = ["MLP", "seed", "output equal to host", "instructions, all ops",
                  "of which the MLP's sparse ops", "arena used, bytes"]


def _whole_runs(results):
    return [r for r in results["runs"]
            if r["device"].get("ran") and (r["device"].get("whole_model") or {}).get("ran")]


def whole_model_rows(results):
    """One row per (kind, seed) whose whole block ran in TFLite-Micro on the emulated M7: its
    output against the host runtime's, the instructions of every op's Invoke in the first
    sample, the MAM_SPARSE / MAC_SPARSE ops' share of them, the arena used."""
    rows = []
    for r in _whole_runs(results):
        w = r["device"]["whole_model"]
        total = sum(c for _, c in w["ops"])
        mlp = sum(c for name, c in w["ops"] if name in ("MAM_SPARSE", "MAC_SPARSE"))
        rows.append([r["kind"].upper(), r["seed"], "yes" if w["equal"] else "NO", total,
                     f"{mlp} ({100 * mlp / total:.1f}%)" if total else "-", w["arena_used"]])
    return rows


def operator_rows(results):
    """Per operator type in the whole block, for each kind: how many ops of it the model has
    and their instructions summed (first sample), median over the seeds:
    [operator, MAC ops, MAC instructions, MAM ops, MAM instructions]."""
    per = {}  # (operator, kind) -> [(ops, instructions) per seed]
    for r in _whole_runs(results):
        sums = {}
        for name, count in r["device"]["whole_model"]["ops"]:
            n, c = sums.get(name, (0, 0))
            sums[name] = (n + 1, c + count)
        for name, nc in sums.items():
            per.setdefault((name, r["kind"]), []).append(nc)
    names = sorted({name for name, _ in per}, key=lambda n: (n in ("MAM_SPARSE", "MAC_SPARSE"), n))
    rows = []
    for name in names:
        row = [name]
        for kind in KINDS:
            v = per.get((name, kind))
            row += [int(statistics.median(n for n, _ in v)),
                    int(statistics.median(c for _, c in v))] if v else ["-", "-"]
        rows.append(row)
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
    lines += ["", "## The whole block in TFLite-Micro on the emulated Cortex-M7", ""]
    whole = whole_model_rows(results)
    if whole:
        lines += [
            f"The int8 model as converted, every op through TFLite-Micro (reference kernels; "
            f"MAM_SPARSE / MAC_SPARSE through the project's glue) on the first "
            f"{cfg.device_samples} test samples, the output compared bit for bit with the host "
            "runtime's. Instructions: each op's Invoke in the first sample, counted by QEMU "
            "(no caches, no wait states).",
            "",
            rp.markdown_table(_WHOLE_HEADERS, whole),
            "",
            "Per operator type: its ops in the model and their instructions summed (median "
            "over seeds):",
            "",
            rp.markdown_table(["operator"] + [f"{k.upper()} {what}" for k in KINDS
                                              for what in ("ops", "instructions")],
                              operator_rows(results)),
        ]
    else:
        reasons = sorted({str((r["device"].get("whole_model") or {}).get(
            "reason", "no TFLite-Micro library for Cortex-M7 given ($MAM_TF_TFLM_LIB)"))
            if r["device"].get("ran") else str(r["device"].get("reason"))
            for r in results["runs"]})
        lines.append(f"Not run: {'; '.join(reasons)}.")
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
    whole = whole_model_rows(results)
    if whole:
        text += ["", "the whole block in TFLite-Micro on the Cortex-M7 (first sample)",
                 rp.markdown_table(_WHOLE_HEADERS, whole)]
    return "\n".join(text)
