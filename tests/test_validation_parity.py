"""One validation, owned by the C core: the Python mirror (mam_tf.deploy.node.validate, used
when the core cannot be built) refuses every corrupted node the core's ``mam_validate`` refuses,
with the same words. The rules are enumerated from the core's own source: every error path of
``mam_validate`` must be hit by a case here."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mam_tf.deploy import native, node
from mam_tf.deploy.offset_csr import encode

SRC = Path(native.__file__).resolve().parents[2] / "tflm_ops" / "src"
#: Error paths the mirror cannot meet: a NULL pointer, which a Python caller never passes (the
#: description and its arrays always exist there).
POINTER_ONLY = {"no layer description", "row_counts or offsets data is missing",
                "the weight scales are missing"}


def _validate_error_formats() -> list[str]:
    """The format strings of mam_validate's refusals, read from the core's C sources."""
    text = "\n".join(p.read_text() for p in sorted(SRC.rglob("*.c")))
    start = text.index("int mam_validate(const mam_layer_desc")
    body = text[start:text.index("\n}\n", start)]
    formats = re.findall(r'fail\(\s*msg,\s*msg?_?len,\s*MAM_ERR_\w+,\s*"((?:[^"\\]|\\.)*)"', body)
    formats += re.findall(r'return fail\(msg, len, MAM_ERR_\w+, "((?:[^"\\]|\\.)*)"', text)
    assert len(formats) >= 25, formats  # the parse found the function's refusals
    return sorted(set(formats))


def _pattern(fmt: str) -> re.Pattern:
    out = ""
    for piece in re.split(r"(%d|%s)", fmt):
        out += {"%d": r"-?\d+", "%s": r".+?"}.get(piece, re.escape(piece))
    return re.compile("MAM_SPARSE: " + out)


def _csr():
    w = np.zeros((3, 300), np.int8)
    w[0, 3], w[0, 200], w[2, 299] = 1, 2, 3
    return encode(w)  # values [1, 2, 0, 3], offsets [3, 196, 255, 43], row_counts [2, 0, 2]


BIAS = dict(bias_type=2, num_inputs=5, bias_len=3, bias_bytes=12)
INT16 = dict(input_type=7, output_type=7)
CASES = {
    "outputs": dict(num_outputs=2),
    "inputs": dict(num_inputs=3),
    "version": dict(version=2),
    "in_features": dict(in_features=0),
    "activation high": dict(activation=4),
    "activation low": dict(activation=-1),
    "input type": dict(input_type=1),
    "output type": dict(output_type=7),
    "values type": dict(values_type=3),
    "offsets type": dict(offsets_type=9),
    "row_counts type": dict(row_counts_type=2),
    "bias without its input": dict(BIAS, num_inputs=4),
    "bias type": dict(BIAS, bias_type=4),
    "bias type int16": dict(BIAS, **INT16, bias_bytes=24),
    "input last dim": dict(input_last_dim=301),
    "input elements": dict(input_elements=601),
    "input elements negative": dict(input_elements=-300),
    "input rows": dict(input_elements=300 * 2**31, output_elements=3 * 2**31),
    "no rows": dict(row_counts=np.zeros(0, np.int16), row_counts_len=0),
    "output last dim": dict(output_last_dim=4),
    "output elements": dict(output_elements=4),
    "bias length": dict(BIAS, bias_len=2, bias_bytes=8),
    "negative lengths": dict(values_len=-1, offsets_len=-1),
    "values vs offsets": dict(values_len=5),
    "offsets vs values": dict(offsets_len=3),
    "values bytes": dict(values_bytes=3),
    "offsets bytes": dict(offsets=np.uint8([3, 196, 255])),
    "row_counts bytes": dict(row_counts=np.int16([2, 0])),
    "bias bytes": dict(BIAS, bias_bytes=8),
    "negative row count": dict(row_counts=np.int16([3, -1, 2])),
    "row count sum": dict(row_counts=np.int16([2, 0, 1])),
    "column": dict(offsets=np.uint8([3, 196, 255, 44])),
    "column, fewer features": dict(in_features=299, input_last_dim=299, input_elements=299),
    "scale count": dict(weight_scale_count=2, weight_scales=[1.0, 1.0]),
    "weight zero point": dict(weight_zero_point=1),
    "zero point int8": dict(input_zero_point=128),
    "zero point int16": dict(INT16, output_zero_point=1),
    "input scale": dict(input_scale=0.0),
    "output scale": dict(output_scale=float("inf")),
    "scale nan": dict(input_scale=float("nan")),
    "not quantized": dict(output_quantized=0),
    "weight scale nan": dict(weight_scales=[float("nan")]),
    "weight scale negative": dict(weight_scale_count=3, weight_scales=[1.0, -2.0, 1.0]),
    "zero scale of a full row": dict(weight_scale_count=3, weight_scales=[0.0, 1.0, 1.0]),
}


def _fields(override):
    fields = native.layer_desc(_csr())
    fields.update(override)
    return fields


def _mirror(fields):
    try:
        node.validate(dict(fields))
    except ValueError as e:
        return str(e)
    return ""


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_mirror_refuses_as_the_core_with_its_words(name):
    fields = _fields(CASES[name])
    status, core_msg = native.validate_layer(**fields)
    assert status != 0, f"the core accepts case {name!r}: the case tests nothing"
    assert _mirror(fields) == core_msg


@pytest.mark.parametrize("override", [{}, dict(BIAS), dict(INT16), dict(activation=3),
                                      dict(weight_scale_count=3, weight_scales=[1.0, 0.0, 2.0]),
                                      dict(input_elements=1200, output_elements=12)])
def test_the_mirror_accepts_what_the_core_accepts(override):
    fields = _fields(override)
    assert native.validate_layer(**fields) == (0, "")
    assert _mirror(fields) == ""


def test_every_refusal_of_the_core_has_a_case():
    """The rules come from the core's source, not from the mirror: a new refusal in
    mam_validate fails here until a case (and the mirror's rule) exists."""
    messages = [native.validate_layer(**_fields(o))[1] for o in CASES.values()]
    missing = [fmt for fmt in _validate_error_formats() if fmt not in POINTER_ONLY
               and not any(_pattern(fmt).fullmatch(m) for m in messages)]
    assert not missing, f"mam_validate refusals without a case: {missing}"


def test_prepare_without_the_core_gives_the_cores_requantization():
    fields = native.layer_desc(_csr(), input_scale=0.07, output_scale=0.05, activation=1,
                               weight_scales=np.float32([0.011, 0.0042, 0.0193]),
                               output_zero_point=-9)
    want = native.prepare_layer(**fields)
    got = node._prepare_without_core(fields)
    for key in ("multiplier", "shift"):
        np.testing.assert_array_equal(np.asarray(got[key]).ravel(), want[key])
    assert (got["act_min"], got["act_max"]) == (want["act_min"], want["act_max"])


@pytest.mark.parametrize("shape, count", [(None, 1), ([], 1), ([2, 3], 6), ([0, 5], 0),
                                          ([-1, 8], -8), ([-2, -4, 8], 64)])
def test_element_count_is_tflite_micros(shape, count):
    """TFLite-Micro's BytesRequiredForTensor: the product of the stored dimensions, negative
    ones included, 1 for a tensor without a shape."""
    class T:
        pass

    t = T()
    t.shape = None if shape is None else np.int32(shape)
    assert node.element_count(t) == count
