"""Corrupted MAM_SPARSE models shared by the TFLM glue test (the device refuses them at
Prepare) and the host runtime test (the host refuses them with the same words)."""
import ast
import functools
import re
from pathlib import Path

import numpy as np

from mam_tf.deploy import flatbuffer as fb
from mam_tf import MAMDense
from mam_tf.deploy import options
from mam_tf.train.compat import keras


def prune(layer, rng, frac, gap=None):
    w = layer.kernel.numpy()
    w[rng.random(w.shape) < frac] = 0.0
    if gap is not None:
        w[gap[0]:gap[1], ::2] = 0.0  # every other output row skips the columns of `gap`
    layer.kernel.assign(w)


def model_a():
    """Dense -> MAMDense(bias, relu) -> Dense: MAM_SPARSE between two FULLY_CONNECTED."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((20,))
    h = keras.layers.Dense(16, activation="relu", name="pre")(inp)
    h = MAMDense(8, activation="relu", name="enc", bias_initializer="random_normal")(h)
    model = keras.Model(inp, keras.layers.Dense(20, name="dec")(h))
    prune(model.get_layer("enc"), np.random.default_rng(0), 0.3)
    return model, 20


def converted_a(mode):
    """model_a converted (per-row scales), as the glue test converts it."""
    from mam_tf.deploy.convert import convert

    keras.backend.clear_session()
    model, n = model_a()
    data = np.random.default_rng(2).standard_normal((64, n)).astype(np.float32)
    return convert(model, data, mode=mode, per_row=True)


def _mam_op(tfl):
    sg = tfl.subgraphs[0]
    op = next(o for o in sg.operators if fb.op_name(tfl, o) == options.MAM_SPARSE)
    return sg, op


def _set_data(tfl, sg, idx, array):
    tfl.buffers[sg.tensors[idx].buffer].data = np.frombuffer(
        np.ascontiguousarray(array).tobytes(), np.uint8).copy()


def _options(**values):
    from flatbuffers import flexbuffers

    return np.frombuffer(bytes(flexbuffers.Dumps(values)), np.uint8).copy()


def corrupt(tflite, what):
    """A copy of the model with one thing wrong in its MAM_SPARSE op."""
    s = fb.schema()
    tfl = fb.load(tflite)
    sg, op = _mam_op(tfl)
    x_i, v_i, o_i, r_i, b_i = (int(t) for t in op.inputs)
    rc = fb.constant(tfl, sg, r_i).copy()
    offs = fb.constant(tfl, sg, o_i).copy()
    good = dict(in_features=16, fused_activation_function=1, version=1)
    if what == "row_counts_sum_off":
        rc[0] += 1
        _set_data(tfl, sg, r_i, rc)
    elif what == "negative_row_count":
        rc[1] = -1
        _set_data(tfl, sg, r_i, rc)
    elif what == "column_beyond_n":
        offs[int(rc[0]) - 1] = 200  # the last entry of row 0 decodes far past N = 16
        _set_data(tfl, sg, o_i, offs)
    elif what == "offsets_shorter_than_values":
        _set_data(tfl, sg, o_i, offs[:-1])
        sg.tensors[o_i].shape = np.array([len(offs) - 1], np.int32)
    elif what == "offsets_not_constant":
        sg.tensors[o_i].buffer = 0  # buffer 0 is the empty one: no data in the model
    elif what == "options_missing_version":
        op.customOptions = _options(in_features=16, fused_activation_function=1)
    elif what == "options_version_2":
        op.customOptions = _options(**{**good, "version": 2})
    elif what == "options_unknown_activation":
        op.customOptions = _options(**{**good, "fused_activation_function": 7})
    elif what == "options_in_features_not_n":
        op.customOptions = _options(**{**good, "in_features": 15})
    elif what == "options_in_features_a_string":
        op.customOptions = _options(**{**good, "in_features": "16"})
    elif what == "options_not_a_flexbuffer":
        op.customOptions = np.frombuffer(b"\x07\x13\x2a\x05\x09", np.uint8).copy()
    elif what == "options_not_a_map":
        from flatbuffers import flexbuffers

        op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps([16, 1, 1])), np.uint8).copy()
    elif what == "options_absent":
        op.customOptions = None
    elif what == "values_int16":
        sg.tensors[v_i].type = s.TensorType.INT16
    elif what == "row_counts_int32":
        sg.tensors[r_i].type = s.TensorType.INT32
    elif what == "bias_int64_in_int8_mode":
        sg.tensors[b_i].type = s.TensorType.INT64
    elif what == "three_inputs":
        op.inputs = np.array([x_i, v_i, o_i], np.int32)
    elif what == "two_outputs":
        op.outputs = np.array([int(op.outputs[0]), int(op.outputs[0])], np.int32)
    elif what == "weight_zero_point_3":
        sg.tensors[v_i].quantization.zeroPoint = np.full(8, 3, np.int64)
    elif what == "two_weight_scales_for_8_rows":
        q = sg.tensors[v_i].quantization
        q.scale, q.zeroPoint = q.scale[:2], q.zeroPoint[:2]
    elif what == "output_last_dim_7":
        y = sg.tensors[int(op.outputs[0])]
        y.shape = np.array([1, 7], np.int32)
    elif what == "untouched":
        pass
    else:
        raise AssertionError(what)
    return fb.pack(tfl)


# (case, model mode, the message the glue must print); "" means: must be accepted.
CORRUPTIONS = [
    ("untouched", "int8", ""),
    ("row_counts_sum_off", "int8", "row_counts sum to"),
    ("negative_row_count", "int8", "row 1 has a negative row count -1"),
    ("column_beyond_n", "int8", "row 0 entry"),
    ("offsets_shorter_than_values", "int8", "but offsets has"),
    ("offsets_not_constant", "int8", "offsets must be a constant tensor"),
    ("options_missing_version", "int8", "custom option 'version' is missing"),
    ("options_version_2", "int8", "custom option version is 2"),
    ("options_unknown_activation", "int8", "fused_activation_function is 7"),
    ("options_in_features_not_n", "int8", "input last dimension is 16 but in_features is 15"),
    ("options_in_features_a_string", "int8", "custom option 'in_features' is not an integer"),
    ("options_not_a_flexbuffer", "int8", "custom options are not a valid flexbuffer"),
    ("options_not_a_map", "int8", "custom options are not a flexbuffer map"),
    ("options_absent", "int8", "custom options are missing"),
    ("values_int16", "int8", "values tensor is int16"),
    ("row_counts_int32", "int16x8", "row_counts tensor is int32"),
    ("bias_int64_in_int8_mode", "int8", "bias tensor is int64 (type 4); it must be int32"),
    ("three_inputs", "int8", "node has 3 inputs"),
    ("two_outputs", "int8", "node has 2 outputs"),
    ("weight_zero_point_3", "int16x8", "values zero point is 3"),
    ("two_weight_scales_for_8_rows", "int8", "values has 2 scales"),
    ("output_last_dim_7", "int8", "output last dimension is 7"),
]


# ------------------------------------------------------------------------------------------
# The words of the device: the message formats of the C core and the TFLM glue
# ------------------------------------------------------------------------------------------
_C_STRING = r'"(?:[^"\\\n]|\\.)*"'
_CONVERSION = re.compile(r"%%|%[-+ #0-9.]*(?:ll|l|hh|h|z)?([diuxXsc])")


def _format_regex(fmt, pieces):
    """A printf format as a regex over the text it prints: %d an integer; %s one of the
    sources' own string literals (``pieces``: "is missing", "int32", ...), a quoted name or
    one word."""
    text = "|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True) if p)
    out, pos = [], 0
    for m in _CONVERSION.finditer(fmt):
        out.append(re.escape(fmt[pos:m.start()]))
        out.append("%" if m.group(0) == "%%" else
                   rf"(?:{text}|'[^']*'|[\w.]+)" if m.group(1) in "sc" else "-?[0-9a-fA-F]+")
        pos = m.end()
    out.append(re.escape(fmt[pos:]))
    return re.compile("".join(out), re.S)


@functools.lru_cache(maxsize=None)
def _device_literals(root=None):
    """The string literals of tflm_ops' C core and TFLM glue sources (not the firmware's or
    the C tests'), adjacent literals joined as the compiler joins them."""
    root = Path(__file__).resolve().parents[1] / "tflm_ops" if root is None else Path(root)
    literals = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.suffix not in (".c", ".cc", ".h") or parts[0] in ("firmware", "tests"):
            continue
        text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", path.read_text(errors="replace"), flags=re.S)
        for run in re.finditer(rf"{_C_STRING}(?:\s*{_C_STRING})*", text):
            literals.append("".join(ast.literal_eval(piece)
                                    for piece in re.findall(_C_STRING, run.group(0))))
    return literals


def device_formats(root=None):
    """Every message format of the device's op: the literals of :func:`_device_literals` with
    two words or more, without the "MAM_SPARSE: " prefix that the core's fail() and the glue
    put first."""
    formats = set()
    for fmt in _device_literals(root):
        fmt = fmt.removeprefix("MAM_SPARSE: ")
        if len(re.findall(r"[a-z_]{2,}", _CONVERSION.sub(" ", fmt))) >= 2:
            formats.add(fmt)
    return sorted(formats)


def device_words(message):
    """The C format a host message's "MAM_SPARSE: ..." part prints, or None: the device's
    words, derived from its sources rather than copied by hand."""
    if "MAM_SPARSE: " not in message:
        return None
    said = message[message.index("MAM_SPARSE: ") + len("MAM_SPARSE: "):].strip()
    said = re.sub(r" \(and \d+ more problems?: .*\)$", "", said)
    pieces = _device_literals()
    found = [f for f in device_formats() if _format_regex(f, pieces).fullmatch(said)]
    # the most specific format: the one with the most literal text
    return max(found, key=lambda f: len(_CONVERSION.sub("", f)), default=None)
