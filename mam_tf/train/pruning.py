"""Pruning MAM (and Dense) layers: tfmot schedules, one-shot pruning, held masks, footprints.

Two ways to prune, sharing one mechanism for holding zeros:

* Gradual pruning with tfmot: MAM layers implement tfmot's ``PrunableLayer`` interface
  (``get_prunable_weights() -> [kernel]``), so ``tfmot.sparsity.keras.prune_low_magnitude``
  with ``ConstantSparsity`` / ``PolynomialDecay`` and the ``UpdatePruningStep`` callback train
  them like any Dense layer, and ``strip_pruning`` gives back plain layers holding exact zeros.
* One-shot pruning (:func:`prune_magnitude`, :func:`prune_activation_rate`,
  :func:`apply_masks`): the mask is computed here, once, then held by tfmot's own
  ``PruneLowMagnitude`` wrapper driven by :class:`FixedMask`, a schedule that never asks for a
  mask update. The mask is a variable of the wrapper, so it is saved with the model (``.keras``,
  SavedModel, ``tf.train.Checkpoint``), and the wrapper re-applies it before every forward pass
  and at the end of every epoch, so fine-tuning (``fine_tune`` or ``fit`` with
  ``UpdatePruningStep``) keeps pruned weights at exactly zero.

Layers are named by their own (inner) name or by their wrapper's name. A pruned model is a new
model: the one passed in is never modified.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from mam_tf.train._tfmot import pruning_schedule as _schedules
from mam_tf.train._tfmot import pruning_wrapper as _wrapper
from mam_tf.train._tfmot import tfmot
from mam_tf.common.deprecation import REMOVED_IN, MamTfDeprecationWarning

from mam_tf.common import masks as _masks
from mam_tf.train import mam_op
from mam_tf.train.compat import keras, tf
from mam_tf.train.layers import MAMDense, MAMLayerMixin, require_graph_model, walk_layers
from mam_tf.train.schedule import iter_batches

__all__ = [
    "FixedMask",
    "prune_magnitude",
    "prune_activation_rate",
    "apply_masks",
    "get_masks",
    "strip_pruning",
    "fine_tune",
    "iterative_prune",
    "sweep",
    "summary",
    "quantized_kernel",
    "SCOPES",
]

SCOPES = _masks.SCOPES
PruneLowMagnitude = _wrapper.PruneLowMagnitude

# MAM layers are tfmot PrunableLayers (they define get_prunable_weights; registering makes
# isinstance(layer, tfmot.sparsity.keras.PrunableLayer) true as well).
tfmot.sparsity.keras.PrunableLayer.register(MAMDense)


def _register_tfmot_objects():
    """Lets ``keras.models.load_model`` read pruned models without ``prune_scope()``.

    tfmot's wrapper is not registered with Keras (tfmot asks for ``prune_scope()``); we add it
    to Keras' global custom objects under the name its configs use, without overriding
    anything the user registered. ``MAMDense`` is added under its plain class name too,
    because HDF5 files name the layer inside a wrapper that way.
    """
    objects = keras.utils.get_custom_objects()
    objects.setdefault("PruneLowMagnitude", PruneLowMagnitude)
    objects.setdefault("MAMDense", MAMDense)


_register_tfmot_objects()


@keras.utils.register_keras_serializable(package="mam_tf")
class FixedMask(_schedules.PruningSchedule):
    """A tfmot pruning schedule that never updates the mask: it holds the one it was given.

    ``PruneLowMagnitude`` asks its schedule at every training step whether to recompute the
    mask from the weight magnitudes; this schedule always answers no, so a mask computed by
    any method (activation rate, a global ranking, by hand) stays exactly as set. ``remaining``
    is informational (the fraction the mask keeps); the mask variable is the truth. The
    deprecated ``sparsity`` (1 - remaining) is still accepted, with a MamTfDeprecationWarning.
    """

    def __init__(self, sparsity=None, *, remaining=None):
        if remaining is None and sparsity is None:
            remaining = 1.0
        self.sparsity = _kept_fraction("FixedMask", remaining, sparsity)

    @property
    def remaining(self):
        return 1.0 - self.sparsity

    def __call__(self, step):
        return tf.constant(False), tf.constant(self.sparsity, tf.float32)

    def get_config(self):
        # tfmot's wrapper deserializes schedules by this class_name; the registered name is
        # found in Keras' global custom objects. The key stays "sparsity", tfmot's word, so
        # that models saved before and after read alike (from_config does not warn on it).
        return {"class_name": keras.utils.get_registered_name(type(self)),
                "config": {"sparsity": self.sparsity}}

    @classmethod
    def from_config(cls, config):
        if "sparsity" in config:
            mask = cls()
            mask.sparsity = _check_sparsity("FixedMask", config["sparsity"])
            return mask
        return cls(**config)


# ------------------------------------------------------------------------------------------
# Validation and layer resolution
# ------------------------------------------------------------------------------------------
def _check_sparsity(fn, sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"{fn}: sparsity must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:  # also refuses NaN
        raise ValueError(f"{fn}: sparsity must be in [0, 1), got {sparsity!r}")
    return s


_check_scope = _masks.check_scope
_n_pruned = _masks.n_pruned


def _kept_fraction(fn, remaining, sparsity):
    """The sparsity to prune to, from ``remaining`` (the fraction kept, in (0, 1]) or from the
    deprecated ``sparsity`` (1 - remaining, in [0, 1)); exactly one of them."""
    if remaining is not None and sparsity is not None:
        raise ValueError(f"{fn}: give remaining= (the fraction kept) or the deprecated sparsity=, "
                         f"not both (got remaining={remaining!r}, sparsity={sparsity!r})")
    if sparsity is not None:
        warnings.warn(f"{fn}: sparsity= is deprecated (goes in mam-tf {REMOVED_IN}); pass "
                      f"remaining=, the fraction of weights kept (remaining = 1 - sparsity)",
                      MamTfDeprecationWarning, stacklevel=3)
        return _check_sparsity(fn, sparsity)
    if remaining is None:
        raise ValueError(f"{fn}: remaining= is required (the fraction of weights kept, in (0, 1])")
    if (isinstance(remaining, bool) or not isinstance(remaining, numbers.Real)
            or not 0.0 < float(remaining) <= 1.0):  # also refuses NaN
        raise ValueError(f"{fn}: remaining must be a number in (0, 1], got {remaining!r}")
    return _check_sparsity(fn, max(0.0, 1.0 - float(remaining)))


def _is_quantize_wrapper(layer):
    return isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) or \
        type(layer).__name__ == "QuantizeAnnotate"


def _prunable(layer):
    """Dense-like layers with a 2-D kernel: Dense and MAM layers."""
    if not isinstance(layer, (keras.layers.Dense, MAMLayerMixin)):
        return False
    kernel = getattr(layer, "kernel", None)
    return kernel is not None and len(kernel.shape) == 2


@dataclass
class _Target:
    outer: object  # the layer in model.layers: the layer itself or its PruneLowMagnitude
    inner: object  # the Dense / MAM layer

    @property
    def name(self):
        return self.inner.name

    @property
    def mask_var(self):
        if isinstance(self.outer, PruneLowMagnitude):
            return self.outer.pruning_vars[0][1]
        return None

    def kernel(self):
        """The kernel as it acts: the variable times the held mask, if any."""
        k = self.inner.kernel.numpy()
        m = self.mask_var
        return k if m is None else k * m.numpy()

    def pruned(self):
        """Weights already pruned: masked out, or exactly zero."""
        m = self.mask_var
        zero = self.kernel() == 0
        return zero if m is None else zero | (m.numpy() == 0)


def _check_model(fn, model):
    require_graph_model(fn, model)
    for layer in model.layers:
        if _is_quantize_wrapper(layer):
            raise ValueError(f"{fn}: layer '{layer.name}' is quantization-aware; prune before "
                             "quantize_model, not after")


def _all_targets(model):
    found = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        if _prunable(inner):
            found.append(_Target(layer, inner))
    return found


def _resolve(fn, model, layers):
    """The targets named by ``layers`` (names or layer objects; default: all prunable)."""
    _check_model(fn, model)
    found = _all_targets(model)
    if layers is None:
        if not found:
            raise ValueError(f"{fn}: model '{model.name}' has no Dense or MAM layer to prune")
        return found
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    by_name = {}
    for t in found:
        by_name[t.inner.name] = t
        by_name[t.outer.name] = t
    chosen = []
    for item in layers:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str):
            raise ValueError(f"{fn}: {item!r} is neither a layer nor a layer name")
        if name not in by_name:
            others = [layer.name for layer in model.layers if layer.name == name]
            if others:
                kind = type(model.get_layer(name)).__name__
                raise ValueError(f"{fn}: layer '{name}' ({kind}) cannot be pruned; only Dense "
                                 f"and MAM layers can: {sorted(t.name for t in found)}")
            raise ValueError(f"{fn}: no prunable layer named {name!r} in model "
                             f"'{model.name}'; prunable layers are {sorted(t.name for t in found)}")
        t = by_name[name]
        if any(t is c for c in chosen):
            raise ValueError(f"{fn}: layer '{t.name}' is named twice in layers")
        chosen.append(t)
    if not chosen:
        raise ValueError(f"{fn}: layers is empty; name at least one layer (or pass None for all)")
    return chosen


# ------------------------------------------------------------------------------------------
# Building the pruned model
# ------------------------------------------------------------------------------------------
def copy_model(model):
    """An independent copy of a functional/Sequential model, every variable copied (masks too)."""
    copy = keras.models.clone_model(model)
    new_vars, old_vars = copy.weights, model.weights
    if len(new_vars) != len(old_vars):
        raise ValueError(f"could not copy model '{model.name}': its clone has {len(new_vars)} "
                         f"variables, the model {len(old_vars)}")
    for new, old in zip(new_vars, old_vars):
        if new.shape != old.shape:
            raise ValueError(f"could not copy model '{model.name}': variable {old.name} has shape "
                             f"{old.shape}, its clone {new.shape}")
        new.assign(old)
    return copy


def _wrap_with_masks(fn, copy, targets, masks, sparsity):
    """Re-wraps the targets of ``copy`` in PruneLowMagnitude(FixedMask) holding ``masks``.

    ``copy`` is a private copy: its layers are reused, so no weights need copying.
    """
    by_outer = {id(t.outer): t for t in targets}
    wrappers = {}

    def clone_fn(layer):
        t = by_outer.get(id(layer))
        if t is None:
            return layer
        schedule = FixedMask.from_config({"sparsity": sparsity})
        w = PruneLowMagnitude(t.inner, pruning_schedule=schedule)
        wrappers[t.name] = w
        return w

    try:
        model = keras.models.clone_model(copy, clone_function=clone_fn)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{fn}: could not rebuild model '{copy.name}' with pruning "
                         f"wrappers: {err}") from err
    for t in targets:
        w = wrappers[t.name]
        mask_var = w.pruning_vars[0][1]
        keep = masks[t.name]
        mask_var.assign(keep.astype(mask_var.dtype.as_numpy_dtype))
        w.pruning_obj.weight_mask_op()  # kernel *= mask, now (eager)
    return model


def _masks_from_scores(fn, targets, scores, sparsity, scope):
    """Keep masks pruning exactly round(sparsity * n) weights, lowest score first.

    Weights already pruned (masked or exactly zero) go first; ties in score are broken by
    smaller magnitude, then by position (row-major in the Keras kernel, layers in order).
    """
    return _masks.keep_masks(
        fn,
        [(t.name, t.kernel(), t.pruned(), scores[t.name]) for t in targets],
        lambda n: _n_pruned(sparsity, n),
        scope,
    )


def _prune_with_scores(fn, model, sparsity, layers, scope, scores):
    copy = copy_model(model)
    targets = _resolve(fn, copy, layers)
    masks = _masks_from_scores(fn, targets, scores, sparsity, scope)
    return _wrap_with_masks(fn, copy, targets, masks, sparsity)


def _magnitude_scores(targets):
    return {t.name: np.abs(t.kernel()) for t in targets}


def prune_magnitude(model, sparsity=None, layers=None, scope="layer", *, remaining=None):
    """One-shot magnitude pruning of Dense and MAM layers: the smallest |w| go first.

    Args:
      model: a built functional or Sequential model (it is not modified).
      remaining: fraction of weights kept, in (0, 1]; reached exactly: round((1 - remaining)
        * n) weights are pruned, n counted per layer (``scope="layer"``) or over all the chosen
        layers together (``scope="global"``).
      sparsity: deprecated (a MamTfDeprecationWarning), 1 - remaining: the fraction pruned.
        It is still the second positional argument, so ``prune_magnitude(model, 0.9)`` prunes
        90% as before (and warns); give ``remaining=`` by name.
      layers: layers or layer names to prune (default: every Dense and MAM layer).
      scope: ``"layer"`` (each layer to ``remaining``) or ``"global"`` (one ranking across
        layers).
    Returns:
      A new model in which the chosen layers are wrapped in tfmot's ``PruneLowMagnitude`` with
      a :class:`FixedMask` schedule, their masks set and their pruned weights zeroed. Fine-tune
      it with :func:`fine_tune` (or ``fit`` with ``tfmot.sparsity.keras.UpdatePruningStep()``),
      then :func:`strip_pruning`.

    Weights pruned earlier (held masks, or exact zeros) stay pruned and count towards the
    target; asking to keep more than a layer still has is an error.
    """
    fn = "prune_magnitude"
    sparsity = _kept_fraction(fn, remaining, sparsity)
    _check_scope(fn, scope)
    targets = _resolve(fn, model, layers)
    return _prune_with_scores(fn, model, sparsity, layers, scope, _magnitude_scores(targets))


# ------------------------------------------------------------------------------------------
# Activation-rate pruning
# ------------------------------------------------------------------------------------------
def _activation_counts(fn, model, data, targets, batch_size=256):
    """For each target: how often each weight was the argmax or argmin of its row over data.

    The same count as :func:`mam_tf.selection_counts` (argmax count + argmin count, ties to
    the lowest input), for Dense layers too (their products w_ij x_i, as a MAM neuron would
    see them), through pruning wrappers (the masked kernel is the one that selects).
    """
    try:
        probe = keras.Model(model.inputs, [t.outer.input for t in targets])
    except (AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{fn}: cannot read the inputs of layers {[t.name for t in targets]} "
                         f"(shared layers and nested models are not supported): {err}") from err
    kernels = [tf.constant(t.kernel(), tf.float32) for t in targets]

    @tf.function(reduce_retracing=True)
    def counts(xs, ws):
        out = []
        for x, w in zip(xs, ws):
            n, m = w.shape
            x = tf.reshape(tf.cast(x, w.dtype), [-1, n])
            _, amax, amin = mam_op.mam_forward(x, w)
            cols = tf.range(m, dtype=tf.int64)[None, :]
            flat = tf.concat([tf.reshape(tf.cast(amax, tf.int64) * m + cols, [-1]),
                              tf.reshape(tf.cast(amin, tf.int64) * m + cols, [-1])], 0)
            out.append(tf.math.bincount(flat, minlength=n * m, maxlength=n * m, dtype=tf.int64))
        return out

    totals = [np.zeros(int(np.prod(k.shape)), np.int64) for k in kernels]
    seen = 0
    for batch in iter_batches(data, batch_size):
        xs = probe(batch, training=False)
        if len(targets) == 1:
            xs = [xs]
        for tot, c in zip(totals, counts(list(xs), kernels)):
            tot += c.numpy()
        seen += 1
    if not seen:
        raise ValueError(f"{fn}: data is empty")
    return {t.name: tot.reshape(k.shape) for t, k, tot in zip(targets, kernels, totals)}


def _activation_scores(fn, model, data, layers, batch_size=256):
    # Counted on a private copy: its layers have one call site each, so layer.input is the
    # input in this graph even when the model's layers were used in another model before.
    copy = copy_model(model)
    return _activation_counts(fn, copy, data, _resolve(fn, copy, layers), batch_size)


def prune_activation_rate(model, data, sparsity=None, layers=None, scope="layer", batch_size=256,
                          *, remaining=None):
    """One-shot pruning by activation rate: the weights least often selected go first.

    A weight's activation rate is how often, over ``data``, it was the argmax or the argmin
    of its row (``w_ij x_i`` over i, for unit j), the two products a MAM neuron keeps
    (counted as :func:`mam_tf.selection_counts` does; for Dense layers, of the same
    products). Fewest selections are pruned first; ties go to the smaller magnitude.

    ``data``: model inputs (a numpy array, a ``tf.data.Dataset`` of x or (x, y) batches, or an
    iterable of batches). Other arguments (``remaining=``, the deprecated ``sparsity``) and the
    result as :func:`prune_magnitude`.
    """
    fn = "prune_activation_rate"
    sparsity = _kept_fraction(fn, remaining, sparsity)
    _check_scope(fn, scope)
    scores = _activation_scores(fn, model, data, layers, batch_size)
    return _prune_with_scores(fn, model, sparsity, layers, scope, scores)


def apply_masks(model, masks):
    """Prunes with masks given by hand: ``{layer_name: bool array of the kernel's shape}``.

    True keeps a weight. The result is held like the other one-shot methods' (a new model with
    ``PruneLowMagnitude(FixedMask)`` wrappers). A mask that keeps a weight an earlier pruning
    removed conflicts with it and is refused.
    """
    fn = "apply_masks"
    if not isinstance(masks, dict) or not masks:
        raise ValueError(f"{fn}: masks must be a non-empty dict {{layer_name: bool array}}, "
                         f"got {masks!r}")
    targets = _resolve(fn, model, list(masks))
    chosen = {}
    for t in targets:
        key = t.name if t.name in masks else t.outer.name
        m = np.asarray(masks[key])
        if m.shape != tuple(t.inner.kernel.shape):
            raise ValueError(f"{fn}: mask for layer '{t.name}' has shape {m.shape}, its kernel "
                             f"{tuple(t.inner.kernel.shape)}")
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise ValueError(f"{fn}: mask for layer '{t.name}' must be boolean (or 0/1)")
            m = m.astype(bool)
        revived = int((m & t.pruned()).sum())
        if revived:
            raise ValueError(f"{fn}: mask for layer '{t.name}' keeps {revived} weights an earlier "
                             "pruning removed: it conflicts with the mask held")
        chosen[t.name] = m
    sparsity = float(1.0 - sum(m.sum() for m in chosen.values())
                     / sum(m.size for m in chosen.values()))
    copy = copy_model(model)
    targets = _resolve(fn, copy, list(masks))
    return _wrap_with_masks(fn, copy, targets, chosen, min(sparsity, np.nextafter(1.0, 0.0)))


def get_masks(model):
    """The masks held by pruning wrappers: ``{inner layer name: bool array}`` (True = kept)."""
    return {layer.layer.name: layer.pruning_vars[0][1].numpy() != 0
            for layer in model.layers if isinstance(layer, PruneLowMagnitude)}


def strip_pruning(model):
    """Removes pruning wrappers, giving plain Dense / MAM layers that hold exact zeros.

    tfmot's ``strip_pruning`` with one guarantee added: every wrapper's mask is applied to its
    kernel first, so weights that moved since the last re-masking (a checkpoint saved in the
    middle of an epoch, a custom training loop) are zero again. Like tfmot's, the result shares
    its layers (and weights) with ``model``.
    """
    for layer in walk_layers(model):
        if isinstance(layer, PruneLowMagnitude) and layer.built:
            layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(model)


# ------------------------------------------------------------------------------------------
# Fine-tuning, iterative pruning, sweeps
# ------------------------------------------------------------------------------------------
def fine_tune(model, x, y=None, *, optimizer=None, loss=None, metrics=None, callbacks=None,
              run_eagerly=None, **fit_kwargs):
    """``model.fit`` for a pruned model, keeping pruned weights at exactly zero.

    Compiles the model when ``optimizer`` or ``loss`` is given (a freshly pruned model is a new,
    uncompiled model), adds tfmot's ``UpdatePruningStep`` callback if it is missing (the
    wrappers need it), fits, then re-applies every mask. ``metrics`` and ``run_eagerly`` go to
    ``compile``; other arguments go to ``fit``
    (``epochs``, ``batch_size``, ``verbose``, ...). Returns the History.
    """
    if optimizer is not None or loss is not None:
        if optimizer is None or loss is None:
            raise ValueError("fine_tune: pass both optimizer and loss (or neither, for a "
                             "model compiled already)")
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, run_eagerly=run_eagerly)
    elif getattr(model, "optimizer", None) is None or not getattr(model, "compiled_loss", None):
        raise ValueError(f"fine_tune: model '{model.name}' is not compiled; pass optimizer= and "
                         "loss=")
    callbacks = list(callbacks or [])
    if not any(isinstance(c, tfmot.sparsity.keras.UpdatePruningStep) for c in callbacks):
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    fit_kwargs.setdefault("verbose", 0)
    history = model.fit(x, y, callbacks=callbacks, **fit_kwargs)
    for layer in walk_layers(model):
        if isinstance(layer, PruneLowMagnitude) and layer.built:
            layer.pruning_obj.weight_mask_op()
    return history


_METHODS = ("magnitude", "activation_rate")


def _check_method(fn, method, data):
    if method not in _METHODS:
        raise ValueError(f"{fn}: method must be one of {_METHODS}, got {method!r}")
    if method == "activation_rate" and data is None:
        raise ValueError(f"{fn}: method 'activation_rate' needs data")


def _run_fine_tune(fn, model, how):
    if how is None:
        return None
    if callable(how):
        return how(model)
    if isinstance(how, dict):
        return fine_tune(model, **how)
    raise ValueError(f"{fn}: fine_tune must be None, a dict of fine_tune() arguments or a "
                     f"callable(model), got {how!r}")


def _progress(items, desc, enabled):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def iterative_prune(model, sparsities=None, *, remaining=None, method="magnitude", data=None,
                    layers=None, scope="layer", fine_tune=None, progress=True):
    """Prune -> fine-tune, repeated: one step per entry of ``remaining`` (fractions kept, in
    (0, 1], non-increasing; the deprecated ``sparsities``, 1 - remaining, non-decreasing).

    Each step prunes the previous step's model further (its masks held, so pruned weights stay
    pruned) by ``method`` (``"magnitude"`` or ``"activation_rate"``, which re-counts
    selections on ``data`` with the current weights), then fine-tunes it: ``fine_tune`` is a
    dict of :func:`fine_tune` arguments (it must name ``optimizer`` and ``loss``: each step
    makes a new model) or a ``callable(model)``. Returns ``(model, histories)``, the final
    wrapped model and each step's fine-tuning result.
    """
    fn = "iterative_prune"
    _check_method(fn, method, data)
    _check_scope(fn, scope)
    if remaining is not None and sparsities is not None:
        raise ValueError(f"{fn}: give remaining= (the fractions kept) or the deprecated "
                         f"sparsities=, not both (got remaining={remaining!r}, "
                         f"sparsities={sparsities!r})")
    if sparsities is not None:
        warnings.warn(f"{fn}: sparsities= is deprecated (goes in mam-tf {REMOVED_IN}); pass "
                      f"remaining=, the fractions of weights kept (remaining = 1 - sparsity)",
                      MamTfDeprecationWarning, stacklevel=2)
        sparsities = [_check_sparsity(fn, s) for s in sparsities]
        asked = "sparsities"
    elif remaining is None:
        raise ValueError(f"{fn}: remaining= is required (the fractions of weights kept)")
    else:
        sparsities = [_kept_fraction(fn, r, None) for r in remaining]
        asked = "remaining"
    if not sparsities:
        raise ValueError(f"{fn}: {asked} is empty")
    if any(b < a for a, b in zip(sparsities, sparsities[1:])):
        trend = "increase" if asked == "remaining" else "decrease"
        given = list(remaining) if asked == "remaining" else sparsities
        raise ValueError(f"{fn}: {asked} must not {trend} (pruned weights stay pruned), "
                         f"got {given}")
    histories = []
    for s in _progress(sparsities, fn, progress):
        if method == "magnitude":
            model = _prune_with_scores(fn, model, s, layers, scope,
                                       _magnitude_scores(_resolve(fn, model, layers)))
        else:
            model = _prune_with_scores(fn, model, s, layers, scope,
                                       _activation_scores(fn, model, data, layers))
        histories.append(_run_fine_tune(fn, model, fine_tune))
    return model, histories


def sweep(model, remaining, metric, *, method="magnitude", data=None, layers=None,
          scope="layer", fine_tune=None, progress=True):
    """Prunes a trained model to each remaining fraction and measures it: metric per fraction.

    For each fraction f in ``remaining`` (in (0, 1]), the chosen layers of a fresh copy of
    ``model`` are pruned one-shot to sparsity 1 - f (``method``: ``"magnitude"`` or
    ``"activation_rate"``, whose counts are taken once, on ``data``), optionally fine-tuned
    (``fine_tune``: a dict of :func:`fine_tune` arguments or a ``callable(model)``), stripped,
    and passed to ``metric(model) -> float``.

    Returns a list of dicts, one per fraction, in the order given: ``remaining``,
    ``sparsity``, ``nonzero`` and ``total`` (weights of the chosen layers) and ``metric``.
    """
    fn = "sweep"
    _check_method(fn, method, data)
    _check_scope(fn, scope)
    if not callable(metric):
        raise ValueError(f"{fn}: metric must be a callable(model) -> float, got {metric!r}")
    fractions = list(remaining)
    if not fractions:
        raise ValueError(f"{fn}: remaining is empty")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 < float(f) <= 1.0:
            raise ValueError(f"{fn}: remaining fractions must be in (0, 1], got {f!r}")
    targets = _resolve(fn, model, layers)
    if method == "magnitude":
        scores = _magnitude_scores(targets)
    else:
        scores = _activation_scores(fn, model, data, layers)
    names = [t.name for t in targets]
    rows = []
    for f in _progress(fractions, fn, progress):
        sparsity = _check_sparsity(fn, max(0.0, 1.0 - float(f)))
        pruned = _prune_with_scores(fn, model, sparsity, layers, scope, scores)
        _run_fine_tune(fn, pruned, fine_tune)
        stripped = strip_pruning(pruned)
        kernels = [stripped.get_layer(n).kernel.numpy() for n in names]
        rows.append({
            "remaining": float(f),
            "sparsity": sparsity,
            "nonzero": int(sum(np.count_nonzero(k) for k in kernels)),
            "total": int(sum(k.size for k in kernels)),
            "metric": metric(stripped),
        })
    return rows


# ------------------------------------------------------------------------------------------
# Footprint summary
# ------------------------------------------------------------------------------------------
_csr_entries = _masks.csr_entries


def _quantized_sparsity_mask(layer):
    """The sparsity mask a QAT wrapper holds for its kernel, if any (see mam_tf.train.quantization)."""
    for w in getattr(layer, "_non_trainable_weights", ()):
        if w.name.split("/")[-1].startswith("kernel_sparsity_mask"):
            return w.numpy()
    return None


def _kernel_variable(outer, inner):
    """The kernel variable (a QAT wrapper replaces ``inner.kernel`` by its fake-quantized tensor
    and tracks the variable itself)."""
    if isinstance(getattr(inner, "kernel", None), tf.Variable):
        return inner.kernel
    for w in outer.weights:
        if w.name.split("/")[-1].split(":")[0] == "kernel":
            return w
    raise ValueError(f"summary: cannot find the kernel variable of layer '{inner.name}'")


def quantized_kernel(model, layer):
    """The kernel variable of ``layer`` inside a QAT model, and the sparsity mask its wrapper
    holds for it.

    A QAT wrapper (``mam_tf.train.quantization.quantize_model``) owns the float kernel that QAT
    trains and, with a sparsity-preserving quantizer, a ``kernel_sparsity_mask`` variable that
    keeps pruned weights at zero. Assigning both prunes the QAT model in place: the wrapped
    layer's ``kernel`` attribute is the fake-quantized tensor, not a variable.

    Args:
      model: a QAT model.
      layer: the wrapped layer's own name (e.g. ``"fc1"``) or its wrapper's name.
    Returns:
      ``(kernel, mask)``: two ``tf.Variable`` s, ``mask`` None when the wrapper holds no mask.
    """
    for outer in model.layers:
        inner = getattr(outer, "layer", None)
        if inner is None or layer not in (outer.name, inner.name):
            continue
        if not _is_quantize_wrapper(outer):
            raise ValueError(f"quantized_kernel: layer '{layer}' of model '{model.name}' is "
                             f"wrapped by a {type(outer).__name__}, not a QAT wrapper")
        # tfmot's record of the wrapped weights: (variable, quantizer, quantizer variables)
        for weight, _, qvars in outer._weight_vars:  # noqa: SLF001 (tfmot's record)
            if weight.name.split("/")[-1].split(":")[0] == "kernel":
                return weight, qvars.get("sparsity_mask")
        raise ValueError(f"quantized_kernel: the QAT wrapper of layer '{layer}' quantizes no "
                         "kernel")
    raise ValueError(f"quantized_kernel: model '{model.name}' has no QAT-wrapped layer "
                     f"'{layer}'")


def summary(model, print_fn=print):
    """Per-layer weight counts and storage of the Dense and MAM layers of a model.

    For each such layer (plain, inside a pruning wrapper, or inside a QAT wrapper), in model
    order: ``layer``, ``class``, ``inputs`` (N), ``units`` (M), ``total`` weights, ``nonzero``
    weights (of the kernel as it acts: held masks applied), ``remaining`` (nonzero / total;
    ``sparsity``, 1 - remaining, is kept for one release), ``dense_int8_bytes``
    (M*N + 4*M for an int32 bias) and ``csr_bytes`` (offset-CSR, docs/operator-contract.md
    section 2:
    2*E + 2*M + 4*M for the bias, E = ``csr_entries``, dummy entries included). Zeros are
    counted on the float weights: a small weight that will round to int8 zero still counts
    here (the converter's encoder drops it).

    Prints a table (``print_fn=None`` prints nothing) and returns
    ``{"layers": [row, ...], "total": row}``.
    """
    rows = []
    for layer in model.layers:
        inner = layer
        mask = None
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            mask = layer.pruning_vars[0][1].numpy()
        elif _is_quantize_wrapper(layer):
            inner = layer.layer
            mask = _quantized_sparsity_mask(layer)
        if not _prunable(inner):
            continue
        k = _kernel_variable(layer, inner).numpy()
        if mask is not None:
            k = k * mask
        rows.append(_masks.footprint_row(inner.name, type(inner).__name__, k, inner.use_bias))
    total = _masks.footprint_total(rows)
    if print_fn is not None:
        print_fn(_masks.format_footprint(rows, total))
    return {"layers": rows, "total": total}
