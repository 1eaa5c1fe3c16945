"""Seed 004's (MWSCAS 2023) convolutional ECG autoencoder, Fig. 1.

Three Conv1D, three fully connected (FC) and three Conv1DTranspose layers, ReLU everywhere,
256 samples in and out, a latent of 64. The paper gives the layer types, the latent size, that
the tail (the encoder the microcontroller runs: the convolutions, FC1 and FC2) has more than 2M
parameters with more than 98% of them in FC1, and a 32.8 kB int16 buffer for FC1's input. It
does not give kernel sizes or channel counts; this model chooses them to match those counts:

* Conv1D 16 / 32 / 64 channels, kernel 9, stride 1, ``'same'`` padding: the 256-sample window
  keeps its length, so FC1 sees 256 x 64 = 16384 inputs (16384 int16 = 32 768 B, the paper's
  32.8 kB buffer). A kernel of 9 samples is 35 ms at 256 Hz, about a QRS complex.
* FC1 16384 -> 128 (2 097 280 parameters, 98.5% of the tail's 2 128 832), FC2 128 -> 64 (the
  latent), FC3 64 -> 4096, reshaped to 256 x 16.
* Conv1DTranspose 32 / 16 / 1, kernel 9, ``'same'``: back to 256 x 1.

With ``kind="mam"`` FC1 is a :class:`mam_tf.MAMDense` (``beta`` starts at 1, a plain Dense,
for the vanishing-contributions schedule); every other layer is the same in both kinds.

The input and output are ``[batch, 256]`` windows (Reshape layers inside), so the model, its
tail and the converted ``.tflite`` all take the windows as ``ecg_data`` gives them.
"""
from __future__ import annotations

__all__ = ["ecg_autoencoder", "split", "TAIL_LAYERS", "HEAD_LAYERS"]

#: Layer names of the tail (what the device runs), in order, after the input.
TAIL_LAYERS = ("to_channels", "conv1", "conv2", "conv3", "flatten", "fc1", "fc2")
#: Layer names of the head (the receiver's decoder), in order, after the latent.
HEAD_LAYERS = ("fc3", "to_sequence", "deconv1", "deconv2", "deconv3", "to_window")
KINDS = ("mac", "mam")


def ecg_autoencoder(kind="mam", *, length=256, channels=(16, 32, 64), kernel_size=9,
                    fc_units=(128, 64), beta=1.0, seed=None, name=None):
    """Seed 004's autoencoder (see the module docstring for the choices).

    Args:
      kind: ``"mac"`` (FC1 a Dense) or ``"mam"`` (FC1 a MAMDense).
      length: samples per window (input and output); FC1 has ``length * channels[-1]`` inputs.
      channels: the three Conv1D widths (the decoder mirrors them: channels[1], channels[0], 1).
      kernel_size: of every convolution.
      fc_units: (FC1 units, latent size); FC3 has ``length * channels[0]`` units.
      beta: FC1's initial MAC/MAM blend for ``kind="mam"`` (1 = starts as Dense).
      seed: if given, ``keras.utils.set_random_seed(seed)`` before building (initial weights).
      name: model name (default ``"ae_<kind>"``).
    Returns:
      An uncompiled functional ``keras.Model`` [batch, length] -> [batch, length]; its layers
      are named as in :data:`TAIL_LAYERS` and :data:`HEAD_LAYERS`.
    """
    from mam_tf.train.layers import MAMDense
    from mam_tf.train.compat import keras

    if kind not in KINDS:
        raise ValueError(f"ecg_autoencoder: kind must be one of {KINDS}, got {kind!r}")
    if len(channels) != 3:
        raise ValueError(f"ecg_autoencoder: channels must be 3 widths, got {channels!r}")
    if len(fc_units) != 2:
        raise ValueError(f"ecg_autoencoder: fc_units must be (FC1 units, latent), got {fc_units!r}")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    c1, c2, c3 = (int(c) for c in channels)
    conv = dict(kernel_size=int(kernel_size), padding="same", activation="relu")
    x_in = keras.Input((int(length),), name="window")
    x = keras.layers.Reshape((int(length), 1), name="to_channels")(x_in)
    x = keras.layers.Conv1D(c1, name="conv1", **conv)(x)
    x = keras.layers.Conv1D(c2, name="conv2", **conv)(x)
    x = keras.layers.Conv1D(c3, name="conv3", **conv)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if kind == "mam":
        x = MAMDense(int(fc_units[0]), activation="relu", beta=beta, name="fc1")(x)
    else:
        x = keras.layers.Dense(int(fc_units[0]), activation="relu", name="fc1")(x)
    x = keras.layers.Dense(int(fc_units[1]), activation="relu", name="fc2")(x)
    x = keras.layers.Dense(int(length) * c1, activation="relu", name="fc3")(x)
    x = keras.layers.Reshape((int(length), c1), name="to_sequence")(x)
    x = keras.layers.Conv1DTranspose(c2, name="deconv1", **conv)(x)
    x = keras.layers.Conv1DTranspose(c1, name="deconv2", **conv)(x)
    x = keras.layers.Conv1DTranspose(1, name="deconv3", **conv)(x)
    x_out = keras.layers.Reshape((int(length),), name="to_window")(x)
    return keras.Model(x_in, x_out, name=name or f"ae_{kind}")


def _layer_or_wrapped(model, name):
    """The layer called ``name``, or the wrapper (pruning / QAT) around it."""
    for layer in model.layers:
        if layer.name == name or getattr(getattr(layer, "layer", None), "name", None) == name:
            return layer
    raise ValueError(f"split: model '{model.name}' has no layer '{name}' (layers: "
                     f"{[layer.name for layer in model.layers]})")


def split(model, latent_layer="fc2"):
    """The deployed encoder and the receiver's decoder of an autoencoder, as two models.

    ``tail``: the model's input -> the output of ``latent_layer`` (the layer objects are shared
    with ``model``, so ``tail`` sees its weights, pruning masks and QAT wrappers as they are).
    ``head``: a new input shaped like the latent -> the model's output, through the model's own
    layers after ``latent_layer`` (shared too). ``head(tail(x))`` equals ``model(x)``.
    Layers are found by name, also inside pruning or QAT wrappers (``fc2`` is wrapped as
    ``quant_fc2`` in a QAT model). Returns ``(tail, head)``.
    """
    from mam_tf.train.compat import keras

    latent = _layer_or_wrapped(model, latent_layer)
    tail = keras.Model(model.inputs, latent.output, name=f"{model.name}_tail")
    order = [layer.name for layer in model.layers]
    after = order.index(latent.name) + 1
    z_in = keras.Input(tuple(latent.output.shape[1:]), name="latent")
    x = z_in
    for layer in model.layers[after:]:
        x = layer(x)
    head = keras.Model(z_in, x, name=f"{model.name}_head")
    return tail, head
