"""Quantization-aware training (fake quantization) for models with MAM and Dense layers.

:func:`quantize_model` turns a float model into a QAT model through tfmot's quantize API
(``quantize_annotate_layer`` + ``quantize_apply``, one ``QuantizeConfig`` per layer), in one
of the two schemes the converter emits:

========== ============================================ ==========================================
scheme      weights (kernel)                             activations (layer inputs and outputs)
========== ============================================ ==========================================
"int8"      int8 symmetric, [-127, 127], zero point 0,  int8 asymmetric, [-128, 127]
            per tensor or per output channel (unit)
"int16x8"   the same                                    int16 symmetric, [-32767, 32767],
                                                        zero point 0 (seed 004)
========== ============================================ ==========================================

What tfmot expresses, and what it does not (read in tfmot 0.8.1's source):

* int8 weights, per tensor or per channel: tfmot's ``LastValueQuantizer(8, per_axis,
  symmetric=True, narrow_range=True)``, as its default Dense config uses.
* 8-bit asymmetric activations: tfmot's ``MovingAverageQuantizer(8, symmetric=False)``, and the
  model input ``AllValuesQuantizer(8)``, as in tfmot's default 8-bit scheme.
* 16-bit symmetric activations: tfmot's quantizers CAN express them:
  ``MovingAverageQuantizer(16, symmetric=True, narrow_range=True)`` (EMA ranges kept symmetric,
  ``fake_quant_with_min_max_vars`` takes 2..16 bits; the nudged zero point is exactly 0).
  tfmot's ``default_n_bit`` scheme cannot: it makes 16-bit activations asymmetric.
* Fixed ranges (seed 004's [-1, 1] weights, inputs and outputs): tfmot's ``FixedQuantizer``
  CANNOT do 16 bits: its ``num_bits`` is stored but never passed on (``quant_ops.FixedQuantize``
  calls ``fake_quant_with_min_max_args`` with its default 8 bits). :class:`FixedRangeQuantizer`
  here is that quantizer with ``num_bits`` honoured; it is used for every fixed range.
* Held sparsity: tfmot's prune-preserving QAT keeps its mask in a plain tensor computed when
  the layer is built (so a reloaded model recomputes it from freshly initialised weights and
  loses it). :class:`SparsityPreservingQuantizer` keeps the mask in a variable of the wrapper,
  saved with the model; the kernel is multiplied by it before fake quantization, so pruned
  weights get zero gradient, stay exactly 0, and symmetric quantization maps them to int 0.
* The model input's quantize layer: tfmot's scheme inserts an 8-bit asymmetric one; our scheme
  (same layout-transform mechanism) inserts the scheme's input quantizer instead.

Where the converter finds the numbers: :func:`layer_quant_params` (one dict per Dense / MAM
layer, see there); every number in it is read from the QAT model's own variables and configs:
the scheme from ``wrapper.quantize_config.scheme``, weight ranges from the weight quantizer's
``kernel_min``/``kernel_max`` variables, the output range from the activation quantizer's
``post_activation_min/max`` (or ``pre_activation_*`` before a sigmoid/tanh/softmax) variables,
and the input range from whichever quantizer produced the layer's input (the ``QuantizeLayer``
after the model input, or the previous layer's output quantizer).
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
from mam_tf.train._tfmot import default_8bit_quantize_registry, default_8bit_transforms
from mam_tf.train._tfmot import model_transformer, quantize_layout_transform, quantize_scheme
from mam_tf.train._tfmot import quantize_layer as _qlayer
from mam_tf.train._tfmot import quantize_utils as _qutils
from mam_tf.train._tfmot import quantize_wrapper as _qwrapper
from mam_tf.train._tfmot import tfmot, transforms

from mam_tf.train import mam_op
from mam_tf.train.compat import keras, tf
from mam_tf.train.layers import MAMLayerMixin, require_graph_model

__all__ = [
    "SCHEMES",
    "quantize_model",
    "layer_quant_params",
    "FixedRangeQuantizer",
    "SparsityPreservingQuantizer",
    "DenseQuantizeConfig",
    "MAMDenseQuantizeConfig",
    "PassThroughQuantizeConfig",
    "QATInput",
    "QATWrapper",
]

SCHEMES = ("int8", "int16x8")
_ACT_BITS = {"int8": 8, "int16x8": 16}
_QUANTIZERS = tfmot.quantization.keras.quantizers
_QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapper
_QuantizeLayer = _qlayer.QuantizeLayer  # not in tfmot's public API
_QuantizeWrapperV2 = _qwrapper.QuantizeWrapperV2
# Activations tfmot's QuantizeAwareActivation can wrap (quantize_aware_activation.py).
_PRE_QUANT = frozenset({"softmax", "sigmoid", "tanh", "gelu"})
_POST_QUANT = frozenset({"linear", "relu", "swish", "gelu"})
_PASS_THROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def _register_tfmot_objects():
    """Lets ``keras.models.load_model`` read QAT models without tfmot's ``quantize_scope()``.

    Adds what ``quantize_scope()`` holds to Keras' global custom objects, never replacing an
    entry the user registered.
    """
    objects = keras.utils.get_custom_objects()
    for mapping in tfmot.quantization.keras.quantize_scope().custom_objects:
        for name, obj in mapping.items():
            objects.setdefault(name, obj)


_register_tfmot_objects()


# ------------------------------------------------------------------------------------------
# Quantizers
# ------------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="mam_tf")
class FixedRangeQuantizer(_QUANTIZERS.Quantizer):
    """Fake quantization to ``num_bits`` over a fixed range [min, max]; no variables.

    tfmot's ``FixedQuantizer`` takes ``num_bits`` but always quantizes to 8 bits; this one
    honours it (``tf.quantization.fake_quant_with_min_max_args(num_bits=...)``), so it also
    gives seed 004's 16-bit [-1, 1] inputs and outputs. ``narrow_range`` drops the lowest
    level (symmetric ranges then have zero point exactly 0).
    """

    def __init__(self, num_bits, min, max, narrow_range):  # noqa: A002 (tfmot's names)
        if isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral) \
                or not 2 <= num_bits <= 16:
            raise ValueError(f"FixedRangeQuantizer: num_bits must be an integer in [2, 16], "
                             f"got {num_bits!r}")
        lo, hi = float(min), float(max)
        if not (lo <= 0.0 <= hi and lo < hi):
            raise ValueError(f"FixedRangeQuantizer: the range must hold 0 and have min < max, "
                             f"got [{min!r}, {max!r}]")
        self.num_bits = int(num_bits)
        self.min = lo
        self.max = hi
        self.narrow_range = bool(narrow_range)

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.quantization.fake_quant_with_min_max_args(
            inputs, min=self.min, max=self.max, num_bits=self.num_bits,
            narrow_range=self.narrow_range)

    def get_config(self):
        return {"num_bits": self.num_bits, "min": self.min, "max": self.max,
                "narrow_range": self.narrow_range}

    def __eq__(self, other):
        return isinstance(other, FixedRangeQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="mam_tf")
class SparsityPreservingQuantizer(_QUANTIZERS.Quantizer):
    """Wraps a weight quantizer so zero weights stay zero: quantizes ``w * mask``.

    The mask is a non-trainable variable of the QAT wrapper (``<weight>_sparsity_mask``),
    initialised to ``w != 0`` when the wrapper is built and saved with the model, so it
    survives ``.keras`` files, SavedModels and checkpoints. Masked weights get zero gradient
    (the product rule through the mask), so their variables stay 0 too.
    """

    def __init__(self, quantizer):
        if isinstance(quantizer, dict):
            quantizer = _qutils.deserialize_keras_object(quantizer)
        if not isinstance(quantizer, _QUANTIZERS.Quantizer):
            raise ValueError(f"SparsityPreservingQuantizer: needs a tfmot Quantizer, got "
                             f"{quantizer!r}")
        self.quantizer = quantizer

    def build(self, tensor_shape, name, layer):
        weight = getattr(layer.layer, name)
        mask = layer.add_weight(
            name + "_sparsity_mask",
            shape=tensor_shape,
            initializer=lambda shape, dtype=None: tf.cast(tf.not_equal(weight, 0), tf.float32),
            trainable=False,
        )
        inner = self.quantizer.build(tensor_shape, name, layer) or {}
        return {"sparsity_mask": mask, **inner}

    def __call__(self, inputs, training, weights, **kwargs):
        inner = {k: v for k, v in weights.items() if k != "sparsity_mask"}
        masked = inputs * tf.cast(weights["sparsity_mask"], inputs.dtype)
        return self.quantizer(masked, training, inner, **kwargs)

    def get_config(self):
        return {"quantizer": _qutils.serialize_keras_object(self.quantizer)}

    def __eq__(self, other):
        return isinstance(other, SparsityPreservingQuantizer) and self.quantizer == other.quantizer

    def __ne__(self, other):
        return not self.__eq__(other)


# tfmot 0.8.1's QAT models cannot be loaded from .keras files (its own quantize_model's
# neither): "Layer 'quantize_layer' expected 5 variables, but received 3", then "Layer
# 'quant_d' expected 7 variables, but received 9". The two classes below are tfmot's, with
# those two build bugs fixed; quantize_model swaps them in after quantize_apply.
@keras.utils.register_keras_serializable(package="mam_tf")
class QATInput(_QuantizeLayer):
    """tfmot's ``QuantizeLayer`` (fake quantization of a model input), built once.

    tfmot's ``build`` never marks the layer built, so ``.keras`` loading (which builds a layer
    from its config, then calls it) built it twice and created its range variables twice.
    """

    def build(self, input_shape):
        if self.built:
            return
        super().build(input_shape)
        self.built = True


@keras.utils.register_keras_serializable(package="mam_tf")
class QATWrapper(_QuantizeWrapperV2):
    """tfmot's ``QuantizeWrapperV2`` with the wrapped layer built before it lists its weights.

    tfmot's ``build`` records the wrapped layer's trainable weights before building it: when
    ``quantize_apply`` wraps a built layer it records kernel and bias, when ``.keras`` loading
    builds an unbuilt one it records nothing, so the saved and the expected variables differ.
    """

    def build(self, input_shape):
        if not self.layer.built:
            # Under a name scope: unscoped, every MAM layer's kernel is plain "kernel:0" and
            # saving an HDF5 file with optimizer slots fails on the duplicate names.
            with tf.name_scope(self.layer.name):
                self.layer.build(input_shape)
        super().build(input_shape)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("layer"), dict):
            # Leave the wrapped layer unbuilt (Keras would build it, unscoped, while
            # deserializing it); build() builds it.
            config["layer"] = {k: v for k, v in config["layer"].items() if k != "build_config"}
        return super().from_config(config)


# ------------------------------------------------------------------------------------------
# QuantizeConfigs
# ------------------------------------------------------------------------------------------
def _deserialize_quantizer(obj):
    return obj if isinstance(obj, _QUANTIZERS.Quantizer) else _qutils.deserialize_keras_object(obj)


def _check_scheme(fn, scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"{fn}: scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


class _DenseLikeQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Kernel through ``weight_quantizer``, activation through ``activation_quantizer``.

    The layer's own ``call`` then runs with the fake-quantized kernel (QuantizeWrapper sets
    ``layer.kernel`` to it), so a MAM layer computes max + min over fake-quantized products.
    ``scheme`` ("int8" / "int16x8") is recorded for the converter and saved with the config.
    """

    def __init__(self, weight_quantizer, activation_quantizer, scheme):
        self.weight_quantizer = _deserialize_quantizer(weight_quantizer)
        self.activation_quantizer = _deserialize_quantizer(activation_quantizer)
        self.scheme = _check_scheme(type(self).__name__, scheme)

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.weight_quantizer)]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        (kernel,) = quantize_weights
        if kernel.shape != layer.kernel.shape:
            raise ValueError(f"{type(self).__name__}: layer '{layer.name}' kernel has shape "
                             f"{layer.kernel.shape}, the quantized one {kernel.shape}")
        layer.kernel = kernel

    def set_quantize_activations(self, layer, quantize_activations):
        (layer.activation,) = quantize_activations

    def get_output_quantizers(self, layer):
        return []  # the activation quantizer quantizes the output (as TFLite fuses it)

    def get_config(self):
        return {
            "weight_quantizer": _qutils.serialize_keras_object(self.weight_quantizer),
            "activation_quantizer": _qutils.serialize_keras_object(self.activation_quantizer),
            "scheme": self.scheme,
        }

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="mam_tf")
class DenseQuantizeConfig(_DenseLikeQuantizeConfig):
    """QuantizeConfig of a Dense layer (the MAC baseline) under a mam-tf scheme."""


@keras.utils.register_keras_serializable(package="mam_tf")
class MAMDenseQuantizeConfig(_DenseLikeQuantizeConfig):
    """QuantizeConfig of a MAMDense layer: its MAM forward runs on the fake-quantized kernel."""


@keras.utils.register_keras_serializable(package="mam_tf")
class PassThroughQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Layers that only move values (Flatten, Reshape, Dropout): nothing to quantize."""

    def __init__(self, scheme):
        self.scheme = _check_scheme("PassThroughQuantizeConfig", scheme)

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"scheme": self.scheme}


# ------------------------------------------------------------------------------------------
# The scheme given to quantize_apply: only the input-quantize transform, with our quantizer
# ------------------------------------------------------------------------------------------
class _InputLayerQuantize(default_8bit_transforms.InputLayerQuantize):
    """tfmot's input transform (InputLayer -> QuantizeLayer), with the scheme's input quantizer."""

    def __init__(self, quantizer):
        self._quantizer = quantizer

    def replacement(self, match_layer):
        quant_layer = _QuantizeLayer(_deserialize_quantizer(
            _qutils.serialize_keras_object(self._quantizer)))
        config = _qutils.serialize_layer(quant_layer, use_legacy_format=True)
        config["name"] = quant_layer.name
        return transforms.LayerNode(config, input_layers=[match_layer])

    def custom_objects(self):
        return {**super().custom_objects(),
                "AllValuesQuantizer": _QUANTIZERS.AllValuesQuantizer,
                keras.utils.get_registered_name(FixedRangeQuantizer): FixedRangeQuantizer}


class _LayoutTransform(quantize_layout_transform.QuantizeLayoutTransform):
    def __init__(self, input_quantizer):
        self._input_quantizer = input_quantizer

    def apply(self, model, layer_quantize_map):
        return model_transformer.ModelTransformer(
            model, [_InputLayerQuantize(self._input_quantizer)],
            set(layer_quantize_map.keys()), layer_quantize_map).transform()


class _Scheme(quantize_scheme.QuantizeScheme):
    def __init__(self, input_quantizer):
        self._input_quantizer = input_quantizer

    def get_layout_transformer(self):
        return _LayoutTransform(self._input_quantizer)

    def get_quantize_registry(self):
        # Never consulted for configs: quantize_model annotates every layer itself.
        return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


# ------------------------------------------------------------------------------------------
# quantize_model
# ------------------------------------------------------------------------------------------
def _check_range(fn, what, value, symmetric):
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {what} must be None or (min, max), got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0.0 <= hi and lo < hi):
        raise ValueError(f"{fn}: {what} must be finite, hold 0 and have min < max, got {value!r}")
    if symmetric and lo != -hi:
        raise ValueError(f"{fn}: {what} must be symmetric (min == -max) for {symmetric}, "
                         f"got {value!r}")
    return lo, hi


def _activation_name(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def _dense_like(layer):
    return isinstance(layer, (keras.layers.Dense, MAMLayerMixin)) and \
        getattr(layer, "kernel", None) is not None and len(layer.kernel.shape) == 2


def _conv_like(layer):
    """Conv1D / Conv2D (not transposed, not depthwise): fake-quantized like Dense (kernel +
    activation), with one weight scale per layer."""
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)) and \
        not isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                               keras.layers.DepthwiseConv2D)) and \
        getattr(layer, "kernel", None) is not None


def _range_quantizer(scheme, fixed, learned):
    """The scheme's activation quantizer: a fixed range, or ``learned`` (a tfmot class)."""
    bits = _ACT_BITS[scheme]
    symmetric = scheme == "int16x8"
    if fixed is not None:
        return FixedRangeQuantizer(bits, fixed[0], fixed[1], narrow_range=symmetric)
    return learned(num_bits=bits, per_axis=False, symmetric=symmetric, narrow_range=symmetric)


def _activation_quantizer(scheme, fixed):
    return _range_quantizer(scheme, fixed, _QUANTIZERS.MovingAverageQuantizer)


def _input_quantizer(scheme, fixed):
    return _range_quantizer(scheme, fixed, _QUANTIZERS.AllValuesQuantizer)


def _weight_quantizer(per_channel, weight_range):
    if weight_range is not None:
        inner = FixedRangeQuantizer(8, weight_range[0], weight_range[1], narrow_range=True)
    else:
        inner = _QUANTIZERS.LastValueQuantizer(num_bits=8, per_axis=bool(per_channel),
                                               symmetric=True, narrow_range=True)
    return SparsityPreservingQuantizer(inner)


def _check_layers(fn, model):
    require_graph_model(fn, model)
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, (_QuantizeWrapper, _QuantizeLayer)) or kind == "QuantizeAnnotate":
            raise ValueError(f"{fn}: model '{model.name}' is quantized already (layer "
                             f"'{layer.name}' is a {kind})")
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer, _PASS_THROUGH):
            continue
        if isinstance(layer, keras.Model):
            raise ValueError(f"{fn}: layer '{layer.name}' is a nested model; QAT needs a flat "
                             "model")
        if not (_dense_like(layer) or _conv_like(layer)):
            raise ValueError(
                f"{fn}: layer '{layer.name}' ({kind}) is not supported for QAT; supported: "
                "Dense, MAMDense, Conv1D, Conv2D, Flatten, Reshape, Dropout")
        act = _activation_name(layer.activation)
        if act not in _PRE_QUANT | _POST_QUANT:
            raise ValueError(
                f"{fn}: layer '{layer.name}' has activation {act!r}, which tfmot cannot "
                f"fake-quantize; supported: {sorted(_PRE_QUANT | _POST_QUANT)}")
        if isinstance(layer, MAMLayerMixin) and layer.get_beta() != 0.0:
            raise ValueError(
                f"{type(layer).__name__} '{layer.name}': beta is {layer.get_beta():g}; QAT needs "
                "beta == 0 (finish the vanishing-contributions schedule first)")


def quantize_model(model, scheme="int8", *, per_channel=False, weight_range=None,
                   input_range=None, output_range=None, calibration_data=None):
    """A quantization-aware (fake-quantized) copy of a model with MAM and Dense layers.

    Args:
      model: a built functional or Sequential model of Dense, MAMDense (beta == 0), Conv1D,
        Conv2D (one weight scale per layer), Flatten, Reshape and Dropout layers. Pruning wrappers are stripped first (their masks
        applied); every zero weight then stays exactly zero through QAT.
      scheme: ``"int8"`` (int8 activations) or ``"int16x8"`` (int16 activations, zero point 0).
      per_channel: one weight scale per output unit instead of one per layer, for MAM layers
        (plain Dense layers keep one scale, with a warning: TFLite's converter cannot convert
        per-channel fake-quant Dense weights).
      weight_range: ``None`` (the range follows the weights: max |w|) or a fixed symmetric
        ``(-a, a)``, e.g. seed 004's ``(-1, 1)`` (scale a / 127). Not with ``per_channel``.
      input_range: ``None`` (the model input's range is learned as the running min/max seen in
        training) or a fixed ``(min, max)``, e.g. ``(-1, 1)``; symmetric for int16x8.
      output_range: ``None`` (learned, as every activation: an exponential moving average of
        the batch ranges, tfmot's choice) or a fixed ``(min, max)`` for the layers producing the
        model's outputs; symmetric for int16x8.
      calibration_data: optional model inputs; the learned activation ranges then start at the
        float model's ranges on this data (as post-training calibration would set them)
        instead of tfmot's initial [-6, 6] (and [0, 0] for the input).
    Returns:
      A new model (tfmot ``QuantizeWrapperV2`` around each layer, a ``QuantizeLayer`` after
      each input), uncompiled. Weight ranges start at the weights' own range. Read its
      quantization parameters with :func:`layer_quant_params`.
    """
    fn = "quantize_model"
    _check_scheme(fn, scheme)
    if not isinstance(per_channel, (bool, np.bool_)):
        raise ValueError(f"{fn}: per_channel must be True or False, got {per_channel!r}")
    weight_range = _check_range(fn, "weight_range", weight_range, "int8 weights")
    if weight_range is not None and per_channel:
        raise ValueError(f"{fn}: a fixed weight_range {weight_range} has one scale; it cannot be "
                         "per_channel")
    sym = "int16x8" if scheme == "int16x8" else None
    input_range = _check_range(fn, "input_range", input_range, sym)
    output_range = _check_range(fn, "output_range", output_range, sym)

    from mam_tf.train import pruning

    if any(isinstance(layer, pruning.PruneLowMagnitude) for layer in getattr(model, "layers", ())):
        model = pruning.strip_pruning(model)
    _check_layers(fn, model)
    output_names = set(model.output_names)
    if output_range is not None:
        bad = [layer.name for layer in model.layers
               if layer.name in output_names and not (_dense_like(layer) or _conv_like(layer))]
        if bad:
            raise ValueError(f"{fn}: output_range applies to Dense/MAM/Conv layers; model outputs "
                             f"come from {bad}")

    # TFLite's converter cannot convert per-channel fake-quant Dense kernels ("mismatched
    # quantized axes" on the kernel's transpose); MAM layers are exported by mam-tf itself.
    per_tensor_dense = [layer.name for layer in model.layers if per_channel and (
                        _dense_like(layer) or _conv_like(layer))
                        and not isinstance(layer, MAMLayerMixin)]
    if per_tensor_dense:
        warnings.warn(f"{fn}: per_channel applies to MAM layers; Dense/Conv layers {per_tensor_dense} "
                      "keep one weight scale (TFLite cannot convert per-channel fake-quant Dense "
                      "weights)", stacklevel=2)

    def annotate(layer):
        if isinstance(layer, _PASS_THROUGH):
            config = PassThroughQuantizeConfig(scheme)
        else:
            fixed = output_range if layer.name in output_names else None
            mam = isinstance(layer, MAMLayerMixin)
            cls = MAMDenseQuantizeConfig if mam else DenseQuantizeConfig
            config = cls(_weight_quantizer(per_channel and mam, weight_range),
                         _activation_quantizer(scheme, fixed), scheme)
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    qat = tfmot.quantization.keras.quantize_apply(
        annotated, scheme=_Scheme(_input_quantizer(scheme, input_range)))

    qat = _with_fixed_classes(qat)
    for layer in qat.layers:
        if isinstance(layer, _QuantizeWrapper):
            for weight, quantizer, qvars in layer._weight_vars:  # noqa: SLF001 (tfmot's record)
                if "sparsity_mask" in qvars:
                    qvars["sparsity_mask"].assign(tf.cast(tf.not_equal(weight, 0), tf.float32))
                quantizer(weight, True, weights=qvars)  # ranges from the weights themselves
    if calibration_data is not None:
        convs = [layer.name for layer in model.layers if _conv_like(layer)]
        if convs:
            raise ValueError(f"{fn}: calibration_data sets the ranges of Dense/MAM layers only; "
                             f"convolutions {convs} would keep tfmot's initial range (train "
                             "the QAT model instead)")
        _calibrate(fn, model, qat, calibration_data)
    return qat


def _with_fixed_classes(qat):
    """A fresh copy of a quantize_apply result with QATInput / QATWrapper in place of tfmot's."""
    def clone_fn(layer):
        if type(layer) is _QuantizeLayer:
            return QATInput.from_config(layer.get_config())
        if type(layer) is _QuantizeWrapperV2:
            return QATWrapper.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    out = keras.models.clone_model(qat, clone_function=clone_fn)
    new_vars, old_vars = out.weights, qat.weights
    if [v.shape for v in new_vars] != [v.shape for v in old_vars]:
        raise ValueError("quantize_model: the QAT model's copy has other variables than it "
                         f"({len(new_vars)} vs {len(old_vars)})")
    for v_new, v_old in zip(new_vars, old_vars):
        v_new.assign(v_old)
    return out


# ------------------------------------------------------------------------------------------
# Reading the quantization parameters
# ------------------------------------------------------------------------------------------
def _activation_vars(wrapper):
    """(quantizer, vars, where) of a QAT wrapper's activation: where = "post" / "pre" / None."""
    acts = getattr(wrapper, "_quantize_activations", None) or []  # tfmot's QuantizeAwareActivation
    if not acts:
        return None, None, None
    qa = acts[0]
    if qa._should_post_quantize():  # noqa: SLF001
        return qa.quantizer, getattr(qa, "_post_activation_vars", None) or {}, "post"
    if qa._should_pre_quantize():  # noqa: SLF001
        return qa.quantizer, getattr(qa, "_pre_activation_vars", None) or {}, "pre"
    return None, None, None


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _nudge(mn, mx, num_bits, narrow_range):
    """TensorFlow's fake-quant nudging (fake_quant_ops_functor.h, Nudge) in float32.

    Returns (scale, zero_point) with the zero point in the SIGNED integer type (TF's unsigned
    [qmin, qmax] shifted by 2**(num_bits-1)), so real = scale * (q - zero_point). A degenerate
    range (min == max == 0, e.g. an all-zero weight channel) gets scale 1.0, zero point 0:
    every value is 0 there, which any positive scale represents.
    """
    mn = np.asarray(mn, np.float32)
    mx = np.asarray(mx, np.float32)
    qmin = np.float32(1 if narrow_range else 0)
    qmax = np.float32(2 ** num_bits - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (mx - mn) / (qmax - qmin)
        zp_from_min = qmin - mn / scale
    zp = np.where(zp_from_min < qmin, qmin,
                  np.where(zp_from_min > qmax, qmax, _round_half_away(zp_from_min)))
    ok = scale > 0
    offset = 2 ** (num_bits - 1)
    scale = np.where(ok, scale, np.float32(1.0)).astype(np.float32)
    zp = np.where(ok, zp - offset, 0).astype(np.int64)
    return scale, zp


def _range_params(quantizer, qvars):
    """min, max, bits and the derived scale / zero point of one fake-quant op."""
    if isinstance(quantizer, SparsityPreservingQuantizer):
        quantizer = quantizer.quantizer
    if isinstance(quantizer, FixedRangeQuantizer):
        mn, mx = np.float32(quantizer.min), np.float32(quantizer.max)
        kind = "fixed"
    else:
        mn, mx = qvars["min_var"].numpy(), qvars["max_var"].numpy()
        kind = type(quantizer).__name__
    bits, narrow = int(quantizer.num_bits), bool(quantizer.narrow_range)
    scale, zp = _nudge(mn, mx, bits, narrow)
    offset = 2 ** (bits - 1)
    return {
        "quantizer": kind,
        "num_bits": bits,
        "narrow_range": narrow,
        "min": mn, "max": mx,
        "scale": scale, "zero_point": zp,
        "qmin": (1 if narrow else 0) - offset, "qmax": 2 ** bits - 1 - offset,
    }


def _inbound(layer):
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if len(nodes) != 1:
        return []
    return tf.nest.flatten(nodes[0].inbound_layers)


def _input_params(layer):
    """Quantization of the tensor entering ``layer``: from the quantizer that produced it."""
    sources = _inbound(layer)
    if len(sources) != 1:
        return None
    src = sources[0]
    if isinstance(src, _QuantizeLayer):
        return _range_params(src.quantizer, getattr(src, "quantizer_vars", None) or {}) \
            if src.quantizer is not None else None
    if isinstance(src, _QuantizeWrapper):
        if isinstance(src.quantize_config, PassThroughQuantizeConfig):
            return _input_params(src)
        quantizer, qvars, where = _activation_vars(src)
        if where == "post":
            return _range_params(quantizer, qvars)
    return None  # unquantized: a raw input, or the output of a sigmoid/tanh/softmax


def layer_quant_params(model):
    """The quantization parameters of each Dense / MAM layer of a QAT model, for the converter.

    Returns ``{layer_name: params}`` in model order (inner layer names, not ``quant_...``)
    where ``params`` holds:

    - ``class`` ("MAMDense" / "Dense"), ``scheme`` ("int8" / "int16x8": the layer's
      ``quantize_config.scheme``), ``activation`` (its Keras activation name).
    - ``weights``: ``values`` (int8 [N, M], the Keras kernel layout, inputs first: the kernel
      as the QAT model uses it, fake-quantized and masked, divided by its scale; pruned weights
      are 0), ``scale`` (float32, [1] or [M] per output unit), ``zero_point`` (zeros),
      ``per_channel``, ``min``/``max`` (the quantizer's range), ``num_bits``, ``qmin``/``qmax``.
    - ``input`` and ``output``: ``scale``, ``zero_point`` (signed, int8 or int16 as the scheme
      says), ``min``/``max``, ``num_bits``, ``narrow_range``, ``qmin``/``qmax``, ``quantizer``;
      real = scale * (q - zero_point). ``input`` is the range of whatever quantized the
      layer's input (None if that tensor is not fake-quantized). ``output`` is the range of the
      layer's activation quantizer; ``output_is_pre_activation`` says whether it sits before the
      activation (sigmoid/tanh/softmax, which TFLite runs as a separate op) or after it.
    - ``bias``: the float bias (the converter quantizes it at input scale * weight scale),
      or None.

    The scale and zero point are exactly those TensorFlow's fake-quant ops use (their
    nudging of min/max, reproduced by ``_nudge``), so integers computed with them reproduce
    the QAT model's values.
    """
    result = {}
    for layer in model.layers:
        if not isinstance(layer, _QuantizeWrapper) or not isinstance(
                layer.quantize_config, _DenseLikeQuantizeConfig):
            continue
        inner = layer.layer
        (kernel, wq, wvars), = layer._weight_vars  # noqa: SLF001 (tfmot's record)
        fq = wq(kernel, False, weights=wvars).numpy()
        wparams = _range_params(wq, wvars)
        base = wq.quantizer if isinstance(wq, SparsityPreservingQuantizer) else wq
        per_channel = bool(getattr(base, "per_axis", False))
        scale = np.atleast_1d(wparams["scale"])
        values = _round_half_away(fq / scale[None, :] if per_channel else fq / scale[0])
        if np.abs(values).max(initial=0) > wparams["qmax"]:
            raise ValueError(f"layer_quant_params: layer '{inner.name}' weights fall outside "
                             f"[{wparams['qmin']}, {wparams['qmax']}]")
        quantizer, qvars, where = _activation_vars(layer)
        result[inner.name] = {
            "class": type(inner).__name__,
            "scheme": layer.quantize_config.scheme,
            "activation": _activation_name(getattr(inner.activation, "activation",
                                                   inner.activation)),
            "weights": {**wparams, "values": values.astype(np.int8), "scale": scale,
                        "zero_point": np.zeros_like(scale, np.int64),
                        "per_channel": per_channel},
            "input": _input_params(layer),
            "output": _range_params(quantizer, qvars) if quantizer is not None else None,
            "output_is_pre_activation": where == "pre",
            "bias": inner.bias.numpy() if inner.use_bias else None,
        }
    if not result:
        raise ValueError(f"layer_quant_params: model '{model.name}' has no quantization-aware "
                         "Dense or MAM layer (make one with quantize_model)")
    return result


# ------------------------------------------------------------------------------------------
# Calibration of the learned activation ranges from the float model
# ------------------------------------------------------------------------------------------
def _set_range(quantizer, qvars, mn, mx):
    if isinstance(quantizer, FixedRangeQuantizer) or not qvars:
        return
    mn, mx = min(float(mn), 0.0), max(float(mx), 0.0)
    if quantizer.symmetric:
        a = max(-mn, mx)
        mn, mx = -a, a
    qvars["min_var"].assign(mn)
    qvars["max_var"].assign(mx)


def _pre_activation(layer, x):
    """The float layer's output before its activation (Dense: x W + b; MAM: max + min + b)."""
    kernel = tf.convert_to_tensor(layer.kernel)
    x = tf.reshape(tf.cast(x, kernel.dtype), [-1, kernel.shape[0]])
    y = mam_op.mam_reduce(x, kernel) if isinstance(layer, MAMLayerMixin) else tf.matmul(x, kernel)
    if layer.use_bias:
        y = y + layer.bias
    return y


def _calibrate(fn, float_model, qat, data):
    from mam_tf.train.pruning import copy_model
    from mam_tf.train.schedule import iter_batches

    # A private copy: its layers have exactly one call site, so layer.input is this graph's.
    float_model = copy_model(float_model)
    dense = [layer for layer in float_model.layers if _dense_like(layer)]
    try:
        probe = keras.Model(float_model.inputs,
                            [layer.input for layer in dense] + [layer.output for layer in dense])
    except (AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{fn}: cannot calibrate (shared layers?): {err}") from err

    lo = np.full(2 * len(dense) + 1, np.inf)
    hi = np.full(2 * len(dense) + 1, -np.inf)
    seen = 0
    for batch in iter_batches(data, 256):
        batch = tf.convert_to_tensor(batch, tf.float32)
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        ins, acts = outs[:len(dense)], outs[len(dense):]
        tensors = [batch] + [_pre_activation(layer, x) for layer, x in zip(dense, ins)] + list(acts)
        for i, t in enumerate(tensors):
            lo[i] = min(lo[i], float(tf.reduce_min(t)))
            hi[i] = max(hi[i], float(tf.reduce_max(t)))
        seen += 1
    if not seen:
        raise ValueError(f"{fn}: calibration_data is empty")
    if len(float_model.inputs) != 1:
        raise ValueError(f"{fn}: calibration needs a single-input model")
    for layer in qat.layers:
        if isinstance(layer, _QuantizeLayer) and layer.quantizer is not None:
            _set_range(layer.quantizer, layer.quantizer_vars, lo[0], hi[0])
    index = {layer.name: i for i, layer in enumerate(dense)}
    for layer in qat.layers:
        if isinstance(layer, _QuantizeWrapper) and layer.layer.name in index:
            i = index[layer.layer.name]
            quantizer, qvars, where = _activation_vars(layer)
            if where == "pre":
                _set_range(quantizer, qvars, lo[1 + i], hi[1 + i])
            elif where == "post":
                _set_range(quantizer, qvars, lo[1 + len(dense) + i], hi[1 + len(dense) + i])
