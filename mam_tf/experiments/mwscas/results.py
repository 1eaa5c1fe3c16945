"""`reproduce mwscas`: aggregation of the stages' values into the results (over seeds)."""
from __future__ import annotations

import numpy as np

from mam_tf.experiments import report as rp
from mam_tf.experiments.mwscas.config import FINE_TUNED, KINDS, device_budget_bytes

__all__ = ["collect", "methods"]


def _method_points(per, kind, seed, method):
    """The per-seed point records of one method (the fine-tuned curve starts from the unpruned
    QAT model, the 100% point every method shares)."""
    pruned = per[(kind, seed)]["prune"].value["points"]
    if method != FINE_TUNED:
        return [q for q in pruned if q["method"] == method]
    unpruned = next(q for q in pruned if q["remaining"] >= 1.0)
    return [{**unpruned, "method": FINE_TUNED}] + per[(kind, seed)]["fine_tune"].value["points"]


def methods(cfg):
    return tuple(cfg.methods) + ((FINE_TUNED,) if cfg.fine_tune else ())


def collect(cfg, per, data, with_mcu, mcu_why):
    """The results of a run from its stages: one point per (kind, method, remaining) with its
    mean, min and max over seeds, the training and deployment records, and the budget."""
    points = []
    for kind in KINDS:
        for method in methods(cfg):
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
