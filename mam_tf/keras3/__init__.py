"""mam-tf for Keras 3 (the ``keras`` package), on the TensorFlow, JAX and PyTorch backends.

``from mam_tf.keras3 import MAMDense`` gives a layer with the semantics of the tf_keras
``mam_tf.MAMDense`` that goes wherever ``keras.layers.Dense`` goes. Importing this package
never imports tf_keras or tensorflow-model-optimization and never sets
``TF_USE_LEGACY_KERAS``: the process keeps Keras 3.

- :mod:`.layers`   ``MAMDense`` (with ``beta`` and an optional fixed pruning mask);
- :mod:`.mam_op`   the MAM op of the current backend;
- :mod:`.training` the vanishing-contributions schedule and selection counts;
- :mod:`.pruning`  one-shot and iterative pruning with fixed masks, and the pruning summary;
- :mod:`.export`   the Keras 3 model rebuilt as tf_keras for `mam_tf.deploy.convert`.
"""
from mam_tf.keras3.layers import MAMDense, mam_layers

__all__ = ["MAMDense", "mam_layers"]
