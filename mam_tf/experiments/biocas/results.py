"""`reproduce biocas`: aggregation of the sweeps over seeds, and the baseline rule."""
from __future__ import annotations

from mam_tf.experiments.biocas.config import TOLERANCE_DB, method_name
from mam_tf.experiments.report import summarize

__all__ = ["aggregate", "chosen_point", "min_remaining_keeping_baseline"]


def min_remaining_keeping_baseline(points, baseline, kind, tolerance=TOLERANCE_DB,
                                   unpruned=None):
    """The smallest kept fraction (``remaining``) whose mean ARSNR is within ``tolerance`` dB
    of ``baseline`` among the ``points`` of ``kind`` (any method, with or without
    fine-tuning); 1.0 if only the unpruned oracle (mean ARSNR ``unpruned``) is, None if not
    even that."""
    ok = [p["remaining"] for p in points
          if p["kind"] == kind and p["arsnr_mean"] >= baseline - tolerance]
    if unpruned is not None and unpruned >= baseline - tolerance:
        ok.append(1.0)
    return min(ok) if ok else None


def aggregate(sweep_values):
    """``{(kind, method, scope): [sweep value per seed]}`` -> one point per (kind, method,
    fine_tuned, remaining) with the mean, min and max ARSNR over seeds."""
    groups = {}
    for (kind, method, scope), per_seed in sweep_values.items():
        for value in per_seed:
            for pt in value["points"]:
                key = (kind, method_name(method, scope), pt["fine_tuned"], pt["remaining"])
                groups.setdefault(key, []).append(pt["arsnr"])
    points = []
    for (kind, method, fine_tuned, remaining), vals in groups.items():
        s = summarize(vals)
        points.append({"kind": kind, "method": method, "fine_tuned": fine_tuned,
                       "remaining": remaining, "arsnr_mean": s["mean"], "arsnr_min": s["min"],
                       "arsnr_max": s["max"], "seeds": s["n"]})
    return points


def chosen_point(points, kind, fraction, fine_tuned=None):
    """The point of ``kind`` at kept ``fraction`` (one-shot or fine-tuned only, if
    ``fine_tuned`` is given) with the best mean; among equals, the one-shot one first (no
    fine-tuning needed)."""
    cands = [p for p in points if p["kind"] == kind and p["remaining"] == fraction
             and fine_tuned in (None, p["fine_tuned"])]
    return max(cands, key=lambda p: (p["arsnr_mean"], not p["fine_tuned"])) if cands else None
