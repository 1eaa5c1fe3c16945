"""The private modules of tensorflow-model-optimization that mam-tf builds on, in one place.

tfmot's public API has no hook for some of what mam-tf needs: the pruning wrapper's class and
schedule base (to hold masks of our own), and the quantize internals (wrapper, layout
transform, scheme, default-8bit registry and transforms) that a custom int16x8 scheme plugs
into. They are imported here and nowhere else, so a tfmot upgrade that moves them breaks one
file. Checked against tensorflow-model-optimization 0.8.1.
"""
import tensorflow_model_optimization as tfmot  # noqa: F401  (re-exported)
from tensorflow_model_optimization.python.core.quantization.keras import (  # noqa: F401
    quantize_layer,
    quantize_layout_transform,
    quantize_scheme,
    quantize_wrapper,
)
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils  # noqa: F401
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: F401
    default_8bit_quantize_registry,
    default_8bit_transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: F401
    model_transformer,
    transforms,
)
from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: F401
    pruning_schedule,
    pruning_wrapper,
)
