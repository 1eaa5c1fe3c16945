"""Walking a Keras model's layers, for both Keras (by attribute: no Keras import)."""
from __future__ import annotations

__all__ = ["walk_layers", "find_layers"]


def walk_layers(obj):
    """Yields a layer or model and everything inside it: sub-models' layers and the layers
    that wrappers (pruning, quantization, TimeDistributed) hold, depth first, in model order."""
    yield obj
    for child in getattr(obj, "layers", None) or ():
        yield from walk_layers(child)
    inner = getattr(obj, "layer", None)
    if inner is not None:
        yield from walk_layers(inner)


def find_layers(model_or_layers, cls):
    """The layers of class ``cls`` inside models or layers (nested ones included), each once,
    in model order."""
    items = model_or_layers if isinstance(model_or_layers, (list, tuple)) else [model_or_layers]
    found = []
    for item in items:
        for layer in walk_layers(item):
            if isinstance(layer, cls) and not any(layer is f for f in found):
                found.append(layer)
    return found
