"""Figures and tables shared by the experiments: curves with min-max error bars, markdown tables.

* :func:`summarize` -> ``{"mean", "min", "max", "n"}`` of values over seeds.
* :func:`plot_curves` -> a PNG of y-vs-x curves, each point with a min-max error bar (the
  papers' figures: ARSNR vs % of weights kept, ARSNR vs memory), optional reference lines.
* :func:`markdown_table` -> a GitHub markdown table from rows of values.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["summarize", "Curve", "plot_curves", "markdown_table", "fmt"]


def summarize(values: Iterable[float]) -> dict:
    """Mean, min and max of values (over seeds), and their count; NaN/None are skipped.

    An empty set gives ``None`` for the three statistics.
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


class Curve:
    """One curve of :func:`plot_curves`.

    Args:
      label: legend text.
      x: x values.
      mean: y values (the mean over seeds).
      lo, hi: optional per-point minimum and maximum (drawn as error bars).
      style: matplotlib format keywords (``color``, ``linestyle``, ``marker``, ...).
    """

    def __init__(self, label: str, x: Sequence[float], mean: Sequence[float],
                 lo: Sequence[float] | None = None, hi: Sequence[float] | None = None, **style):
        if len(x) != len(mean):
            raise ValueError(f"Curve '{label}': {len(x)} x values but {len(mean)} y values")
        self.label, self.x, self.mean, self.lo, self.hi, self.style = label, list(x), list(mean), lo, hi, style


def plot_curves(path, curves: Sequence[Curve], *, xlabel: str, ylabel: str, title: str = "",
                xscale: str = "linear", xlim=None, ylim=None, vlines: Sequence[tuple] = (),
                hlines: Sequence[tuple] = (), invert_x: bool = False, figsize=(6.4, 4.2)) -> Path:
    """Writes a PNG of curves with min-max error bars; returns its path.

    ``vlines`` / ``hlines``: ``(value, label)`` or ``(value, label, style_dict)`` reference lines
    (e.g. a device's memory budget).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    for c in curves:
        pts = [(x, m, lo, hi) for x, m, lo, hi in zip(
            c.x, c.mean, c.lo if c.lo is not None else [None] * len(c.x),
            c.hi if c.hi is not None else [None] * len(c.x)) if m is not None]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        style = {"marker": "o", "markersize": 4, "capsize": 3, **c.style}
        if c.lo is not None and c.hi is not None:
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, label=c.label, **style)
        else:
            style.pop("capsize", None)
            ax.plot(xs, ys, label=c.label, **style)
    for spec in vlines:
        value, label, style = spec[0], spec[1], (spec[2] if len(spec) > 2 else {})
        ax.axvline(value, label=label, **{"color": "gray", "linestyle": ":", **style})
    for spec in hlines:
        value, label, style = spec[0], spec[1], (spec[2] if len(spec) > 2 else {})
        ax.axhline(value, label=label, **{"color": "gray", "linestyle": ":", **style})
    ax.set_xscale(xscale)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def fmt(value, digits: int = 2) -> str:
    """A number for a table: fixed digits, ``-`` for None/NaN, ints with thousands kept plain."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], digits: int = 2) -> str:
    """A GitHub markdown table; numbers formatted by :func:`fmt`, strings as they are."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row has {len(row)} cells, the header {len(headers)}")
        lines.append("| " + " | ".join(fmt(v, digits) if not isinstance(v, str) else v
                                       for v in row) + " |")
    return "\n".join(lines)
