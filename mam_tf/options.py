"""The custom options of MAM_SPARSE / MAC_SPARSE: one definition for writer and readers.

A flexbuffer map (MAM_SPARSE.md section 3). The C glue reads exactly these keys; a test
checks that ``tflm_ops`` names the same keys, so the two sides cannot drift.
"""
from __future__ import annotations

__all__ = ["MAM_SPARSE", "MAC_SPARSE", "KEYS", "VERSION", "ACTIVATIONS", "encode", "decode"]

MAM_SPARSE = "MAM_SPARSE"
MAC_SPARSE = "MAC_SPARSE"
VERSION = 1

#: key -> meaning; every value is an integer.
KEYS = {
    "in_features": "N, the input features each row reads (the input's last dimension)",
    "fused_activation_function": "TFLite ActivationFunctionType: 0 NONE, 1 RELU, "
                                 "2 RELU_N1_TO_1, 3 RELU6",
    "version": "layout version of this op's tensors and options (1)",
}

#: TFLite ActivationFunctionType values the kernels accept.
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}


def encode(in_features: int, activation: int = 0) -> bytes:
    """The flexbuffer bytes of the custom options."""
    from flatbuffers import flexbuffers

    if int(in_features) < 1:
        raise ValueError(f"custom options: in_features must be >= 1, got {in_features}")
    if int(activation) not in ACTIVATIONS:
        raise ValueError(f"custom options: fused_activation_function {activation} is not one of "
                         f"{ACTIVATIONS}")
    return bytes(flexbuffers.Dumps({
        "in_features": int(in_features),
        "fused_activation_function": int(activation),
        "version": VERSION,
    }))


def decode(data) -> dict:
    """Reads the options back; refuses missing keys and wrong types, naming them."""
    from flatbuffers import flexbuffers

    try:
        value = flexbuffers.Loads(bytes(data))
    except Exception as err:  # flexbuffers raises assorted errors on garbage
        raise ValueError(f"custom options: not a flexbuffer map ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"custom options: expected a flexbuffer map, got {type(value).__name__}")
    for key in KEYS:
        if key not in value:
            raise ValueError(f"custom options: missing key {key!r}")
        if not isinstance(value[key], int) or isinstance(value[key], bool):
            raise ValueError(f"custom options: {key!r} must be an integer, got {value[key]!r}")
    if value["version"] != VERSION:
        raise ValueError(f"custom options: version {value['version']} is not {VERSION}")
    if value["fused_activation_function"] not in ACTIVATIONS:
        raise ValueError(f"custom options: fused_activation_function "
                         f"{value['fused_activation_function']} is unknown")
    return value
