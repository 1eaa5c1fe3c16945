"""The C core against the numpy reference, bit for bit, and the core's validation."""
import itertools

import numpy as np
import pytest

from mam_tf.deploy import native
from mam_tf.deploy import reference
from mam_tf.deploy.offset_csr import OffsetCSR, encode

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
OPS = ("mam_sparse", "mac_sparse", "mam_dense", "mac_dense")


def _matrix(rng, m, n, density, kind="random"):
    w = rng.integers(-128, 128, size=(m, n)).astype(np.int8)
    w[w == 0] = 1
    w[rng.random((m, n)) >= density] = 0
    if kind == "rows":  # some empty rows, some full rows, some with only a far column
        for j in range(m):
            r = rng.integers(0, 4)
            if r == 0:
                w[j] = 0
            elif r == 1:
                w[j] = rng.choice([-3, 5, 127, -128], size=n)
            elif r == 2:
                w[j] = 0
                w[j, n - 1] = rng.choice([-1, 1])
    return w


def _accumulators(x2, w, zx, op):
    """Oracle for choosing scales only: the raw accumulator by plain numpy."""
    p = (x2.astype(np.int64)[:, None, :] - zx) * w.astype(np.int64)[None]
    return p.max(2) + p.min(2) if op.startswith("mam") else p.sum(2)


def _spread_requant(rng, acc, dtype, per_row, m, span=None):
    """Multipliers that map the typical |acc| onto a good part of the output range (or of
    a clamp ``span`` wide)."""
    top = (100.0 if dtype == np.int8 else 25000.0) if span is None else max(2.0, span / 4)
    typical = max(1.0, float(np.percentile(np.abs(acc), 75)))
    k = m if per_row else 1
    reals = np.minimum(top / typical * rng.uniform(0.5, 1.5, size=k), 100.0)  # shift <= 7
    mult, shift = reference.quantize_multipliers(reals)
    return mult, shift


def _compare(x, w, bias, mult, shift, **kw):
    csr = encode(w)
    outs = {}
    for op in OPS:
        arg = csr if op.endswith("sparse") else w
        want = getattr(reference, op)(x, arg, bias, mult, shift, **kw)
        got = getattr(native, op)(x, arg, bias, mult, shift, **kw)
        assert got.dtype == want.dtype == x.dtype
        assert got.shape == want.shape == x.shape[:-1] + (w.shape[0],)
        np.testing.assert_array_equal(got, want, err_msg=f"{op}: core != reference")
        outs[op] = got
    # the sparse kernels are the dense ones on the decoded matrix
    np.testing.assert_array_equal(outs["mam_sparse"], outs["mam_dense"])
    np.testing.assert_array_equal(outs["mac_sparse"], outs["mac_dense"])
    return outs


CASES = list(itertools.product(
    [np.int8, np.int16], [False, True], [False, True], [0, 1, 2, 3]))


@pytest.mark.parametrize("dtype, per_row, with_bias, activation", CASES)
def test_core_matches_reference_random_layers(dtype, per_row, with_bias, activation):
    seed = CASES.index((dtype, per_row, with_bias, activation))
    rng = np.random.default_rng(1000 + seed)
    info = np.iinfo(dtype)
    inside = total = 0
    for trial in range(12):
        m = int(rng.choice([1, 2, 7, 33]))
        n = int(rng.choice([1, 3, 200, 700, 1500]))
        density = float(rng.choice([0.001, 0.01, 0.1, 0.5, 1.0]))
        w = _matrix(rng, m, n, density, kind="rows" if trial % 3 == 0 else "random")
        batch_shape = [(1,), (4,), (2, 3)][trial % 3]
        x = rng.integers(info.min, info.max + 1, size=batch_shape + (n,)).astype(dtype)
        zx = int(rng.integers(-128, 128)) if dtype == np.int8 else 0
        zy = int(rng.integers(-128, 128)) if dtype == np.int8 else 0
        bias = None
        if with_bias:
            bt = np.int32 if dtype == np.int8 else np.int64
            bias = rng.integers(-3000, 3000, size=m).astype(bt)
        op = ["mam", "mac"][trial % 2]
        out_scale = float(rng.choice([0.004, 0.02, 0.1, 2.0**-10]))
        act_min, act_max = reference.activation_range(activation, out_scale, zy, dtype)
        mult, shift = _spread_requant(rng, _accumulators(x.reshape(-1, n), w, zx, op), dtype,
                                      per_row, m, span=act_max - act_min)
        outs = _compare(x, w, bias, mult, shift, input_zero_point=zx, output_zero_point=zy,
                        act_min=act_min, act_max=act_max)
        y = outs[op + "_sparse"]
        inside += int(((y > act_min) & (y < act_max)).sum())
        total += y.size
        assert outs["mam_sparse"].min() >= act_min and outs["mam_sparse"].max() <= act_max
    assert inside >= 0.1 * total, f"only {inside} of {total} outputs escaped the clamp"


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_core_matches_reference_big_layer(dtype):
    # one layer of the seed's biggest size: 16384 inputs -> 128 outputs, 1% dense, batch 2
    rng = np.random.default_rng(7)
    m, n = 128, 16384
    w = _matrix(rng, m, n, 0.01)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=(2, n)).astype(dtype)
    zx = 17 if dtype == np.int8 else 0
    bias = rng.integers(-1000, 1000, size=m).astype(np.int32 if dtype == np.int8 else np.int64)
    csr = encode(w)
    assert (np.diff(np.flatnonzero(w[0])) > 256).any()  # skips > 255 occur
    for op in ("mam_sparse", "mac_sparse"):
        mult, shift = _spread_requant(rng, _accumulators(x, w, zx, op), dtype, True, m)
        kw = dict(input_zero_point=zx)
        want = getattr(reference, op)(x, csr, bias, mult, shift, **kw)
        got = getattr(native, op)(x, csr, bias, mult, shift, **kw)
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(got)) > 20


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_saturation_and_extreme_values(dtype):
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    m, n = 9, 300
    w = _matrix(rng, m, n, 0.3, kind="rows")
    w[0] = -128
    w[1] = 127
    # extreme inputs and weights: the largest products of the type
    x = np.stack([np.full(n, info.min), np.full(n, info.max), rng.integers(info.min, info.max + 1, n)]).astype(dtype)
    zx = -128 if dtype == np.int8 else 0
    bt = np.int32 if dtype == np.int8 else np.int64
    bmax = np.iinfo(bt)
    # biases at the type's limits make the accumulator wrap (two's complement)
    bias = np.array([bmax.max, bmax.min, bmax.max - 5, bmax.min + 5, 0, 1, -1, 10**6, -(10**6)], bt)
    smax = 30 if dtype == np.int8 else 7
    for mult, shift in [([I32_MAX], [smax]), ([2**30], [0]), ([I32_MAX] * m, list(range(-31, -31 + m))),
                        ([0], [0]), ([2**30 + 1] * m, [smax] * m), ([1], [-31])]:
        outs = _compare(x, w, bias, np.array(mult), np.array(shift), input_zero_point=zx)
        if dtype == np.int8 and mult == [I32_MAX] and shift == [smax]:
            # a multiplier of ~2^smax drives every nonzero accumulator to a bound
            assert set(np.unique(outs["mac_sparse"])) <= {int(info.min), int(info.max), 0}
            assert {int(info.min), int(info.max)} <= set(np.unique(outs["mac_sparse"]).tolist())


def test_ties_all_negative_and_constant_inputs():
    rng = np.random.default_rng(3)
    for dtype in (np.int8, np.int16):
        m, n = 20, 64
        w = -np.abs(_matrix(rng, m, n, 0.5, kind="rows")).astype(np.int8)  # all-negative rows
        w[w == 0] = 0
        for xv in (0, 1, 2, -1):
            x = np.full((3, n), xv, dtype)  # all products of a row equal up to the weight
            _compare(x, w, None, [2**30], [1])
        x = rng.integers(1, 100, size=(2, n)).astype(dtype)  # positive inputs: all products <= 0
        _compare(x, w, None, [2**30], [1])
        w2 = np.full((4, n), 3, np.int8)  # every product ties
        _compare(x, w2, None, [2**30], [-2])


def test_zero_batch_and_one_by_one():
    w = np.array([[5]], np.int8)
    for dtype in (np.int8, np.int16):
        x = np.array([[7]], dtype)
        outs = _compare(x, w, None, [2**30], [1])
        assert outs["mam_sparse"].tolist() == [[35 + 35]]  # the only product is both max and min
        assert outs["mac_sparse"].tolist() == [[35]]
        empty = native.mam_sparse(np.zeros((0, 1), dtype), encode(w), None, [2**30], [1])
        assert empty.shape == (0, 1)


# --- scalars: C vs Python over many values -----------------------------------------------------
def test_quantize_multiplier_core_equals_reference():
    rng = np.random.default_rng(0)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    reals = [f32(a) * f32(b) / f32(c) for a, b, c in rng.uniform(1e-4, 1, size=(3000, 3))]
    reals += list(2.0 ** rng.uniform(-40, 35, size=2000))
    reals += [(2**30 + k + 0.5) / 2**31 * 2.0**e for k in range(-3, 3) for e in range(-33, 3)]
    reals += [1 - 2.0**-k for k in range(30, 54)] + [2.0**e for e in range(-40, 40)]
    for r in reals:
        assert native.quantize_multiplier(r) == reference.quantize_multiplier(r), r


def test_effective_scale_and_activation_range_core_equals_reference():
    rng = np.random.default_rng(1)
    for _ in range(300):
        si, so = (float(v) for v in 10.0 ** rng.uniform(-6, 1, size=2))
        ws = 10.0 ** rng.uniform(-6, 1, size=int(rng.integers(1, 4)))
        np.testing.assert_array_equal(native.effective_scale(si, ws, so), reference.effective_scale(si, ws, so))
        for dtype in (np.int8, np.int16):
            zp = int(rng.integers(-128, 128)) if dtype == np.int8 else int(rng.integers(-300, 300))
            for act in range(4):
                assert native.activation_range(act, so, zp, dtype) == reference.activation_range(act, so, zp, dtype)


def test_fixed_point_core_equals_reference():
    rng = np.random.default_rng(2)
    edge = np.array([I32_MIN, I32_MIN + 1, -(2**30), -3, -2, -1, 0, 1, 2, 3, 2**30, I32_MAX - 1, I32_MAX])
    a = np.concatenate([edge, rng.integers(I32_MIN, I32_MAX, 400, endpoint=True)])
    aa, bb = np.meshgrid(a[:60], a[:60])
    np.testing.assert_array_equal(native.saturating_rounding_doubling_high_mul(aa, bb),
                                  reference.saturating_rounding_doubling_high_mul(aa, bb))
    e = rng.integers(0, 32, a.size)
    np.testing.assert_array_equal(native.rounding_divide_by_pot(a, e), reference.rounding_divide_by_pot(a, e))
    mult = rng.integers(0, I32_MAX, a.size, endpoint=True)
    s32 = rng.integers(-31, 31, a.size)
    np.testing.assert_array_equal(native.multiply_by_quantized_multiplier(a, mult, s32),
                                  reference.multiply_by_quantized_multiplier(a, mult, s32))
    x64 = np.concatenate([a, rng.integers(-(2**47), 2**47, 400), [2**62, -(2**63), 2**63 - 1]])
    m64 = rng.integers(0, I32_MAX, x64.size, endpoint=True)
    m64[:20] = [0x7FFF0000, 0x7FFEFFFF, 0x7FFF7FFF, I32_MAX, 0, 1, 2**15, 2**15 - 1] + [2**30] * 12
    s64 = rng.integers(-31, 8, x64.size)
    np.testing.assert_array_equal(native.multiply_by_quantized_multiplier_64(x64, m64, s64),
                                  reference.multiply_by_quantized_multiplier_64(x64, m64, s64))


# --- validation (docs/operator-contract.md section 4) ----------------------------------------
def _golden_csr():
    w = np.zeros((3, 300), np.int8)
    w[0, 3], w[0, 200], w[2, 299] = 1, 2, 3
    return encode(w)  # values [1, 2, 0, 3], offsets [3, 196, 255, 43], row_counts [2, 0, 2]


@pytest.mark.parametrize("override, status, message", [
    ({}, "MAM_OK", ""),
    (dict(num_outputs=2), "MAM_ERR_TENSOR_COUNT", "node has 2 outputs; it must have 1"),
    (dict(num_inputs=3), "MAM_ERR_TENSOR_COUNT", "node has 3 inputs"),
    (dict(version=2), "MAM_ERR_OPTIONS", "custom option version is 2"),
    (dict(in_features=0), "MAM_ERR_OPTIONS", "in_features is 0"),
    (dict(activation=4), "MAM_ERR_ACTIVATION", "fused_activation_function is 4"),
    (dict(activation=-1), "MAM_ERR_ACTIVATION", "fused_activation_function is -1"),
    (dict(input_type=1), "MAM_ERR_TYPE", "input tensor is an unsupported type (type 1)"),
    (dict(output_type=7), "MAM_ERR_TYPE", "output tensor is int16 (type 7); it must be int8"),
    (dict(values_type=3), "MAM_ERR_TYPE", "values tensor is uint8"),
    (dict(offsets_type=9), "MAM_ERR_TYPE", "offsets tensor is int8"),
    (dict(row_counts_type=2), "MAM_ERR_TYPE", "row_counts tensor is int32"),
    (dict(bias_type=4, num_inputs=5, bias_len=3), "MAM_ERR_TYPE", "bias tensor is int64 (type 4); it must be int32"),
    (dict(bias_type=2, num_inputs=4, bias_len=3), "MAM_ERR_TENSOR_COUNT", "a bias is given but the node has 4"),
    (dict(bias_type=2, num_inputs=5, bias_len=2), "MAM_ERR_SHAPE", "bias has 2 entries; M = 3"),
    (dict(input_last_dim=301), "MAM_ERR_SHAPE", "input last dimension is 301 but in_features is 300"),
    (dict(input_elements=601), "MAM_ERR_SHAPE", "input holds 601 elements"),
    (dict(output_last_dim=4), "MAM_ERR_SHAPE", "output last dimension is 4"),
    (dict(output_elements=4), "MAM_ERR_SHAPE", "output holds 4 elements; B * M = 1 * 3 = 3"),
    (dict(values_len=5), "MAM_ERR_LENGTH", "values has 5 entries but offsets has 4"),
    (dict(offsets_len=3), "MAM_ERR_LENGTH", "values has 4 entries but offsets has 3"),
    (dict(row_counts=[2, 0, 1]), "MAM_ERR_LENGTH", "row_counts sum to 3 but values has 4"),
    (dict(row_counts=[3, -1, 2]), "MAM_ERR_ROW_COUNT", "row 1 has a negative row count -1"),
    (dict(in_features=299, input_last_dim=299, input_elements=299), "MAM_ERR_COLUMN",
     "row 2 entry 1 decodes column 299 >= in_features 299"),
    (dict(row_counts=[4, 0, 0]), "MAM_ERR_COLUMN", "row 0 entry 2 decodes column 456 >= in_features 300"),
    (dict(offsets=[3, 196, 255, 44]), "MAM_ERR_COLUMN", "decodes column 300 >= in_features 300"),
    (dict(weight_scale_count=2, weight_scales=[1.0, 1.0]), "MAM_ERR_QUANT", "values has 2 scales; it must have 1 (per tensor) or M = 3"),
    (dict(weight_zero_point=1), "MAM_ERR_QUANT", "values zero point is 1"),
    (dict(input_zero_point=128), "MAM_ERR_QUANT", "zero points (input 128, output 0) must lie in -128..127"),
    # byte sizes are checked before a byte is read: a row_counts array shorter than M
    (dict(row_counts=[3, 1]), "MAM_ERR_LENGTH", "row_counts holds 4 bytes; its shape needs 6"),
    (dict(values_bytes=3), "MAM_ERR_LENGTH", "values holds 3 bytes; its shape needs 4"),
    (dict(bias_type=2, num_inputs=5, bias_len=3, bias_bytes=8), "MAM_ERR_LENGTH",
     "bias holds 8 bytes; its shape needs 12"),
    (dict(input_scale=0.0), "MAM_ERR_QUANT", "input and output need a per-tensor quantization scale > 0"),
    (dict(output_scale=float("inf")), "MAM_ERR_QUANT", "need a per-tensor quantization scale > 0"),
    (dict(output_quantized=0), "MAM_ERR_QUANT", "need a per-tensor quantization scale > 0"),
    (dict(weight_scales=[float("nan")]), "MAM_ERR_QUANT", "weight scale 0 is not a finite value > 0"),
    (dict(weight_scale_count=3, weight_scales=[1.0, -2.0, 1.0]), "MAM_ERR_QUANT",
     "weight scale 1 is not a finite value > 0"),
])
def test_validate_layer_statuses_and_messages(override, status, message):
    csr = _golden_csr()
    fields = native.layer_desc(csr)
    fields.update(override)
    code, msg = native.validate_layer(**fields)
    assert native.STATUS[code] == status, msg
    if message:
        assert msg.startswith("MAM_SPARSE: ") and message in msg, msg
        assert "\n" not in msg
    else:
        assert msg == ""


def test_validate_layer_int16_rules():
    csr = _golden_csr()
    ok = native.layer_desc(csr, input_dtype=np.int16, bias_dtype=np.int64)
    assert native.validate_layer(**ok) == (0, "")
    bad = dict(ok, input_zero_point=1)
    code, msg = native.validate_layer(**bad)
    assert native.STATUS[code] == "MAM_ERR_QUANT" and "must lie in 0..0 for int16" in msg
    code, msg = native.validate_layer(**dict(ok, bias_type=2))
    assert native.STATUS[code] == "MAM_ERR_TYPE" and "it must be int64" in msg


@pytest.mark.parametrize("kw, message", [
    (dict(multiplier=[-1], shift=[0]), "multiplier -1 of row 0 is negative"),
    (dict(multiplier=[2**30], shift=[31]), "shift 31 of row 0 is outside -31..30 for int8"),
    (dict(multiplier=[2**30], shift=[-32]), "shift -32 of row 0 is outside"),
    (dict(multiplier=[2**30] * 3, shift=[0, 0, 8], dtype=np.int16), "shift 8 of row 2 is outside -31..7 for int16"),
    (dict(multiplier=[2**30], shift=[0], act_min=5, act_max=4), "activation clamp 5..4 is not inside -128..127"),
    (dict(multiplier=[2**30], shift=[0], act_max=128), "activation clamp -128..128"),
    (dict(multiplier=[2**30], shift=[0], output_zero_point=-129), "zero points (input 0, output -129)"),
    (dict(multiplier=[2**30], shift=[0], input_zero_point=3, dtype=np.int16), "must lie in 0..0 for int16"),
])
def test_validate_requant_messages(kw, message):
    code, msg = native.validate_requant(3, **kw)
    assert native.STATUS[code] in ("MAM_ERR_QUANT",), msg
    assert message in msg, msg
    assert native.validate_requant(3, [2**30], [0]) == (0, "")


def test_core_calls_refuse_corrupted_layouts_instead_of_reading_out_of_bounds():
    csr = _golden_csr()
    x = np.zeros((2, 300), np.int8)
    cases = [
        (OffsetCSR(csr.values, csr.offsets, [4, 0, 0], csr.shape), "decodes column 456"),
        (OffsetCSR(csr.values, csr.offsets, [2, 0, 3], csr.shape), "row_counts sum to 5 but values has 4"),
        (OffsetCSR(csr.values[:3], csr.offsets, csr.row_counts, csr.shape), "values has 3 entries but offsets has 4"),
        (OffsetCSR(csr.values, csr.offsets, [2, -2, 4], csr.shape), "row 1 has a negative row count -2"),
    ]
    for bad, message in cases:
        for fn in (native.mam_sparse, native.mac_sparse):
            with pytest.raises(ValueError, match=message):
                fn(x, bad, None, [2**30], [0])
    with pytest.raises(ValueError, match="input last dimension is 299 but in_features is 300"):
        native.mam_sparse(np.zeros((1, 299), np.int8), csr, None, [2**30], [0])
    with pytest.raises(ValueError, match="bias tensor is int64"):
        native.mam_sparse(x, csr, np.zeros(3, np.int64), [2**30], [0])
    with pytest.raises(ValueError, match="bias has 2 entries; M = 3"):
        native.mam_sparse(x, csr, np.zeros(2, np.int32), [2**30], [0])
    with pytest.raises(ValueError, match="shift 40 of row 0"):
        native.mam_sparse(x, csr, None, [2**30], [40])
    with pytest.raises(ValueError, match="length 1 or M = 3"):
        native.mam_sparse(x, csr, None, [2**30] * 2, [0] * 2)
    with pytest.raises(ValueError, match="input dtype is float32"):
        native.mam_sparse(x.astype(np.float32), csr, None, [2**30], [0])


def test_library_location_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("MAM_TF_CORE_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(native.CoreBuildError, match="MAM_TF_CORE_LIB is .*missing.so"):
        native.library_path()
    monkeypatch.delenv("MAM_TF_CORE_LIB")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(native.CoreBuildError, match="cmake is not on PATH"):
        native.build_library(dest_dir=tmp_path / "b")
    with pytest.raises(native.CoreBuildError, match="sources are not at"):
        native.build_library(src=tmp_path, dest_dir=tmp_path / "b")


def test_library_is_cached_by_source_hash(monkeypatch):
    monkeypatch.delenv("MAM_TF_CORE_LIB", raising=False)
    path = native.library_path()
    assert path.name == "libmam_sparse_core.so" and path.is_file()
    assert path.parent.name == f"core-{native._build_key(native._SOURCE_DIR)}"


@pytest.mark.parametrize("per_row", [False, True])
def test_prepare_layer_forms_the_requantization_as_the_reference(per_row):
    """mam_prepare_requant (what the glue's Prepare and the host runtime call) against the
    numpy reference's effective scale, QuantizeMultiplier and activation range."""
    csr = _golden_csr()
    scales = np.array([0.011, 0.0042, 0.0193], np.float32)[: 3 if per_row else 1]
    fields = native.layer_desc(csr, input_scale=0.07, output_scale=0.05, weight_scales=scales,
                             activation=1, output_zero_point=-9)
    got = native.prepare_layer(**fields)
    mult, shift = reference.quantize_multipliers(reference.effective_scale(0.07, scales, 0.05))
    np.testing.assert_array_equal(got["multiplier"], mult)
    np.testing.assert_array_equal(got["shift"], shift)
    assert (got["act_min"], got["act_max"]) == reference.activation_range(1, 0.05, -9, np.int8)
    with pytest.raises(ValueError, match="weight scale 0 is not a finite value > 0"):
        native.prepare_layer(**dict(fields, weight_scales=np.zeros_like(scales)))


def test_layer_description_fields_that_do_not_fit_c_are_refused():
    fields = native.layer_desc(_golden_csr())
    with pytest.raises(ValueError, match="in_features is 4294967296; it must lie in"):
        native.validate_layer(**dict(fields, in_features=2**32))
    with pytest.raises(ValueError, match="offsets holds 0..256; it must fit uint8"):
        native.validate_layer(**dict(fields, offsets=np.array([3, 256, 1, 0])))
    with pytest.raises(ValueError, match="weight_scale_count is 3 but 1 weight scales are given"):
        native.validate_layer(**dict(fields, weight_scale_count=3))
