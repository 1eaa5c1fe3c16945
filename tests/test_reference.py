"""Hand-worked TFLite semantics, checked on the numpy reference AND the C core.

Every expected value here is worked out by hand in the comments from TFLite's definitions
(QuantizeMultiplier, gemmlowp's SaturatingRoundingDoublingHighMul / RoundingDivideByPOT,
TFLM's 64-bit MultiplyByQuantizedMultiplier, CalculateActivationRangeQuantized), never
taken from the code under test.
"""
import math

import numpy as np
import pytest

from mam_tf.deploy import native
from mam_tf.deploy import reference
from mam_tf.deploy.offset_csr import encode

IMPLS = [pytest.param(reference, id="reference"), pytest.param(native, id="native")]
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


# --- QuantizeMultiplier ----------------------------------------------------------------
@pytest.mark.parametrize("real, want", [
    (0.0, (0, 0)),
    (0.5, (2**30, 0)),                        # frexp = 0.5 * 2^0
    (1.0, (2**30, 1)),                        # 0.5 * 2^1
    (0.75, (1610612736, 0)),                  # 0.75 * 2^31
    (0.1, (1717986918, -3)),                  # 0.8 * 2^-3; 0.8 * 2^31 = 1717986918.4 -> down
    (0.5 + 2.0**-32, (2**30 + 1, 0)),         # q * 2^31 = 2^30 + 0.5 -> away from zero
    (0.5 + 5 * 2.0**-32, (2**30 + 3, 0)),     # 2^30 + 2.5 -> 2^30 + 3 (half-to-even: + 2)
    (1 - 2.0**-40, (2**30, 1)),               # rounds to 2^31: the carry halves it, shift + 1
    (2.0**-32, (2**30, -31)),                 # the smallest shift kept
    (2.0**-33, (0, 0)),                       # shift -32 < -31: flushed to zero
    (3.0 * 2.0**20, (1610612736, 22)),        # 0.75 * 2^22
])
@pytest.mark.parametrize("impl", IMPLS)
def test_quantize_multiplier_hand_values(impl, real, want):
    assert impl.quantize_multiplier(real) == want


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan])
@pytest.mark.parametrize("impl", IMPLS)
def test_quantize_multiplier_refuses_negative_and_non_finite(impl, bad):
    with pytest.raises(ValueError, match="real multiplier"):
        impl.quantize_multiplier(bad)


# --- gemmlowp fixed point ----------------------------------------------------------------
@pytest.mark.parametrize("a, b, want", [
    (I32_MIN, I32_MIN, I32_MAX),   # the one overflow: saturates
    (2**30, 2**30, 2**29),         # 0.5 * 0.5 = 0.25 exactly
    (1, 2**30, 1),                 # 0.5 -> 1 (nudge +2^30)
    (3, 2**30, 2),                 # 1.5 -> 2
    (-1, 2**30, 0),                # -0.5 -> 0: nudge 1-2^30, truncating division
    (-3, 2**30, -1),               # -1.5 -> -1
    (I32_MIN, 2**30, -(2**30)),    # -2^61 / 2^31
    (I32_MAX, I32_MAX, 2147483646),  # (2^31-1)^2/2^31 = 2^31 - 2 + 2^-31 -> 2^31 - 2
    (0, I32_MIN, 0),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_saturating_rounding_doubling_high_mul(impl, a, b, want):
    assert int(impl.saturating_rounding_doubling_high_mul(a, b)) == want


@pytest.mark.parametrize("x, e, want", [
    (5, 1, 3), (-5, 1, -3),        # 2.5 -> 3, -2.5 -> -3: ties away from zero
    (7, 2, 2), (-7, 2, -2),        # 1.75, -1.75
    (6, 2, 2), (-6, 2, -2),        # 1.5, -1.5
    (5, 2, 1), (-5, 2, -1),        # 1.25, -1.25
    (12345, 0, 12345), (-1, 0, -1),
    (2**30, 31, 1), (-(2**30), 31, -1),   # +-0.5 -> +-1
    (I32_MIN, 31, -1), (I32_MAX, 31, 1),
    (-1, 31, 0), (1, 31, 0),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_rounding_divide_by_pot(impl, x, e, want):
    assert int(impl.rounding_divide_by_pot(x, e)) == want


@pytest.mark.parametrize("x, m, s, want", [
    (100, 2**30, 0, 50),           # 100 * 0.5
    (101, 2**30, 0, 51),           # 50.5 -> 51
    (-101, 2**30, 0, -50),         # -50.5 -> -50 (the high mul rounds ties up)
    (101, 2**30, -1, 26),          # 101/4 = 25.25, but double rounding: 50.5 -> 51 -> 25.5 -> 26
    (-22, 2**30, -1, -6),          # -11 -> -5.5 -> -6
    (3, 2**30, 2, 6),              # 3 * 4 * 0.5
    (7, 2**30, 1, 7),              # 2^30 with shift 1 is exactly 1.0
    (2**29, 2**30, 2, -(2**30)),   # 2^29 * 4 wraps to INT32_MIN (two's complement), * 0.5
    (12345, 0, 0, 0),
    (I32_MIN, 2**30, 1, 0),        # INT32_MIN * 2 wraps to 0
])
@pytest.mark.parametrize("impl", IMPLS)
def test_multiply_by_quantized_multiplier_32(impl, x, m, s, want):
    assert int(impl.multiply_by_quantized_multiplier(x, m, s)) == want


@pytest.mark.parametrize("x, m, s, want", [
    # reduced multiplier of 2^30 is (2^30 + 2^15) >> 16 = 2^14; result (x*2^14 + 2^(14-s)) >> (15-s)
    (101, 2**30, 0, 51),           # 50.5 -> 51
    (-101, 2**30, 0, -50),         # -50.5 -> -50 (floor of x + 0.5)
    (101, 2**30, -1, 25),          # 25.25 -> 25: ONE rounding, unlike the 32-bit path's 26
    (2005, 2**30, -1, 501),        # 501.25
    (-6504, 2**30, -1, -1626),     # exact
    (-5503, 2**30, -1, -1376),     # -1375.75
    (1000, 1610612736, -2, 188),   # reduced 0x6000 = 0.75; 187.5 -> 188
    (7, 2**30, 1, 7),              # exactly 1.0
    (1000, 0x7FFF0000, 0, 1000),   # reduced saturates to 0x7FFF: (1000*32767 + 2^14) >> 15 = 999.97 -> 1000
    (40000, 0x7FFFFFFF, 0, 39999),  # 0x7FFF: 40000 * 32767/32768 = 39998.78 -> 39999
    (2**40, 2**30, 7, 0),          # 2^46 truncated to int32 is 0
    (-(2**20), 1, -31, 0),         # reduced (1 + 2^15) >> 16 = 0
])
@pytest.mark.parametrize("impl", IMPLS)
def test_multiply_by_quantized_multiplier_64(impl, x, m, s, want):
    assert int(impl.multiply_by_quantized_multiplier_64(x, m, s)) == want


# --- activation ranges ---------------------------------------------------------------------
@pytest.mark.parametrize("act, scale, zp, dtype, want", [
    (0, 0.0625, -10, np.int8, (-128, 127)),
    (1, 0.0625, -10, np.int8, (-10, 127)),       # q(0) = zp
    (3, 0.0625, -10, np.int8, (-10, 86)),        # q(6) = -10 + 96
    (2, 0.0625, -10, np.int8, (-26, 6)),         # q(-1) = -10 - 16, q(1) = -10 + 16
    (3, 0.01, 0, np.int8, (0, 127)),             # 6 / 0.01 = 600: clamped to qmax
    (1, 0.0625, -200, np.int16, (-200, 32767)),
    (3, 12.0, 0, np.int8, (0, 1)),               # 6 / 12 = 0.5 -> 1 (ties away from zero)
    (2, 2.0, 0, np.int8, (-1, 1)),               # -0.5 -> -1, 0.5 -> 1
    (2, 2.0, 3, np.int16, (2, 4)),
    (3, 2.0**-12, 0, np.int16, (0, 24576)),      # 6 * 4096
    (1, 0.1, 127, np.int8, (127, 127)),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_activation_range(impl, act, scale, zp, dtype, want):
    assert impl.activation_range(act, scale, zp, dtype) == want


@pytest.mark.parametrize("impl", IMPLS)
def test_activation_range_refuses_unknown_activation(impl):
    with pytest.raises(ValueError, match="4"):
        impl.activation_range(4, 0.1, 0, np.int8)


# --- effective scale: TFLM's float32 product for per-tensor ---------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_effective_scale_follows_tflm_fully_connected(impl):
    # float32(0.1) = 0.100000001490116...; its square in double is 0.010000000298023226.
    # float32 neighbours: 0.009999999776482582 and 0.010000000707805157, midpoint
    # 0.01000000024214387: the double product is above it, so the float32 product is the
    # upper neighbour. TFLM's per-tensor path (GetQuantizedConvolutionMultipler) uses the
    # float32 product; its per-channel path the double one.
    per_tensor = impl.effective_scale(0.1, [0.1], 1.0)
    per_row = impl.effective_scale(0.1, [0.1, 0.1], 1.0)
    assert per_tensor.tolist() == [0.010000000707805157]
    assert per_row.tolist() == [0.010000000298023226] * 2


# --- a 2x3 layer by hand -------------------------------------------------------------------
# W = [[2, 0, 3],     row 0 has a pruned weight: its product 0 takes part in max/min
#      [1, 4, 5]]     row 1 is full
# requantization 2^30 with shift -1 (0.25), bias [5, -4]
GOLDEN_W = np.array([[2, 0, 3], [1, 4, 5]], np.int8)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparse", [True, False])
def test_golden_2x3_int8(impl, sparse):
    x = np.array([10, -7, 4], np.int8)
    # zx = 2 -> x - zx = [8, -9, 2]
    # row 0 products {16, 0, 6}:  MAM 16 + 0 = 16, MAC 22;  + bias 5  -> 21, 27
    # row 1 products {8, -36, 10}: MAM 10 - 36 = -26, MAC -18; + bias -4 -> -30, -22
    # 32-bit double rounding by 2^30 (0.5, ties up) then RDBPOT 1 (ties away), + zy = -3:
    #   21 -> 10.5 -> 11 -> 5.5 -> 6 -> 3        27 -> 13.5 -> 14 -> 7 -> 4
    #  -30 -> -15 -> -7.5 -> -8 -> -11          -22 -> -11 -> -5.5 -> -6 -> -9
    w = encode(GOLDEN_W) if sparse else GOLDEN_W
    mam = impl.mam_sparse if sparse else impl.mam_dense
    mac = impl.mac_sparse if sparse else impl.mac_dense
    kw = dict(input_zero_point=2, output_zero_point=-3)
    bias = np.array([5, -4], np.int32)
    assert mam(x, w, bias, [2**30], [-1], **kw).tolist() == [3, -11]
    assert mac(x, w, bias, [2**30], [-1], **kw).tolist() == [4, -9]
    # with a clamp at zy (a RELU)
    assert mam(x, w, bias, [2**30], [-1], act_min=-3, **kw).tolist() == [3, -3]
    # without bias: MAM acc [16, -26] -> 8 -> 4 -> 1 ; -13 -> -6.5 -> -7 -> -10
    assert mam(x, w, None, [2**30], [-1], **kw).tolist() == [1, -10]
    # per-row: row 0 by exactly 1.0 (2^30, shift 1), row 1 by 0.25
    assert mam(x, w, bias, [2**30, 2**30], [1, -1], **kw).tolist() == [21 - 3, -11]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparse", [True, False])
def test_golden_2x3_int16(impl, sparse):
    x = np.array([1000, -2000, 300], np.int16)
    # row 0 products {2000, 0, 900}: MAM 2000, MAC 2900; + 5
    # row 1 products {1000, -8000, 1500}: MAM -6500, MAC -5500; - 4
    # 64-bit requantization by 0.25 (one rounding, floor(v/4 + 0.5)):
    #   2005 -> 501.25 -> 501    2905 -> 726.25 -> 726
    #  -6504 -> -1626            -5504 -> -1376
    w = encode(GOLDEN_W) if sparse else GOLDEN_W
    mam = impl.mam_sparse if sparse else impl.mam_dense
    mac = impl.mac_sparse if sparse else impl.mac_dense
    bias = np.array([5, -4], np.int64)
    assert mam(x, w, bias, [2**30], [-1]).tolist() == [501, -1626]
    assert mac(x, w, bias, [2**30], [-1]).tolist() == [726, -1376]
    assert mam(x, w, bias, [2**30], [-1], act_min=0, act_max=600).tolist() == [501, 0]


@pytest.mark.parametrize("impl", IMPLS)
def test_implicit_zero_and_all_negative_rows(impl):
    # requantization by exactly 1.0 (2^30, shift 1) shows the accumulator itself
    w = np.array([[-1, 0, -2],     # pruned: products {-5, 0, -6} -> max 0, min -6
                  [-1, -1, -2],    # full:   products {-5, -9, -6} -> -5 + -9
                  [0, 0, 0]],      # empty:  {0} -> 0 + 0
                 np.int8)
    x = np.array([5, 9, 3], np.int8)
    csr = encode(w)
    assert impl.mam_sparse(x, csr, None, [2**30], [1]).tolist() == [-6, -14, 0]
    assert impl.mam_dense(x, w, None, [2**30], [1]).tolist() == [-6, -14, 0]
    assert impl.mac_sparse(x, csr, None, [2**30], [1]).tolist() == [-11, -20, 0]
    xi16 = np.array([5, 9, 3], np.int16)
    assert impl.mam_sparse(xi16, csr, np.array([1, 2, 3], np.int64), [2**30], [1]).tolist() == [-5, -12, 3]


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_and_dummy_entries(impl):
    # equal products everywhere: max = min = 12 per row; a dummy entry (value 0) sits on a
    # zero column and adds the product 0 that the pruned columns already imply
    w = np.zeros((1, 600), np.int8)
    w[0, [0, 300, 400]] = 3  # gap 299 needs one dummy, gap 99 none
    x = np.full(600, 4, np.int8)
    csr = encode(w)
    assert csr.num_dummies == 1
    # S = {12, 0, 12, 12} -> 12 + 0
    assert impl.mam_sparse(x, csr, None, [2**30], [1]).tolist() == [12]
    w_full = np.full((1, 4), -3, np.int8)
    assert impl.mam_sparse(np.full(4, 4, np.int8), encode(w_full), None, [2**30], [1]).tolist() == [-24]


# --- quantizing a float layer ---------------------------------------------------------------
def test_quantize_layer_by_hand():
    # Keras kernel [N=2, M=2]: column j is output j
    kernel = np.array([[0.5, 0.0], [-1.27, 0.0]])
    q = reference.quantize_layer(
        kernel, np.array([0.3, 0.0]), input_scale=0.1, input_zero_point=-5,
        output_scale=0.05, output_zero_point=3, activation=1, per_row=True, name="mam_1")
    # row 0: scale 1.27/127 = 0.01 -> [50, -127]; row 1 all zero: scale 1.0 stands in
    assert q.weights.tolist() == [[50, -127], [0, 0]]
    assert q.weight_scales.dtype == np.float32
    np.testing.assert_array_equal(q.weight_scales, np.float32([1.27 / 127, 1.0]))
    # bias 0.3 at float32(0.1 * 0.01) ~ 0.001 -> 300; 0 -> 0
    assert q.bias.tolist() == [300, 0] and q.bias.dtype == np.int32
    # multipliers: 0.1 * 0.01 / 0.05 = 0.02 = 0.64 * 2^-5 -> shift -5
    assert q.shift.tolist()[0] == -5
    assert abs(q.multiplier[0] / 2**31 * 2.0**-5 - 0.02) < 1e-9
    assert (q.act_min, q.act_max) == (3, 127)  # RELU: q(0) = zy
    assert q.csr().shape == (2, 2)


def test_quantize_layer_per_tensor_and_int16():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(20, 6))
    bias = rng.normal(size=6)
    q = reference.quantize_layer(kernel, bias, input_scale=0.01, input_zero_point=0,
                                 output_scale=0.02, output_zero_point=0, dtype="int16",
                                 per_row=False)
    assert q.weight_scales.shape == (1,) and q.multiplier.shape == (1,)
    assert q.bias.dtype == np.int64 and np.abs(q.weights).max() == 127
    with pytest.raises(ValueError, match=r"layer 'x': int16 activations need zero points 0"):
        reference.quantize_layer(kernel, bias, input_scale=0.01, input_zero_point=1,
                                 output_scale=0.02, output_zero_point=0, dtype="int16", name="x")
    with pytest.raises(ValueError, match=r"layer 'y': real multiplier .* needs shift 40 > 30"):
        reference.quantize_layer(kernel, None, input_scale=1.0, input_zero_point=0,
                                 output_scale=1e-12, output_zero_point=0, name="y",
                                 weight_scales=[1.0])


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_quantized_mac_layer_tracks_the_float_layer(dtype):
    # MAC of the quantized layer against the float layer, within the error budget of the
    # quantization steps: weights (s_w/2 per product), inputs (s_in/2), their product, the
    # bias (s_b/2), two roundings of the output (double rounding), and in int16 mode the
    # multiplier reduced to 16 bits (relative error <= 2^-15).
    rng = np.random.default_rng(5)
    n, m = 64, 16
    kernel = rng.normal(size=(n, m)) * 0.2
    bias = rng.normal(size=m) * 0.1
    x = rng.uniform(-0.9, 0.9, size=(8, n))
    y = x @ kernel + bias
    levels = 255 if dtype == "int8" else 65535
    zp = 5 if dtype == "int8" else 0
    in_scale = 2.0 / levels
    out_scale = float(np.abs(y).max() * 2.2 / levels)
    q = reference.quantize_layer(kernel, bias, input_scale=in_scale, input_zero_point=zp,
                                 output_scale=out_scale, output_zero_point=-zp, dtype=dtype)
    xq = q.quantize_input(x)
    got = q.dequantize_output(reference.mac_sparse(xq, q.csr(), **q.kernel_kwargs()))
    s_w = np.broadcast_to(q.weight_scales.astype(np.float64), (m,))
    bound = (
        (np.abs(x) + in_scale / 2) @ np.ones((n, 1)) * s_w[None, :] / 2
        + np.abs(kernel).sum(axis=0)[None, :] * in_scale / 2
        + in_scale * s_w[None, :] / 2
        + out_scale
        + np.abs(y) * 2.0**-15
    )
    assert (np.abs(got - y) <= bound).all()
    assert np.abs(got - y).max() > 0  # it is a quantized layer, not the float one


def test_reference_argument_errors_name_the_value():
    csr = encode(GOLDEN_W)
    x = np.array([1, 2, 3], np.int8)
    with pytest.raises(ValueError, match=r"bias must be int32 \[2\], got int64"):
        reference.mam_sparse(x, csr, np.array([1, 2], np.int64), [2**30], [0])
    with pytest.raises(ValueError, match=r"shifts must be in -31..30 for int8, got 31..31"):
        reference.mam_sparse(x, csr, None, [2**30], [31])
    with pytest.raises(ValueError, match=r"shifts must be in -31..7 for int16"):
        reference.mam_sparse(x.astype(np.int16), csr, None, [2**30], [8])
    with pytest.raises(ValueError, match=r"last dimension must be N = 3"):
        reference.mam_sparse(np.zeros(4, np.int8), csr, None, [2**30], [0])
    with pytest.raises(ValueError, match=r"int16 mode needs zero points 0, got input 1"):
        reference.mam_sparse(x.astype(np.int16), csr, None, [2**30], [0], input_zero_point=1)
    with pytest.raises(ValueError, match=r"length 1 or M = 2"):
        reference.mam_sparse(x, csr, None, [2**30] * 3, [0] * 3)
    with pytest.raises(ValueError, match=r"activations must be int8 or int16, got float32"):
        reference.mam_sparse(x.astype(np.float32), csr, None, [2**30], [0])
