"""Pruning for Keras 3 MAM layers, without tfmot: one-shot by magnitude or by activation rate
(per layer or global, to an exact ``remaining`` fraction), fixed masks that training keeps at
zero and that ``.keras`` files save, iterative prune + fine-tune, and the footprint summary.

A pruned layer holds its mask as the non-trainable weight ``kernel_mask`` and computes with
``kernel * kernel_mask`` (:class:`mam_tf.keras3.MAMDense`), so the pruned weights act as exact
zeros through any optimizer, on every backend. The ranking, the counts and the offset-CSR
footprint are :mod:`mam_tf.common.masks`, the same code as the tf_keras path's.

Unlike the tf_keras functions, these prune the model in place (and return it): the layers
keep their identity and the mask is part of each layer. Only MAMDense layers are pruned.
"""
from __future__ import annotations

import numbers

import numpy as np
from keras import ops

from mam_tf.common import masks as _masks
from mam_tf.keras3.layers import mam_layers
from mam_tf.keras3.training import chosen_layers, layer_selection_counts

__all__ = ["prune_magnitude", "prune_activation_rate", "apply_masks", "get_masks",
           "fine_tune", "iterative_prune", "summary", "SCOPES"]

SCOPES = _masks.SCOPES
_METHODS = ("magnitude", "activation_rate")


def _check_remaining(fn, remaining):
    if isinstance(remaining, bool) or not isinstance(remaining, numbers.Real):
        raise ValueError(f"{fn}: remaining must be a number in (0, 1], got {remaining!r}")
    r = float(remaining)
    if not 0.0 < r <= 1.0:  # also refuses NaN
        raise ValueError(f"{fn}: remaining must be in (0, 1], got {remaining!r}")
    return r


def _current(layer):
    """(the kernel as it acts, where it is pruned) as numpy."""
    k = ops.convert_to_numpy(layer.effective_kernel())
    return k, k == 0


def _set_masks(model, masks):
    for layer in mam_layers(model):
        if layer.name in masks:
            keep = np.asarray(masks[layer.name], bool)
            mask_var = layer.enable_mask()
            mask_var.assign(keep.astype(np.float32))
            kernel = ops.convert_to_numpy(layer._kernel)
            layer._kernel.assign(np.where(keep, kernel, 0).astype(kernel.dtype))
    return model


def _prune(fn, model, remaining, layers, scope, scores):
    chosen = chosen_layers(fn, model, layers)
    items = []
    for layer in chosen:
        k, pruned = _current(layer)
        items.append((layer.name, k, pruned, scores(layer, k)))
    masks = _masks.keep_masks(fn, items, lambda n: n - _masks.n_kept(remaining, n), scope)
    return _set_masks(model, masks)


def prune_magnitude(model, remaining, layers=None, scope="layer"):
    """One-shot magnitude pruning of MAM layers, in place: the smallest |w| go first.

    ``remaining``: the fraction of weights kept, in (0, 1], reached exactly:
    round(remaining * n) weights are kept (halves up), n counted per layer
    (``scope="layer"``) or over all the chosen layers together (``scope="global"``). Weights
    pruned before stay pruned and count towards the target; a target keeping more weights than
    a layer has left is refused. Returns the model.
    """
    fn = "prune_magnitude"
    remaining = _check_remaining(fn, remaining)
    _masks.check_scope(fn, scope)
    return _prune(fn, model, remaining, layers, scope, lambda layer, k: np.abs(k))


def prune_activation_rate(model, data, remaining, layers=None, scope="layer", batch_size=256):
    """One-shot pruning by activation rate, in place: the weights least often the argmax or
    the argmin of their row over ``data`` go first (ties: the smaller magnitude). Other
    arguments as :func:`prune_magnitude`."""
    fn = "prune_activation_rate"
    remaining = _check_remaining(fn, remaining)
    _masks.check_scope(fn, scope)
    chosen = chosen_layers(fn, model, layers)
    counts = {layer.name: a + b for layer, a, b in
              layer_selection_counts(fn, model, data, chosen, batch_size)}
    return _prune(fn, model, remaining, [l.name for l in chosen], scope,
                  lambda layer, k: counts[layer.name])


def apply_masks(model, masks):
    """Prunes with masks given by hand, in place: ``{layer_name: bool array of the kernel's
    shape}`` (True keeps). Returns the model."""
    fn = "apply_masks"
    if not isinstance(masks, dict) or not masks:
        raise ValueError(f"{fn}: masks must be a non-empty dict {{layer_name: bool array}}, "
                         f"got {masks!r}")
    by_name = {layer.name: layer for layer in mam_layers(model)}
    for name, mask in masks.items():
        if name not in by_name:
            raise ValueError(f"{fn}: no MAM layer named {name!r}; MAM layers are {sorted(by_name)}")
        shape = tuple(by_name[name]._kernel.shape)
        if np.shape(mask) != shape:
            raise ValueError(f"{fn}: the mask of layer '{name}' has shape {np.shape(mask)}, "
                             f"its kernel {shape}")
    return _set_masks(model, masks)


def get_masks(model):
    """``{layer_name: bool array}`` of the masks the model's MAM layers hold."""
    return {layer.name: ops.convert_to_numpy(layer.kernel_mask).astype(bool)
            for layer in mam_layers(model) if layer.kernel_mask is not None}


def fine_tune(model, x, y=None, *, optimizer="adam", loss=None, metrics=None, **fit_kwargs):
    """Compiles (the masks just added must be in the compiled step) and fits; pruned weights
    stay zero. Returns the History."""
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError("fine_tune: give loss= (the model was never compiled)")
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model.fit(x, y, **fit_kwargs)


def iterative_prune(model, remainings, *, method="magnitude", data=None, layers=None,
                    scope="layer", fine_tune_args=None):
    """Prunes to each of ``remainings`` in turn (decreasing, each in (0, 1]), fine-tuning after
    each step with ``fine_tune(model, **fine_tune_args)`` when given. Returns the model."""
    fn = "iterative_prune"
    if method not in _METHODS:
        raise ValueError(f"{fn}: method must be one of {_METHODS}, got {method!r}")
    if method == "activation_rate" and data is None:
        raise ValueError(f"{fn}: method='activation_rate' needs data=")
    previous = 1.0
    for r in remainings:
        r = _check_remaining(fn, r)
        if r > previous:
            raise ValueError(f"{fn}: remainings must not increase, got {list(remainings)!r}")
        previous = r
        if method == "magnitude":
            prune_magnitude(model, r, layers=layers, scope=scope)
        else:
            prune_activation_rate(model, data, r, layers=layers, scope=scope)
        if fine_tune_args:
            fine_tune(model, **fine_tune_args)
    return model


def summary(model, print_fn=print):
    """Per-layer weights kept and storage of the model's Keras 3 MAM layers, as
    :func:`mam_tf.train.pruning.summary` (the same rows, from :mod:`mam_tf.common.masks`)."""
    rows = [_masks.footprint_row(layer.name, type(layer).__name__,
                                 ops.convert_to_numpy(layer.effective_kernel()), layer.use_bias)
            for layer in mam_layers(model)]
    total = _masks.footprint_total(rows)
    if print_fn is not None:
        print_fn(_masks.format_footprint(rows, total))
    return {"layers": rows, "total": total}
