"""Reference models built from mam_tf layers."""
from mam_tf.models.cs_oracle import cs_oracle, predict_support

__all__ = ["cs_oracle", "predict_support"]
