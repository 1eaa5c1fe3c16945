"""``MAMDense`` for Keras 3, on the TensorFlow, JAX and PyTorch backends."""
from __future__ import annotations

import keras
from keras import ops

from mam_tf.common.inputs import check_beta, check_units
from mam_tf.common.walk import find_layers, walk_layers  # noqa: F401  (public here)
from mam_tf.keras3 import mam_op

__all__ = ["MAMDense", "mam_layers", "walk_layers"]


_check_beta = check_beta


@keras.saving.register_keras_serializable(package="mam_tf")
class MAMDense(keras.layers.Dense):
    """A Dense layer whose neurons are Multiply-And-Max/min (Keras 3, any backend).

    ``y_j = max_i(w_ij x_i) + min_i(w_ij x_i) + b_j``, then the activation. With ``beta > 0``
    the layer computes ``beta * (x @ W) + (1 - beta) * MAM(x, W) + b``; ``beta = 0`` skips the
    MAC product. Same arguments and defaults as ``keras.layers.Dense`` plus ``beta`` (initial
    blend, default 0.0, pure MAM), the same semantics as ``mam_tf.train.layers.MAMDense``:
    inputs of rank >= 2 reduce their last axis; only the argmax and argmin of each row receive
    gradient (ties: the lowest input index wins).

    ``beta`` is a non-trainable scalar weight (``layer.beta``), saved with the model.
    ``masked=True`` (set by :mod:`mam_tf.keras3.pruning`) adds a non-trainable 0/1 weight
    ``kernel_mask`` of the kernel's shape: the layer computes with ``kernel * kernel_mask``, so
    pruned weights stay exactly zero whatever the optimizer does, and the mask is saved with
    the model. LoRA and Keras' own quantization modes are not supported.
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, beta=0.0, masked=False,
                 **kwargs):
        name = kwargs.get("name") or "mam_dense"
        n_units = check_units(name, units)
        for unsupported in ("lora_rank", "quantization_config"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"MAMDense '{name}': {unsupported} is not supported, got "
                                 f"{kwargs[unsupported]!r}")
        super().__init__(
            units=n_units, activation=activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint, **kwargs)
        self._beta_init = _check_beta(self._describe(), beta)
        self.masked = bool(masked)
        self.kernel_mask = None

    def _describe(self):
        return f"{type(self).__name__} '{self.name}'"

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self._describe()}: needs inputs of rank >= 2 "
                             f"([batch, ..., features]), got shape {tuple(input_shape)}")
        super().build(input_shape)
        self.beta = self.add_weight(
            name="beta", shape=(), dtype="float32",
            initializer=keras.initializers.Constant(self._beta_init), trainable=False,
            autocast=False, aggregation="only_first_replica")
        if self.masked:
            self._build_mask()

    def _build_mask(self):
        self.kernel_mask = self.add_weight(
            name="kernel_mask", shape=tuple(self._kernel.shape), initializer="ones",
            trainable=False, autocast=False)

    def enable_mask(self):
        """Adds ``kernel_mask`` (all ones) to a built layer that has none; returns it."""
        if not self.built:
            raise ValueError(f"{self._describe()}: build the layer before adding a mask")
        if self.kernel_mask is None:
            self._tracker.unlock()
            try:
                self._build_mask()
            finally:
                self._tracker.lock()
            self.masked = True
        return self.kernel_mask

    def enable_lora(self, *args, **kwargs):
        raise ValueError(f"{self._describe()}: LoRA is not supported by MAM layers")

    def quantize(self, *args, **kwargs):
        raise ValueError(f"{self._describe()}: Keras quantization modes are not supported by MAM "
                         "layers; quantize at conversion (mam_tf.deploy.convert)")

    def get_beta(self) -> float:
        """The current blend factor as a Python float."""
        if self.built:
            return float(ops.convert_to_numpy(self.beta))
        return self._beta_init

    def set_beta(self, value) -> None:
        """Sets the blend factor (0 = pure MAM, 1 = pure MAC); validated to lie in [0, 1]."""
        beta = _check_beta(self._describe(), value)
        if self.built:
            self.beta.assign(beta)
        else:
            self._beta_init = beta

    def get_prunable_weights(self):
        """The weights pruning may zero: the kernel (never the bias nor ``beta``)."""
        return [self._kernel]

    def effective_kernel(self):
        """The kernel the layer computes with: ``kernel * kernel_mask`` when masked."""
        kernel = ops.convert_to_tensor(self._kernel)
        if self.kernel_mask is not None:
            kernel = kernel * ops.cast(self.kernel_mask, kernel.dtype)
        return kernel

    def call(self, inputs, training=None):
        x = ops.convert_to_tensor(inputs)
        if not keras.backend.is_float_dtype(x.dtype):
            raise ValueError(f"{self._describe()}: inputs must be floating point, got dtype "
                             f"{keras.backend.standardize_dtype(x.dtype)}")
        if len(x.shape) < 2:
            raise ValueError(f"{self._describe()}: needs inputs of rank >= 2, got shape "
                             f"{tuple(x.shape)}")
        x = ops.cast(x, self.compute_dtype)
        kernel = ops.cast(self.effective_kernel(), self.compute_dtype)
        n_in = kernel.shape[0]
        rank = len(x.shape)
        x2 = x if rank == 2 else ops.reshape(x, (-1, n_in))

        backend = keras.backend.backend()
        if backend == "tensorflow" and _tf_builtin_graph():
            outputs = _tf_export_reduce(x2, kernel)
        else:
            beta = ops.cast(self.beta, x2.dtype)
            mam = mam_op.mam_reduce(x2, kernel)
            # Pure MAM (inference, the end of training) skips the MAC product.
            outputs = ops.cond(ops.equal(beta, 0.0), lambda: mam,
                               lambda: beta * ops.matmul(x2, kernel) + (1.0 - beta) * mam)
        # Bias and activation on the rows, then the leading dimensions back, as the tf_keras
        # layer does (its export pattern ends in the bias ADD).
        if self.use_bias:
            outputs = ops.add(outputs, ops.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        if rank != 2:
            outputs = ops.reshape(outputs, tuple(ops.shape(x)[:-1]) + (self.units,))
        return outputs

    def _stored_variables(self):
        """What ``.keras`` files hold, in this order: kernel, bias, beta, kernel_mask."""
        found = [self._kernel, self.bias, self.beta, self.kernel_mask]
        return [v for v in found if v is not None]

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self._stored_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        variables = self._stored_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{self._describe()}: the file holds {len(store.keys())} variables, the layer "
                f"has {len(variables)} ({[v.name for v in variables]})")
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    def get_config(self):
        config = {**super().get_config(), "beta": self.get_beta(), "masked": self.masked}
        config.pop("quantization_config", None)
        return config


def _tf_builtin_graph():
    from mam_tf.train import mam_op as tf_mam_op
    return tf_mam_op.in_builtin_graph()


def _tf_export_reduce(x, kernel):
    """Export tracing (TensorFlow backend): pure MAM as builtin ops under the scope the
    converter finds, as the tf_keras layer traces it."""
    from mam_tf.train import mam_op as tf_mam_op
    from mam_tf.train.tfcore import tf
    with tf.name_scope(tf_mam_op.EXPORT_SCOPE):
        return tf_mam_op.mam_reduce_builtin(x, kernel)


def mam_layers(model_or_layers):
    """All Keras 3 MAM layers inside a model (nested models included), in model order."""
    return find_layers(model_or_layers, MAMDense)
