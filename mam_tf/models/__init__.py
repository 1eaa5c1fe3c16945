"""Ready-made models of the papers mam-tf reproduces."""
from mam_tf.models.cs_oracle import cs_oracle, predict_support
from mam_tf.models.ecg_autoencoder import TAIL_LAYERS, ecg_autoencoder, split
from mam_tf.models.token_transformer import token_transformer

__all__ = ["cs_oracle", "predict_support", "ecg_autoencoder", "split", "TAIL_LAYERS",
           "token_transformer"]
