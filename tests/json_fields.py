"""Results of two runs compared: a JSON value without the fields every run measures afresh."""


def without(obj, keys):
    """``obj`` with every dict entry whose key is in ``keys`` left out, at any depth."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj
