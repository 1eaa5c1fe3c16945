"""mam-tf: Multiply-And-Max/min layers from Keras to microcontrollers."""
from mam_tf._compat import keras, tf  # noqa: F401  (sets up Keras 2 before anything else)

__version__ = "0.1.0"
__all__ = ["__version__"]
