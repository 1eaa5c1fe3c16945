"""The reference's requantization IS TFLite-Micro's: checked against the real interpreter.

Small random Dense models are converted by TensorFlow's own TFLiteConverter (int8 per row,
int8 per tensor, 16x8 per row, 16x8 per tensor) and run by the ``tflite-micro`` wheel's
interpreter (TFLM's reference FULLY_CONNECTED). The same integer inputs go through
``mam_tf.deploy.reference.mac_dense``, ``reference.mac_sparse`` on the offset-CSR encoding of the
same int8 weights, and the C core's twins (``mam_tf.deploy.native``), with the multipliers, shifts and
clamps the reference derives from the scales in the flatbuffer. Every output must be equal,
bit for bit.

What this settles (docs/operator-contract.md section 3):

- per-TENSOR weight scale: TFLM multiplies input_scale * weight_scale in FLOAT32 before
  widening to double (``GetQuantizedConvolutionMultipler``); per ROW it multiplies in double.
  Scales are crafted so that the two orders give different outputs, and TFLM is shown to pick
  the one the reference uses (and not the other).
- 16x8 with an int64 bias (the converter's convention) uses TFLM's 64-bit requantization,
  exactly the reference's int16 mode.
- 16x8 WITHOUT a bias: TFLM's FULLY_CONNECTED then accumulates in int32 and requantizes with
  the 32-bit routine; MAC_SPARSE (int64 accumulator, 64-bit routine) does not. The test pins
  TFLM's behaviour down and shows that a zero int64 bias makes the two equal again.
"""
import contextlib
import io

import numpy as np
import pytest

from mam_tf.deploy import native
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import reference as ref
from mam_tf.train.compat import keras, tf
from mam_tf.deploy.offset_csr import encode

N = 300  # wide enough for a skip > 255 columns: offset-CSR dummy entries get exercised
# (layer name, units, use_bias, Keras activation, the TFLite fused activation expected)
BRANCHES = [
    ("relu_bias", 7, True, "relu", 1),
    ("none_bias", 5, True, None, 0),
    ("relu_nobias", 6, False, "relu", 1),
    ("none_nobias", 9, False, None, 0),
    ("relu6_bias", 4, True, tf.nn.relu6, 3),
]
CONFIGS = [("int8", False), ("int8", True), ("int16x8", False), ("int16x8", True)]
CONFIG_IDS = ["int8-per_row", "int8-per_tensor", "int16x8-per_row", "int16x8-per_tensor"]
SAMPLES = 48


def _model(seed):
    """One input, several independent Dense layers (each a model output), pruned."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((N,))
    outs = [keras.layers.Dense(units, use_bias=bias, activation=act, name=name,
                               bias_initializer="random_normal")(inp)
            for name, units, bias, act, _ in BRANCHES]
    model = keras.Model(inp, outs)
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:]:
        w = layer.kernel.numpy()
        w[rng.random(w.shape) < 0.6] = 0.0     # unstructured pruning
        w[5:295, ::2] = 0.0                      # every other row skips 290 columns
        layer.kernel.assign(w)
    return model


def _convert(model, data, mode, per_tensor):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[None]] for s in data)
    if mode == "int8":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8
    else:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        io_type = tf.int16
    conv.inference_input_type = io_type
    conv.inference_output_type = io_type
    if per_tensor:
        conv._experimental_disable_per_channel = True  # one weight scale per layer
    return conv.convert()


class _FC:
    """One FULLY_CONNECTED op read from the flatbuffer, with what the reference derives."""

    def __init__(self, tfl, sg, op):
        self.op = op
        x_t, w_t, y_t = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.outputs[0]]
        outputs = [int(t) for t in sg.outputs]
        # None when a RESHAPE follows (token inputs: TFLite restores the leading dimensions)
        self.output_position = outputs.index(int(op.outputs[0])) \
            if int(op.outputs[0]) in outputs else None
        self.weights = fb.constant(tfl, sg, op.inputs[1])
        # Branches have distinct widths: the width names the layer, whatever the op order.
        self.name = next(b[0] for b in BRANCHES if b[1] == self.weights.shape[0])
        has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        self.bias = fb.constant(tfl, sg, op.inputs[2]) if has_bias else None
        self.dtype = fb.numpy_dtype(x_t.type)
        in_s, in_zp = fb.quantization(x_t)
        self.weight_scales, self.weight_zero_points = fb.quantization(w_t)
        out_s, out_zp = fb.quantization(y_t)
        self.in_scale, self.out_scale = float(in_s[0]), float(out_s[0])
        self.in_zp, self.out_zp = int(in_zp[0]), int(out_zp[0])
        self.activation = int(op.builtinOptions.fusedActivationFunction)
        self.multiplier, self.shift = ref.quantize_multipliers(
            ref.effective_scale(in_s[0], self.weight_scales, out_s[0]))
        self.act_min, self.act_max = ref.activation_range(
            self.activation, self.out_scale, self.out_zp, self.dtype)

    def kwargs(self, bias="model"):
        return dict(bias=self.bias if isinstance(bias, str) else bias,
                    multiplier=self.multiplier, shift=self.shift,
                    input_zero_point=self.in_zp, output_zero_point=self.out_zp,
                    act_min=self.act_min, act_max=self.act_max)


def _fcs(tflite):
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    fcs = [_FC(tfl, sg, op) for op in sg.operators if fb.op_name(tfl, op) == "FULLY_CONNECTED"]
    order = [b[0] for b in BRANCHES]
    return sorted(fcs, key=lambda fc: order.index(fc.name))


def _run_tflm(tflite, x):
    """TFLM's interpreter on every row of x [B, N]; returns the outputs, [B, M] each."""
    from tflite_micro.python.tflite_micro import runtime

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a resource-variable count
        interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 18)
    outs = []
    for row in x:
        interp.set_input(row[None], 0)
        interp.invoke()
        outs.append([np.array(interp.get_output(k)) for k in range(len(BRANCHES))])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(BRANCHES))]


def _inputs(fc, seed):
    """Calibration-like samples (quantized normals), full-range noise, and the extremes."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(fc.dtype)
    q = np.round(rng.standard_normal((SAMPLES - 12, N)) / fc.in_scale) + fc.in_zp
    noise = rng.integers(info.min, info.max + 1, (9, N))
    ends = np.stack([np.full(N, info.min), np.full(N, info.max), np.full(N, fc.in_zp)])
    return np.clip(np.concatenate([q, noise, ends]), info.min, info.max).astype(fc.dtype)


def _all_impls(fc, x, bias="model"):
    """{name: output} of the four implementations of MAC on this layer."""
    kw = fc.kwargs(bias)
    csr = encode(fc.weights)
    return {
        "reference.mac_dense": ref.mac_dense(x, fc.weights, **kw),
        "reference.mac_sparse": ref.mac_sparse(x, csr, **kw),
        "native.mac_dense": native.mac_dense(x, fc.weights, **kw),
        "native.mac_sparse": native.mac_sparse(x, csr, **kw),
    }


@pytest.fixture(scope="module", params=CONFIGS, ids=CONFIG_IDS)
def converted(request):
    mode, per_tensor = request.param
    keras.backend.clear_session()
    data = (np.random.default_rng(7).standard_normal((32, N)) + 0.7).astype(np.float32)
    tflite = _convert(_model(seed=3), data, mode, per_tensor)
    fcs = _fcs(tflite)
    x = _inputs(fcs[0], seed=11)
    return mode, per_tensor, tflite, fcs, x, _run_tflm(tflite, x)


def test_converter_writes_the_layers_the_kernels_expect(converted):
    mode, per_tensor, _, fcs, _, _ = converted
    assert [fc.name for fc in fcs] == [b[0] for b in BRANCHES]
    for fc, (name, units, use_bias, _, act) in zip(fcs, BRANCHES):
        assert fc.weights.shape == (units, N) and fc.weights.dtype == np.int8, name
        assert fc.activation == act, f"{name}: fused activation {fc.activation}, expected {act}"
        assert (fc.weight_zero_points == 0).all(), name
        assert fc.weight_scales.size == (1 if per_tensor else units), name
        assert fc.dtype == (np.int8 if mode == "int8" else np.int16), name
        if use_bias:  # 16x8: the int64 bias convention
            assert fc.bias.dtype == (np.int32 if mode == "int8" else np.int64), name
        else:
            assert fc.bias is None, name
        if mode == "int16x8":
            assert fc.in_zp == 0 and fc.out_zp == 0, name
    assert sorted(fc.output_position for fc in fcs) == list(range(len(BRANCHES)))
    assert encode(fcs[0].weights).num_dummies > 0  # the > 255 skip is really there
    if mode == "int8":
        assert fcs[0].in_zp != 0  # the input zero point is exercised


def test_reference_and_core_equal_tflm_fully_connected(converted):
    mode, _, _, fcs, x, outs = converted
    checked = 0
    for fc in fcs:
        if mode == "int16x8" and fc.bias is None:
            continue  # TFLM takes its 32-bit path there: see the two tests below
        want = outs[fc.output_position]
        assert np.abs(want.astype(np.int64) - fc.out_zp).max() > 0, fc.name  # not all clamped
        for impl, got in _all_impls(fc, x).items():
            np.testing.assert_array_equal(got, want, err_msg=f"{impl} vs TFLM on '{fc.name}'")
            checked += 1
    assert checked == 4 * (5 if mode == "int8" else 3)


def _requant_32(fc, x):
    """TFLM's 16x8 FULLY_CONNECTED without bias: int32 accumulator, 32-bit requantization."""
    acc = x.astype(np.int64) @ fc.weights.astype(np.int64).T
    scaled = ref.multiply_by_quantized_multiplier(ref._wrap32(acc), fc.multiplier[None, :],
                                                  fc.shift[None, :])
    return np.clip(scaled + fc.out_zp, fc.act_min, fc.act_max).astype(fc.dtype)


def test_16x8_without_bias_tflm_requantizes_in_32_bits(converted):
    mode, _, _, fcs, x, outs = converted
    if mode != "int16x8":
        pytest.skip("int8 mode has one requantization path")
    for fc in (f for f in fcs if f.bias is None):
        want = outs[fc.output_position]
        np.testing.assert_array_equal(_requant_32(fc, x), want, err_msg=fc.name)
        # ... which is not MAC_SPARSE's 64-bit path on a few outputs: the reason MAC_SPARSE
        # equals FULLY_CONNECTED in 16x8 only when the latter has an int64 bias.
        assert (ref.mac_dense(x, fc.weights, **fc.kwargs()) != want).any(), fc.name


def _with_zero_int64_bias(tflite, fc_names):
    """The model with a zero int64 bias given to the named bias-less FULLY_CONNECTED ops."""
    s = fb.schema()
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    for fc in _fcs(tflite):
        if fc.name not in fc_names:
            continue
        op = next(o for o in sg.operators if int(o.outputs[0]) == int(fc.op.outputs[0]))
        m = fc.weights.shape[0]
        buf = s.BufferT()
        buf.data = np.zeros(8 * m, np.uint8)
        tfl.buffers.append(buf)
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = b"zero_bias", np.array([m], np.int32), s.TensorType.INT64, len(tfl.buffers) - 1
        q = s.QuantizationParametersT()
        q.scale = (np.float32(fc.in_scale) * fc.weight_scales).astype(np.float32)
        q.zeroPoint = np.zeros(q.scale.size, np.int64)
        t.quantization = q
        sg.tensors.append(t)
        op.inputs = np.array([op.inputs[0], op.inputs[1], len(sg.tensors) - 1], np.int32)
    return fb.pack(tfl)


def test_16x8_with_a_zero_int64_bias_equals_mac(converted):
    mode, _, tflite, fcs, x, _ = converted
    if mode != "int16x8":
        pytest.skip("16x8 only")
    names = [fc.name for fc in fcs if fc.bias is None]
    patched = _with_zero_int64_bias(tflite, names)
    outs = _run_tflm(patched, x)
    for fc in (f for f in fcs if f.name in names):
        for impl, got in _all_impls(fc, x).items():  # bias None: the int64 path with no bias
            np.testing.assert_array_equal(got, outs[fc.output_position],
                                          err_msg=f"{impl} vs TFLM on '{fc.name}' + zero bias")


# ------------------------------------------------------------------------------------------
# Crafted scales: which product (float32 or double) TFLM forms
# ------------------------------------------------------------------------------------------
def _signature(mult, shift, dtype):
    """What the requantization really uses: int16 mode keeps 16 bits of the multiplier."""
    if np.dtype(dtype) == np.int16:
        mult = np.where(mult < 0x7FFF0000, (mult.astype(np.int64) + (1 << 15)) >> 16, 0x7FFF)
    return np.stack([mult, shift])


def _products(in_scale, w_scales, out_scale):
    """(float32 product, double product) real multipliers for each weight scale."""
    w = np.asarray(w_scales, np.float32)
    f32 = (np.float32(in_scale) * w).astype(np.float64) / float(np.float32(out_scale))
    f64 = float(np.float32(in_scale)) * w.astype(np.float64) / float(np.float32(out_scale))
    return f32, f64


def _crafted_scales(rng, count, dtype, in_scale, out_scale):
    """Weight scales whose float32 and double products requantize differently."""
    found = []
    while len(found) < count:
        # real multiplier ~ 2^-22: acc values of many millions stay inside the output range
        w = np.float32(rng.uniform(1, 2) * 2.0**-22 * out_scale / in_scale)
        f32, f64 = _products(in_scale, [w], out_scale)
        a = _signature(*ref.quantize_multipliers(f32), dtype)
        b = _signature(*ref.quantize_multipliers(f64), dtype)
        if (a != b).any():
            found.append(w)
    return np.array(found, np.float32)


def _requant(acc, mult, shift, dtype):
    if np.dtype(dtype) == np.int8:
        return ref.multiply_by_quantized_multiplier(ref._wrap32(acc), mult, shift)
    return ref.multiply_by_quantized_multiplier_64(acc, mult, shift)


def _discriminating_acc(ma, sa, mb, sb, dtype, k0):
    """An accumulator that requantizes differently under (ma, sa) and (mb, sb), |y| <= 100."""
    real = ma * 2.0 ** (int(sa) - 31)
    for k in range(k0, 101):
        for sign in (1, -1):
            centre = int(round(sign * (k + 0.5) / real))
            acc = np.arange(centre - 4096, centre + 4097, dtype=np.int64)
            ya, yb = _requant(acc, ma, sa, dtype), _requant(acc, mb, sb, dtype)
            hit = np.flatnonzero((ya != yb) & (np.abs(ya) <= 100))
            if hit.size:
                return int(acc[hit[0]])
    raise AssertionError(f"no discriminating accumulator for multipliers {ma}/{sa}, {mb}/{sb}")


def test_tflm_multiplier_product_is_float32_per_tensor_and_double_per_row(converted):
    mode, per_tensor, tflite, fcs, _, _ = converted
    fc = next(f for f in fcs if f.name == "none_bias")
    m = fc.weights.shape[0]
    dtype = fc.dtype
    rng = np.random.default_rng(5)
    # The input tensor feeds every branch: keep its scale; craft the weights' and output's.
    in_scale, out_scale = np.float32(fc.in_scale), np.float32(0.0113)
    w_scales = _crafted_scales(rng, 1 if per_tensor else m, dtype, in_scale, out_scale)
    f32, f64 = _products(in_scale, w_scales, out_scale)
    used, other = (f32, f64) if per_tensor else (f64, f32)  # the claim under test
    np.testing.assert_array_equal(ref.effective_scale(in_scale, w_scales, out_scale), used)
    np.testing.assert_array_equal(native.effective_scale(in_scale, w_scales, out_scale), used)
    mu, su = ref.quantize_multipliers(used)
    mo, so = ref.quantize_multipliers(other)
    assert (_signature(mu, su, dtype) != _signature(mo, so, dtype)).any()
    ju = [0 if per_tensor else j for j in range(m)]
    bias = np.array([_discriminating_acc(mu[r], su[r], mo[r], so[r], dtype, 10 + 9 * j)
                     for j, r in enumerate(ju)], np.int32 if mode == "int8" else np.int64)

    # Edit the layer: crafted scales and bias, zero points as they were.
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    op = next(o for o in sg.operators if int(o.outputs[0]) == int(fc.op.outputs[0]))
    _, w_idx, b_idx = (int(t) for t in op.inputs)
    sg.tensors[int(op.outputs[0])].quantization.scale = np.array([out_scale], np.float32)
    sg.tensors[w_idx].quantization.scale = w_scales
    sg.tensors[b_idx].quantization.scale = (in_scale * w_scales).astype(np.float32)
    tfl.buffers[sg.tensors[b_idx].buffer].data = np.frombuffer(bias.tobytes(), np.uint8).copy()
    patched = fb.pack(tfl)
    pfc = next(f for f in _fcs(patched) if f.name == "none_bias")
    np.testing.assert_array_equal(pfc.multiplier, mu)  # _FC derives through the reference

    # All inputs at the zero point: every product is 0 and the accumulator is the bias.
    x = np.full((1, N), fc.in_zp, dtype)
    got = _run_tflm(patched, x)[fc.output_position]
    kw = pfc.kwargs()
    want = ref.mac_dense(x, fc.weights, **kw)
    alt = ref.mac_dense(x, fc.weights, **{**kw, "multiplier": mo, "shift": so})
    assert (want != alt).all()  # every row discriminates between the two products
    np.testing.assert_array_equal(got, want, err_msg="TFLM vs the reference's multipliers")
    np.testing.assert_array_equal(native.mac_sparse(x, encode(fc.weights), **kw), got)


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_fully_connected_on_tokens_is_the_reference_on_rows(mode):
    """TFLite's FULLY_CONNECTED on token inputs [batch, 3, 4, N] reads every token as a row:
    TFLM's output equals the reference and the core run on the [12, N] rows, bit for bit (the
    rule the converter follows for MAM_SPARSE and MAC_SPARSE on token inputs)."""
    from tflite_micro.python.tflite_micro import runtime

    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    inp = keras.Input((3, 4, N), batch_size=1)  # static shapes: no shape arithmetic ops
    name, units, _, act, _ = BRANCHES[0]  # relu with a bias
    layer = keras.layers.Dense(units, activation=act, name=name, bias_initializer="random_normal")
    model = keras.Model(inp, layer(inp))
    rng = np.random.default_rng(5)
    w = layer.kernel.numpy()
    w[rng.random(w.shape) < 0.6] = 0.0
    layer.kernel.assign(w)
    data = (rng.standard_normal((32, 3, 4, N)) + 0.7).astype(np.float32)
    tflite = _convert(model, data, mode, per_tensor=False)
    (fc,) = _fcs(tflite)
    rows = _inputs(fc, seed=12)[:24].reshape(-1, 3, 4, N)  # 2 samples of 12 rows
    with contextlib.redirect_stdout(io.StringIO()):
        interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 18)
    want = []
    for sample in rows:
        interp.set_input(sample[None], 0)
        interp.invoke()
        want.append(np.array(interp.get_output(0)))
    want = np.concatenate(want)
    assert want.shape == (len(rows), 3, 4, units)
    assert len(np.unique(want)) > 8
    for impl, got in _all_impls(fc, rows.reshape(-1, N)).items():
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=impl)
