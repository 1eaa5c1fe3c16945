"""Keras 3 training helpers: the vanishing-contributions schedule and selection counts,
on any backend (the schedule itself is :func:`mam_tf.common.vanishing.vanishing_beta`, the
counting :func:`mam_tf.common.masks.selection_counts_from_indices`, as on the tf_keras path)."""
from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from mam_tf.common.masks import selection_counts_from_indices
from mam_tf.common.vanishing import _SCHEDULES, _UNITS, vanishing_beta
from mam_tf.keras3 import mam_op
from mam_tf.keras3.layers import MAMDense, mam_layers

__all__ = ["VanishingContributions", "vanishing_beta", "SelectionCounts", "selection_counts",
           "iter_batches"]


def _sync_jax_state(model):
    """Under JAX, fit keeps the variables' values in its own state: bring them into the
    variables before a callback writes one, and make fit read them back (Keras'
    ``jax_state_sync``)."""
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


class VanishingContributions(keras.callbacks.Callback):
    """Anneals ``beta`` of Keras 3 MAM layers from ``start`` to 0 (MAC -> MAM).

    The arguments and behaviour of :class:`mam_tf.train.schedule.VanishingContributions`:
    ``length`` epochs or optimizer steps, ``start``, ``schedule`` (linear or exponential),
    ``unit`` (``"epoch"`` or ``"step"``), ``eps``, ``layers`` (objects or names; default every
    MAM layer). Each epoch logs ``beta`` into the History.
    """

    def __init__(self, length, start=1.0, schedule="linear", unit="epoch", eps=1e-3,
                 layers=None, verbose=0):
        super().__init__()
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length <= 0:
            raise ValueError(f"VanishingContributions: length must be a positive integer, got {length!r}")
        if not 0.0 < float(start) <= 1.0:
            raise ValueError(f"VanishingContributions: start must be in (0, 1], got {start!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"VanishingContributions: schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if unit not in _UNITS:
            raise ValueError(f"VanishingContributions: unit must be one of {_UNITS}, got {unit!r}")
        if not 0.0 < float(eps) < 1.0:
            raise ValueError(f"VanishingContributions: eps must be in (0, 1), got {eps!r}")
        self.length, self.start, self.schedule = int(length), float(start), schedule
        self.unit, self.eps, self.verbose = unit, float(eps), verbose
        self._requested = layers
        self._layers = None
        self._current = None

    def beta_at(self, t):
        return vanishing_beta(t, self.length, self.start, self.schedule, self.eps)

    def _resolve_layers(self):
        found = mam_layers(self.model)
        if self._requested is None:
            if not found:
                raise ValueError("VanishingContributions: the model has no MAM layer to anneal")
            return found
        by_name = {layer.name: layer for layer in found}
        chosen = []
        for item in self._requested:
            if isinstance(item, str) and item in by_name:
                chosen.append(by_name[item])
            elif isinstance(item, MAMDense):
                chosen.append(item)
            else:
                raise ValueError(f"VanishingContributions: {item!r} is not a MAM layer nor the name "
                                 f"of one; MAM layers are {sorted(by_name)}")
        return chosen

    def _apply(self, t):
        beta = self.beta_at(t)
        if beta != self._current:
            _sync_jax_state(self.model)
            for layer in self._layers:
                layer.set_beta(beta)
            if self.verbose and self.unit == "epoch":
                print(f"VanishingContributions: beta = {beta:.6g}")
            self._current = beta

    def on_train_begin(self, logs=None):
        self._layers = self._resolve_layers()
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            _sync_jax_state(self.model)
            self._apply(int(ops.convert_to_numpy(self.model.optimizer.iterations)))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._layers:
            _sync_jax_state(self.model)
            logs["beta"] = self._layers[0].get_beta()

    def get_config(self):
        return {"length": self.length, "start": self.start, "schedule": self.schedule,
                "unit": self.unit, "eps": self.eps}


class SelectionCounts(NamedTuple):
    """How often each weight was chosen, over a data set: arrays of the kernel's shape [N, M]."""

    argmax: np.ndarray
    argmin: np.ndarray


def iter_batches(data, batch_size):
    """Input batches of a numpy array or of an iterable of x or (x, y) batches."""
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        arr = np.asarray(data)
        for i in range(0, len(arr), batch_size):
            yield arr[i:i + batch_size]
    else:
        for item in data:
            yield item[0] if isinstance(item, (tuple, list)) else item


def _chosen(fn, model, layers):
    found = mam_layers(model)
    if layers is None:
        chosen = found
    else:
        by_name = {layer.name: layer for layer in found}
        names = [getattr(item, "name", item) for item in layers]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{fn}: no MAM layer named {missing}; MAM layers are {sorted(by_name)}")
        chosen = [by_name[n] for n in names]
    if not chosen:
        raise ValueError(f"{fn}: the model has no MAM layer")
    return chosen


def layer_selection_counts(fn, model, data, layers, batch_size=256):
    """``[(layer, argmax counts, argmin counts)]`` over ``data``, with the kernels as they act
    (masks applied), ties to the lowest input."""
    try:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        probe = keras.Model(inputs, [layer.input for layer in layers])
    except (AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{fn}: needs a functional or Sequential model whose MAM layers have "
                         f"known inputs (build it on a keras.Input first): {err}") from err
    kernels = [layer.effective_kernel() for layer in layers]
    totals = [[np.zeros(tuple(k.shape), np.int64) for _ in range(2)] for k in kernels]
    seen = 0
    for batch in iter_batches(data, batch_size):
        xs = probe(batch, training=False)
        if len(layers) == 1:
            xs = [xs]
        for tot, x, w in zip(totals, xs, kernels):
            n = int(w.shape[0])
            x = ops.reshape(ops.cast(x, w.dtype), (-1, n))
            _, amax, amin = mam_op.forward(x, w)
            cmax, cmin = selection_counts_from_indices(
                ops.convert_to_numpy(amax), ops.convert_to_numpy(amin), n)
            tot[0] += cmax
            tot[1] += cmin
        seen += 1
    if not seen:
        raise ValueError(f"{fn}: data is empty")
    return [(layer, t[0], t[1]) for layer, t in zip(layers, totals)]


def selection_counts(model, data, layers=None, batch_size=256):
    """For every Keras 3 MAM layer: how often each weight was the argmax and the argmin of
    its row over ``data`` (a numpy array or an iterable of x or (x, y) batches).

    Returns ``{layer_name: SelectionCounts(argmax, argmin)}``, int64 arrays of the kernel's
    shape; each sums to (input rows) x units.
    """
    fn = "selection_counts"
    chosen = _chosen(fn, model, layers)
    return {layer.name: SelectionCounts(a, b)
            for layer, a, b in layer_selection_counts(fn, model, data, chosen, batch_size)}
