"""Keras layers built on Multiply-And-Max/min neurons."""
from __future__ import annotations

from mam_tf.common.inputs import check_beta, check_units
from mam_tf.common.walk import find_layers, walk_layers
from mam_tf.train import mam_op
from mam_tf.train.compat import keras, tf

__all__ = ["MAMLayerMixin", "MAMDense", "mam_layers", "walk_layers", "require_graph_model"]


_check_beta = check_beta


class MAMLayerMixin:
    """What every MAM layer shares: the blend factor ``beta`` between MAC and MAM.

    ``beta`` is a non-trainable scalar variable of the layer (``layer.beta``), so it is saved
    and restored with the weights, checkpoints and SavedModels. The layer computes
    ``beta * MAC + (1 - beta) * MAM``; training with the vanishing-contributions schedule
    (``mam_tf.VanishingContributions``) takes beta from 1 to 0; inference and export use 0.
    """

    def _init_beta(self, beta):
        self._beta_init = _check_beta(self._describe(), beta)

    def _describe(self):
        return f"{type(self).__name__} '{self.name}'"

    def _build_beta(self):
        self.beta = self.add_weight(
            name="beta",
            shape=(),
            dtype=tf.float32,
            initializer=keras.initializers.Constant(self._beta_init),
            trainable=False,
            # One value shared by all replicas; set from a callback in cross-replica context.
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def get_beta(self) -> float:
        """The current blend factor as a Python float."""
        if self.built:
            return float(self.beta.numpy())
        return self._beta_init

    def get_prunable_weights(self):
        """The weights pruning may zero: the kernel (tfmot's ``PrunableLayer`` interface).

        The bias and ``beta`` are never pruned. ``mam_tf.train.pruning`` registers MAM layers as
        virtual subclasses of ``tfmot.sparsity.keras.PrunableLayer``.
        """
        return [self.kernel]

    def set_beta(self, value) -> None:
        """Sets the blend factor (0 = pure MAM, 1 = pure MAC); validated to lie in [0, 1]."""
        beta = _check_beta(self._describe(), value)
        if self.built:
            self.beta.assign(beta)
        else:
            self._beta_init = beta


@keras.utils.register_keras_serializable(package="mam_tf")
class MAMDense(MAMLayerMixin, keras.layers.Dense):
    """A Dense layer whose neurons are Multiply-And-Max/min.

    ``y_j = max_i(w_ij x_i) + min_i(w_ij x_i) + b_j``, then the activation. During
    training with ``beta > 0`` the layer computes ``beta * (x @ W) + (1 - beta) * MAM(x, W) + b``.

    Takes Dense's arguments with Dense's defaults, plus ``beta`` (initial blend, default 0.0,
    pure MAM). Inputs of rank >= 2 work like Dense: the last axis is reduced. Only the argmax
    and argmin of each row receive gradient (ties: the lowest input index wins).
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        beta=0.0,
        **kwargs,
    ):
        name = kwargs.get("name") or "mam_dense"
        n_units = check_units(name, units)
        super().__init__(
            units=n_units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self._init_beta(beta)
        # Our build() explains a bad rank itself; Dense's spec would answer first, less clearly.
        self.input_spec = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank is not None and input_shape.rank < 2:
            raise ValueError(
                f"{self._describe()}: needs inputs of rank >= 2 ([batch, ..., features]), "
                f"got shape {input_shape}"
            )
        super().build(input_shape)
        self._build_beta()

    def call(self, inputs):
        if isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)):
            raise ValueError(f"{self._describe()}: sparse and ragged inputs are not supported")
        inputs = tf.convert_to_tensor(inputs)
        if not inputs.dtype.is_floating:
            raise ValueError(
                f"{self._describe()}: inputs must be floating point, got dtype {inputs.dtype.name}"
            )
        if inputs.shape.rank is not None and inputs.shape.rank < 2:
            raise ValueError(
                f"{self._describe()}: needs inputs of rank >= 2, got shape {inputs.shape}"
            )
        if inputs.dtype != self._compute_dtype_object:
            inputs = tf.cast(inputs, self._compute_dtype_object)
        kernel = tf.convert_to_tensor(self.kernel)
        n_in = kernel.shape[0]
        rank = inputs.shape.rank
        x = inputs if rank == 2 else tf.reshape(inputs, [-1, n_in])

        if mam_op.in_builtin_graph():
            # Export tracing: pure MAM as builtin ops, under a scope the converter finds.
            with tf.name_scope(mam_op.EXPORT_SCOPE):
                outputs = mam_op.mam_reduce_builtin(x, kernel)
        else:
            beta = tf.cast(self.beta, x.dtype)
            mam = mam_op.mam_reduce(x, kernel)
            # Pure MAM (inference, the end of training) skips the MAC product entirely.
            outputs = tf.cond(
                tf.equal(beta, 0.0),
                lambda: mam,
                lambda: beta * tf.matmul(x, kernel) + (1.0 - beta) * mam,
            )
        # Bias and activation act on the rows, before the leading dimensions come back: the
        # exported pattern then ends in the ADD (with a fused activation) that MAM_SPARSE
        # replaces, and one RESHAPE restores the token dimensions after it.
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        if rank != 2:
            outputs = tf.reshape(
                outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0)
            )
            if rank is not None:
                outputs.set_shape(inputs.shape[:-1].concatenate([self.units]))
        return outputs

    def get_config(self):
        return {**super().get_config(), "beta": self.get_beta()}


def mam_layers(model_or_layers):
    """All MAM layers inside a model (nested models and wrappers included), in model order."""
    return find_layers(model_or_layers, MAMLayerMixin)


def require_graph_model(fn, model):
    """Raises unless ``model`` is a built functional or Sequential Keras model."""
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)
    ):
        raise ValueError(f"{fn}: needs a functional or Sequential keras model, got "
                         f"{type(model).__name__}")
    if not model.built:
        raise ValueError(f"{fn}: model '{model.name}' is not built; build it on a keras.Input")
