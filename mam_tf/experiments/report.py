"""Figures and tables shared by the experiments: curves with min-max error bars, markdown tables.

* :func:`summarize` -> ``{"mean", "min", "max", "n"}`` of values over seeds.
* :func:`plot_curves` -> a PNG of y-vs-x curves, each point with a min-max error bar (the
  papers' figures: ARSNR vs % of weights kept, ARSNR vs memory), optional reference lines;
  :func:`plot_panels` -> the same style, several panels on one x axis.
* :func:`plot_signals` -> a PNG of a window and its reconstructions, one panel per model.

A figure never shows a NaN or infinite value: they are refused with an error naming the curve
(or signal) and where the value is.

Every experiment draws its figures with these, so that they share one style.
* :func:`markdown_table` -> a GitHub markdown table from rows of values.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["summarize", "Curve", "Panel", "plot_curves", "plot_panels", "plot_signals",
           "markdown_table", "fmt"]


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
        for name, values in (("x", x), ("y", mean), ("minimum", lo), ("maximum", hi)):
            _refuse_non_finite(f"Curve '{label}'", name, values, x)
        self.label, self.x, self.mean, self.lo, self.hi, self.style = label, list(x), list(mean), lo, hi, style


def _refuse_non_finite(what: str, name: str, values, x=None) -> None:
    """A figure never shows NaN or infinity (matplotlib would drop the point silently): raises
    ValueError naming the figure's element, the value and where it is."""
    if values is None:
        return
    for i, v in enumerate(values):
        if v is not None and not math.isfinite(float(v)):
            at = f"x = {x[i]}" if x is not None and i < len(x) else f"index {i}"
            raise ValueError(f"{what}: {name} is {float(v)} at {at}; figures show finite "
                             "values only")


class Panel:
    """One set of axes of :func:`plot_panels`: curves, reference lines, labels and scales.

    ``vlines`` / ``hlines``: ``(value, label)`` or ``(value, label, style_dict)`` reference lines
    (e.g. a device's memory budget).
    """

    def __init__(self, curves: Sequence[Curve], *, xlabel: str = "", ylabel: str = "",
                 title: str = "", xscale: str = "linear", yscale: str = "linear", xlim=None,
                 ylim=None, vlines: Sequence[tuple] = (), hlines: Sequence[tuple] = (),
                 invert_x: bool = False):
        self.curves, self.xlabel, self.ylabel, self.title = list(curves), xlabel, ylabel, title
        self.xscale, self.yscale, self.xlim, self.ylim = xscale, yscale, xlim, ylim
        self.vlines, self.hlines, self.invert_x = list(vlines), list(hlines), invert_x
        for spec in self.vlines + self.hlines:
            _refuse_non_finite(f"reference line '{spec[1]}'", "its value", [spec[0]])


def _draw(ax, panel: Panel) -> None:
    for c in panel.curves:
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
    for spec in panel.vlines:
        value, label, style = spec[0], spec[1], (spec[2] if len(spec) > 2 else {})
        ax.axvline(value, label=label, **{"color": "gray", "linestyle": ":", **style})
    for spec in panel.hlines:
        value, label, style = spec[0], spec[1], (spec[2] if len(spec) > 2 else {})
        ax.axhline(value, label=label, **{"color": "gray", "linestyle": ":", **style})
    ax.set_xscale(panel.xscale)
    ax.set_yscale(panel.yscale)
    if panel.xscale == "log":  # plain numbers at the points drawn, not powers of ten
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        xs = sorted({x for c in panel.curves for x, m in zip(c.x, c.mean) if m is not None})
        if 0 < len(xs) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if panel.xlim is not None:
        ax.set_xlim(*panel.xlim)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    if panel.invert_x:
        ax.invert_xaxis()
    if panel.xlabel:
        ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.title:
        ax.set_title(panel.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_panels(path, panels: Sequence[Panel], *, figsize=None, sharex: bool = True) -> Path:
    """Writes a PNG of panels stacked top to bottom (one x axis when ``sharex``), each drawn as
    :func:`plot_curves` draws its one; returns its path."""
    plt = _pyplot()
    figsize = figsize or (6.4, 0.6 + 3.0 * len(panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=figsize, sharex=sharex, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        _draw(ax, panel)
    return _save(fig, path)


def plot_curves(path, curves: Sequence[Curve], *, xlabel: str, ylabel: str, title: str = "",
                xscale: str = "linear", xlim=None, ylim=None, vlines: Sequence[tuple] = (),
                hlines: Sequence[tuple] = (), invert_x: bool = False, figsize=(6.4, 4.2)) -> Path:
    """Writes a PNG of curves with min-max error bars; returns its path.

    ``vlines`` / ``hlines``: ``(value, label)`` or ``(value, label, style_dict)`` reference lines
    (e.g. a device's memory budget).
    """
    return plot_panels(path, [Panel(curves, xlabel=xlabel, ylabel=ylabel, title=title,
                                    xscale=xscale, xlim=xlim, ylim=ylim, vlines=vlines,
                                    hlines=hlines, invert_x=invert_x)], figsize=figsize)


def plot_signals(path, panels: Sequence[tuple], *, xlabel: str, ylabel: str = "amplitude (scaled)",
                 title: str = "", figsize=(7, 5)) -> Path:
    """Writes a PNG of signals (a window and its reconstructions), one panel per
    ``(panel title, [(label, values, style_dict), ...])``, stacked on one x axis; the first
    signal of a panel is the reference, drawn in black unless its style says otherwise."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=figsize, sharex=True, squeeze=False)
    for ax, (panel_title, lines) in zip(axes[:, 0], panels):
        for i, (label, values, style) in enumerate(lines):
            _refuse_non_finite(f"signal '{label}' of panel '{panel_title}'", "the signal",
                               np.ravel(values).tolist())
            base = {"color": "black", "lw": 1.4} if i == 0 else {"lw": 1.1}
            ax.plot(values, label=label, **{**base, **style})
        ax.set_ylabel(ylabel)
        if panel_title:
            ax.set_title(panel_title, fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


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
