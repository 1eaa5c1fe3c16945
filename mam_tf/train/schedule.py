"""Training helpers: the vanishing-contributions schedule and selection counting."""
from __future__ import annotations

import numpy as np

from mam_tf.common.inputs import iter_batches as _iter_batches
from mam_tf.common.masks import SelectionCounts
from mam_tf.common.vanishing import VanishingSchedule, vanishing_beta
from mam_tf.train import mam_op
from mam_tf.train.compat import keras, tf
from mam_tf.train.layers import MAMLayerMixin, mam_layers

__all__ = ["VanishingContributions", "vanishing_beta", "SelectionCounts", "selection_counts"]


class VanishingContributions(VanishingSchedule, keras.callbacks.Callback):
    """Anneals ``beta`` of MAM layers from ``start`` to 0 (MAC -> MAM, "vanishing contributions").

    Args:
      length: number of epochs (``unit="epoch"``) or optimizer steps (``unit="step"``) over
        which beta goes from ``start`` to 0.
      start: beta at t = 0 (1.0 = the layer starts as a plain Dense).
      schedule: ``"linear"`` or ``"exponential"`` (see :func:`vanishing_beta`).
      unit: ``"epoch"`` (beta set at the start of each epoch) or ``"step"`` (before each batch).
      eps: values below eps snap to 0.
      layers: the MAM layers (objects or names) to drive; default every MAM layer of the model.

    The schedule is a function of the epoch index (Keras' ``initial_epoch``) or of the
    optimizer's step counter, both of which a resumed training restores, so resuming from a
    checkpoint continues the schedule where it stopped. Each epoch logs ``beta`` (the value
    used during that epoch's last step) into the History.
    """

    def _mam_layers(self):
        return mam_layers(self.model)

    def _is_mam_layer(self, item):
        return isinstance(item, MAMLayerMixin)

    def _iterations(self):
        return int(self.model.optimizer.iterations.numpy())


def iter_batches(data, batch_size):
    """Input batches of a numpy array, a tf.data.Dataset of x or (x, y), or an iterable."""
    if isinstance(data, tf.data.Dataset):
        for item in data:
            yield item[0] if isinstance(item, (tuple, list)) else item
    else:
        yield from _iter_batches(data, batch_size)


def selection_counts(model, data, layers=None, batch_size=256):
    """Counts, for every MAM layer, how often each weight was the argmax and the argmin of its row.

    Args:
      model: a functional or Sequential Keras model containing MAM layers.
      data: model inputs: a numpy array, a ``tf.data.Dataset`` (of x or (x, y) batches) or an
        iterable of batches.
      layers: MAM layers or their names (default: all).
    Returns:
      ``{layer_name: SelectionCounts(argmax, argmin)}``, int64 arrays of the kernel's shape.
      For each layer, each array sums to (number of input rows) x units: every row of every
      neuron selects exactly one argmax and one argmin (ties go to the lowest input index).
    """
    chosen = mam_layers(model)
    if layers is not None:
        names = [getattr(item, "name", item) for item in layers]
        by_name = {layer.name: layer for layer in chosen}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"selection_counts: no MAM layer named {missing}; MAM layers are {sorted(by_name)}")
        chosen = [by_name[n] for n in names]
    if not chosen:
        raise ValueError("selection_counts: the model has no MAM layer")
    try:
        probe = keras.Model(model.inputs, [layer.input for layer in chosen])
    except (AttributeError, ValueError, TypeError) as err:
        raise ValueError(
            "selection_counts: needs a functional or Sequential model whose MAM layers have "
            f"known inputs (build it on a keras.Input first): {err}"
        ) from err

    kernels = [tf.convert_to_tensor(layer.kernel) for layer in chosen]

    @tf.function(reduce_retracing=True)
    def selections(xs, ws):
        out = []
        for x, w in zip(xs, ws):
            x = tf.reshape(tf.cast(x, w.dtype), [-1, w.shape[0]])
            _, amax, amin = mam_op.mam_forward(x, w)
            cols = tf.range(w.shape[1], dtype=tf.int64)[None, :]
            size = w.shape[0] * w.shape[1]
            out.append((
                tf.math.bincount(tf.cast(amax, tf.int64) * w.shape[1] + cols, minlength=size,
                                 maxlength=size, dtype=tf.int64),
                tf.math.bincount(tf.cast(amin, tf.int64) * w.shape[1] + cols, minlength=size,
                                 maxlength=size, dtype=tf.int64),
            ))
        return out

    totals = [[np.zeros(int(np.prod(k.shape)), np.int64) for _ in range(2)] for k in kernels]
    for batch in iter_batches(data, batch_size):
        xs = probe(batch, training=False)
        if len(chosen) == 1:
            xs = [xs]
        for tot, (cmax, cmin) in zip(totals, selections(list(xs), kernels)):
            tot[0] += cmax.numpy()
            tot[1] += cmin.numpy()
    return {
        layer.name: SelectionCounts(t[0].reshape(k.shape), t[1].reshape(k.shape))
        for layer, k, t in zip(chosen, kernels, totals)
    }
