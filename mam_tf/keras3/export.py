"""How a Keras 3 model reaches the converter: rebuilt as the same tf_keras model.

:func:`mam_tf.deploy.convert.convert` reads tf_keras models; given a Keras 3 model (trained on
any backend), it calls :func:`to_tf_keras`, which rebuilds the layer chain with the tf_keras
layers of the same names, configuration and weights (a masked MAMDense gives its kernel with
the mask applied). The weights are read as numpy arrays, so a model trained under JAX or
PyTorch converts in its own process, and a ``.keras`` file loads under any backend first.

Supported: a Sequential or functional model with one input whose layers form a chain (each
layer takes the previous one's output) of InputLayer, MAMDense, Dense, Flatten, Reshape,
Dropout, Activation and ReLU. Importing this module imports tf_keras (it is the deploy side).
"""
from __future__ import annotations

import keras as keras3
import numpy as np
from keras import ops

from mam_tf.keras3.layers import MAMDense

__all__ = ["is_keras3_model", "to_tf_keras"]

_SIMPLE = ("Flatten", "Reshape", "Dropout", "Activation", "ReLU")


def is_keras3_model(model) -> bool:
    return isinstance(model, keras3.Model)


def _chain(model):
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"convert: Keras 3 model '{model.name}' must have one input and one "
                         f"output, has {len(model.inputs)} and {len(model.outputs)}")
    previous = model.inputs[0]
    for layer in layers:
        nodes = layer._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or \
                nodes[0].input_tensors[0] is not previous:
            raise ValueError(f"convert: Keras 3 model '{model.name}' is not a chain of layers at "
                             f"layer '{layer.name}'; rebuild it as one or convert it as tf_keras")
        previous = nodes[0].output_tensors[0]
    return layers


def to_tf_keras(model):
    """The tf_keras model computing what the Keras 3 ``model`` computes (see the module doc)."""
    from mam_tf.train.compat import keras as k2
    from mam_tf.train.layers import MAMDense as MAMDense2

    inp = k2.Input(tuple(model.inputs[0].shape[1:]), name=model.inputs[0].name)
    x = inp
    for layer in _chain(model):
        kind = type(layer).__name__
        if isinstance(layer, MAMDense):
            new = MAMDense2(layer.units, activation=keras3.activations.serialize(layer.activation),
                            use_bias=layer.use_bias, beta=layer.get_beta(), name=layer.name)
            weights = [ops.convert_to_numpy(layer.effective_kernel())]
        elif kind == "Dense":
            new = k2.layers.Dense(layer.units,
                                  activation=keras3.activations.serialize(layer.activation),
                                  use_bias=layer.use_bias, name=layer.name)
            weights = [ops.convert_to_numpy(layer.kernel)]
        elif kind in _SIMPLE:
            config = {k: v for k, v in layer.get_config().items()
                      if k not in ("dtype", "trainable", "seed", "noise_shape") or v is not None}
            config.pop("dtype", None)
            new = getattr(k2.layers, kind).from_config(config)
            weights = []
        else:
            raise ValueError(f"convert: layer '{layer.name}' of type {kind} of a Keras 3 model "
                             f"is not supported for export; supported: MAMDense, Dense, "
                             f"{', '.join(_SIMPLE)}")
        if getattr(layer, "use_bias", False):
            weights.append(ops.convert_to_numpy(layer.bias))
        x = new(x)
        if weights:
            new.set_weights([np.asarray(w, np.float32) for w in weights] +
                            ([np.float32(layer.get_beta())] if isinstance(layer, MAMDense) else []))
    return k2.Model(inp, x, name=model.name)
