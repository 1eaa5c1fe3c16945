"""Ready-made models of the papers mam-tf reproduces."""
from mam_tf.models.ecg_autoencoder import TAIL_LAYERS, ecg_autoencoder, split

__all__ = ["ecg_autoencoder", "split", "TAIL_LAYERS"]
