"""The custom options of MAM_SPARSE / MAC_SPARSE: one definition for writer and readers.

A flexbuffer map (docs/operator-contract.md section 3). The C glue reads exactly these keys; a test
checks that ``tflm_ops`` names the same keys, so the two sides cannot drift.
"""
from __future__ import annotations

__all__ = ["MAM_SPARSE", "MAC_SPARSE", "KEYS", "VERSION", "ACTIVATIONS", "encode", "parse", "decode"]

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


def parse(data) -> dict:
    """What the TFLM glue's Init reads: the three keys as int32 values, or ValueError with
    the glue's own words ("MAM_SPARSE: custom option 'version' is missing", ...). The values
    themselves (version 1, in_features >= 1, a known activation) are the core's to judge
    (``mam_validate``), as on the device."""
    from flatbuffers import flexbuffers

    data = b"" if data is None else bytes(data)
    if not data:
        raise ValueError("MAM_SPARSE: custom options are missing (the op needs a flexbuffer map)")
    try:
        value = flexbuffers.Loads(data)
    except Exception:  # flexbuffers raises assorted errors on garbage
        raise ValueError("MAM_SPARSE: custom options are not a valid flexbuffer") from None
    if not isinstance(value, dict):
        raise ValueError("MAM_SPARSE: custom options are not a flexbuffer map")
    out = {}
    for key in KEYS:
        v = value.get(key)
        if v is None:
            raise ValueError(f"MAM_SPARSE: custom option '{key}' is missing")
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"MAM_SPARSE: custom option '{key}' is not an integer")
        if not -2**31 <= v < 2**31:
            raise ValueError(f"MAM_SPARSE: custom option '{key}' is outside the int32 range")
        out[key] = v
    return out


def decode(data) -> dict:
    """Reads the options back (:func:`parse`) and refuses values the kernels do not take."""
    value = parse(data)
    if value["version"] != VERSION:
        raise ValueError(f"MAM_SPARSE: custom option version is {value['version']}; this "
                         f"kernel reads {VERSION}")
    if value["in_features"] < 1:
        raise ValueError(f"MAM_SPARSE: custom option in_features is {value['in_features']}; "
                         "it must be >= 1")
    if value["fused_activation_function"] not in ACTIVATIONS:
        raise ValueError(f"MAM_SPARSE: fused_activation_function is "
                         f"{value['fused_activation_function']}; known: 0 NONE, 1 RELU, "
                         "2 RELU_N1_TO_1, 3 RELU6")
    return value
