"""Keras 3 training helpers: the vanishing-contributions schedule, selection counts and the
stop at a diverging loss, on any backend (the schedule itself is
:func:`mam_tf.common.vanishing.vanishing_beta`, the counting
:func:`mam_tf.common.masks.selection_counts_from_indices`, the check
:class:`mam_tf.common.divergence.DivergenceCheck`, as on the tf_keras path)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mam_tf.common.divergence import DivergenceCheck, TrainingDiverged
from mam_tf.common.inputs import iter_batches
from mam_tf.common.masks import SelectionCounts, selection_counts_from_indices
from mam_tf.common.vanishing import VanishingSchedule, vanishing_beta
from mam_tf.keras3 import mam_op
from mam_tf.keras3.layers import MAMDense, mam_layers

__all__ = ["VanishingContributions", "vanishing_beta", "SelectionCounts", "selection_counts",
           "iter_batches", "StopOnDivergence", "TrainingDiverged"]


class StopOnDivergence(DivergenceCheck, keras.callbacks.Callback):
    """Raises :class:`TrainingDiverged` at the first NaN or infinite loss (per batch) or
    validation loss (per epoch), naming ``where``, the epoch and the batch; the arguments of
    :class:`mam_tf.train.divergence.StopOnDivergence`."""


class VanishingContributions(VanishingSchedule, keras.callbacks.Callback):
    """Anneals ``beta`` of Keras 3 MAM layers from ``start`` to 0 (MAC -> MAM).

    The arguments and behaviour of :class:`mam_tf.train.schedule.VanishingContributions`:
    ``length`` epochs or optimizer steps, ``start``, ``schedule`` (linear or exponential),
    ``unit`` (``"epoch"`` or ``"step"``), ``eps``, ``layers`` (objects or names; default every
    MAM layer). Each epoch logs ``beta`` into the History.
    """

    def _mam_layers(self):
        return mam_layers(self.model)

    def _is_mam_layer(self, item):
        return isinstance(item, MAMDense)

    def _iterations(self):
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def _sync(self):
        """Under JAX, fit keeps the variables' values in its own state: bring them into the
        variables before the callback reads or writes one, and make fit read them back
        (Keras' ``jax_state_sync``)."""
        if keras.backend.backend() == "jax" and hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()


def chosen_layers(fn, model, layers):
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
    chosen = chosen_layers(fn, model, layers)
    return {layer.name: SelectionCounts(a, b)
            for layer, a, b in layer_selection_counts(fn, model, data, chosen, batch_size)}
