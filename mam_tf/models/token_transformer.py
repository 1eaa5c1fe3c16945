"""A small transformer encoder block whose MLP is MAC (Dense) or MAM (MAMDense).

The block reads ``[batch, tokens, features]`` and classifies the sequence: a token projection
(a Dense on every token), pre-norm multi-head self-attention with a residual, a pre-norm MLP
``width -> hidden -> width`` with a residual (the two layers ``mlp_1`` and ``mlp_2``, MAC or
MAM), average pooling over the tokens and a Dense classifier giving logits. Every layer converts
to builtin TFLite ops or, for the MLP, to MAM_SPARSE / MAC_SPARSE on the rows of tokens
(``mam_tf.deploy.convert``).
"""
from __future__ import annotations

from mam_tf.models.cs_oracle import KINDS

__all__ = ["token_transformer", "MLP_LAYERS", "KINDS"]

#: The names of the MLP's two layers, the ones pruned and exported as sparse ops.
MLP_LAYERS = ("mlp_1", "mlp_2")


def token_transformer(tokens, features, classes, kind="mam", *, width=16, heads=2, hidden=32,
                      activation="relu", beta=1.0, seed=None, name=None):
    """One encoder block and a classifier (see the module docstring).

    Args:
      tokens, features: the input is ``[batch, tokens, features]``.
      classes: logits out (train with ``from_logits=True``).
      kind: ``"mac"`` (Dense MLP) or ``"mam"`` (MAMDense MLP).
      width: the model width (token projection, attention, MLP output); ``heads`` divides it.
      hidden: the MLP's hidden width.
      activation: the MLP's hidden activation (relu fuses into the sparse op on export).
      beta: initial blend of the MAM layers (1.0 = start as MAC; anneal it to 0 with
        ``mam_tf.VanishingContributions``). Ignored for ``kind="mac"``.
      seed: if given, ``keras.utils.set_random_seed(seed)`` first.
    Returns:
      An uncompiled functional tf_keras model named ``<kind>_token_transformer``.
    """
    from mam_tf.train.compat import keras
    from mam_tf.train.layers import MAMDense

    sizes = dict(tokens=tokens, features=features, classes=classes, width=width, heads=heads,
                 hidden=hidden)
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"token_transformer: {key} must be a positive integer, got {value!r}")
    if kind not in KINDS:
        raise ValueError(f"token_transformer: kind must be one of {KINDS}, got {kind!r}")
    if width % heads:
        raise ValueError(f"token_transformer: heads ({heads}) must divide width ({width})")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    layers = keras.layers
    inp = keras.Input((tokens, features), name="tokens")
    x = layers.Dense(width, name="embed")(inp)
    h = layers.LayerNormalization(name="norm_1")(x)
    h = layers.MultiHeadAttention(heads, width // heads, name="attention")(h, h)
    x = layers.Add(name="residual_1")([x, h])
    h = layers.LayerNormalization(name="norm_2")(x)
    if kind == "mam":
        h = MAMDense(hidden, activation=activation, beta=beta, name=MLP_LAYERS[0])(h)
        h = MAMDense(width, beta=beta, name=MLP_LAYERS[1])(h)
    else:
        h = layers.Dense(hidden, activation=activation, name=MLP_LAYERS[0])(h)
        h = layers.Dense(width, name=MLP_LAYERS[1])(h)
    x = layers.Add(name="residual_2")([x, h])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    out = layers.Dense(classes, name="classifier")(x)
    return keras.Model(inp, out, name=name or f"{kind}_token_transformer")
