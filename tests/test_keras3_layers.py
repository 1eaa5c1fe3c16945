"""mam_tf.keras3.MAMDense on the Keras backend of this process (KERAS_BACKEND), against the
numpy statement tests/npref.py. tests/test_keras3_backends.py runs this file under each of
tensorflow, jax and torch.

Where float sums are exact (small integer data) outputs and gradients must equal npref bit
for bit. On random data the forward (a max and a min of rounded products, one add) is exact
too; a gradient entry sums K routed terms in float32 in some order (K = 2 x batch for dw,
2 x units for dx), so it may differ from npref's float64 sum by at most
(K + 1) * 2**-24 * (the same sum of absolute terms), the recursive-summation bound.
"""
import inspect

import keras
import numpy as np
import pytest
from keras import ops

import npref
from keras3_backend import BACKEND, jit, keras_backend, vjp  # noqa: F401  (backend in ids)
from mam_tf.keras3 import MAMDense
from mam_tf.keras3 import mam_op

U = 2.0 ** -24


def _np(t):
    return ops.convert_to_numpy(t)


def _routed_bound(g, x, w, amax, amin):
    """Per-entry bound on |float32 routed gradient - npref| (see the module docstring)."""
    b, m = g.shape
    sx, sw = npref.mam_backward(np.abs(g), np.abs(x).astype(np.float64),
                                np.abs(w).astype(np.float64), amax, amin)
    return (2 * m + 1) * U * sx, (2 * b + 1) * U * sw


@pytest.fixture
def rng():
    return np.random.default_rng(23)


def _int_data(rng, b, n, m, lo=-3, hi=4):
    """Small integers: every product and every gradient sum is exact in float32; many ties."""
    x = rng.integers(lo, hi, size=(b, n)).astype(np.float32)
    w = rng.integers(lo, hi, size=(n, m)).astype(np.float32)
    g = rng.integers(lo, hi, size=(b, m)).astype(np.float32)
    return x, w, g


@pytest.mark.parametrize("b,n,m", [(1, 1, 1), (7, 13, 5), (16, 300, 9)])
def test_op_equals_npref_bit_for_bit_on_exact_data(rng, b, n, m):
    x, w, g = _int_data(rng, b, n, m)
    y, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
    ry, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(dx, rdx.astype(np.float32))
    np.testing.assert_array_equal(dw, rdw.astype(np.float32))


def test_op_indices_follow_the_tie_rule(rng):
    # All-equal products: amax == amin == 0 everywhere, and that pair takes g twice.
    x = np.ones((3, 6), np.float32)
    w = np.full((6, 2), 2.0, np.float32)
    y, amax, amin = (_np(t) for t in mam_op.forward(ops.convert_to_tensor(x),
                                                    ops.convert_to_tensor(w)))
    np.testing.assert_array_equal(y, np.full((3, 2), 4.0, np.float32))
    np.testing.assert_array_equal(amax, np.zeros((3, 2)))
    np.testing.assert_array_equal(amin, np.zeros((3, 2)))
    g = np.ones((3, 2), np.float32)
    _, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
    expect_dw = np.zeros((6, 2), np.float32)
    expect_dw[0] = 2 * 3 * 1.0  # 3 rows, max and min term, x = 1
    np.testing.assert_array_equal(dw, expect_dw)
    expect_dx = np.zeros((3, 6), np.float32)
    expect_dx[:, 0] = 2 * 2 * 2.0  # 2 units, max and min term, w = 2
    np.testing.assert_array_equal(dx, expect_dx)


@pytest.mark.parametrize("b,n,m", [(32, 200, 17), (5, 1000, 3)])
def test_op_on_random_data_forward_exact_gradients_within_the_summation_bound(rng, b, n, m):
    x = rng.standard_normal((b, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    g = rng.standard_normal((b, m)).astype(np.float32)
    y, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
    ry, amax, amin = npref.mam_forward(x, w)
    np.testing.assert_array_equal(y, ry)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    bx, bw = _routed_bound(g, x, w, amax, amin)
    assert np.all(np.abs(dx - rdx) <= bx), np.max(np.abs(dx - rdx) - bx)
    assert np.all(np.abs(dw - rdw) <= bw), np.max(np.abs(dw - rdw) - bw)


def test_chunked_forward_equals_npref_at_every_chunk_size(rng):
    if BACKEND == "tensorflow":
        from mam_tf.train.mam_op import mam_forward_reference as fwd

        def forward(x, w, c):
            return fwd(x, w, chunk_columns=c)
    else:
        forward = mam_op.backend_module().forward
    x, w, _ = _int_data(rng, 6, 23, 4, lo=-2, hi=3)  # ties across chunk borders
    ry, amax, amin = npref.mam_forward(x, w)
    for c in (1, 2, 5, 7, 22, 23):
        y, ga, gi = (_np(t) for t in forward(ops.convert_to_tensor(x), ops.convert_to_tensor(w), c))
        np.testing.assert_array_equal(y, ry, err_msg=f"chunk {c}")
        np.testing.assert_array_equal(ga, amax, err_msg=f"chunk {c}")
        np.testing.assert_array_equal(gi, amin, err_msg=f"chunk {c}")


def test_compiled_op_gives_the_same_bits(rng):
    x, w, g = _int_data(rng, 8, 40, 6)
    y, (dx, dw) = vjp(jit(mam_op.mam_reduce), [x, w], g)
    ry, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(dx, rdx.astype(np.float32))
    np.testing.assert_array_equal(dw, rdw.astype(np.float32))


def _built(layer, n_in, shape=None):
    model = keras.Sequential([keras.Input(shape or (n_in,)), layer])
    return model


def _layer_fn(layer):
    """(x, kernel, bias) -> layer output, through stateless_call (gradients w.r.t. weights)."""
    def fn(x, kernel, bias):
        out, _ = layer.stateless_call([kernel, bias], [ops.convert_to_tensor(v) for v in
                                                        layer.non_trainable_variables], x)
        return out
    return fn


def test_layer_pure_mam_equals_npref_with_bias_and_gradients(rng):
    layer = MAMDense(6)
    _built(layer, 30)
    x, w, g = _int_data(rng, 9, 30, 6)
    bias = rng.integers(-3, 4, size=6).astype(np.float32)
    y, (dx, dw, db) = vjp(_layer_fn(layer), [x, w, bias], g)
    np.testing.assert_array_equal(y, npref.mam_dense(x, w, bias))
    _, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    np.testing.assert_array_equal(dx, rdx.astype(np.float32))
    np.testing.assert_array_equal(dw, rdw.astype(np.float32))
    np.testing.assert_array_equal(db, g.sum(axis=0))


def test_layer_beta_blend_within_the_stated_bound(rng):
    """beta * (x @ W) + (1 - beta) * MAM: the matmul sums N products (bound N u |x||W|),
    the blend rounds three more times (3 u each term)."""
    beta, b, n, m = 0.375, 12, 50, 7
    layer = MAMDense(m, beta=beta, use_bias=False)
    _built(layer, n)
    x = rng.standard_normal((b, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    g = rng.standard_normal((b, m)).astype(np.float32)

    def fn(x, kernel):
        out, _ = layer.stateless_call([kernel], [ops.convert_to_tensor(layer.beta)], x)
        return out

    y, (dx, dw) = vjp(fn, [x, w], g)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    ry, amax, amin = npref.mam_forward(x, w)
    ref = beta * (x64 @ w64) + (1 - beta) * ry
    a = np.abs(x64) @ np.abs(w64)
    bound = beta * (n + 3) * U * a + (1 - beta) * 3 * U * np.abs(ry)
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) - bound)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    bx, bw = _routed_bound(g, x, w, amax, amin)
    ref_dx = (1 - beta) * rdx + beta * (g64 @ w64.T)
    ref_dw = (1 - beta) * rdw + beta * (x64.T @ g64)
    bound_dx = (1 - beta) * (bx + 3 * U * np.abs(rdx)) + beta * (m + 3) * U * (np.abs(g64) @ np.abs(w64).T)
    bound_dw = (1 - beta) * (bw + 3 * U * np.abs(rdw)) + beta * (b + 3) * U * (np.abs(x64).T @ np.abs(g64))
    assert np.all(np.abs(dx - ref_dx) <= bound_dx), np.max(np.abs(dx - ref_dx) - bound_dx)
    assert np.all(np.abs(dw - ref_dw) <= bound_dw), np.max(np.abs(dw - ref_dw) - bound_dw)


def test_beta_one_is_dense(rng):
    x = rng.standard_normal((10, 8)).astype(np.float32)
    mam = MAMDense(4, activation="relu", beta=1.0)
    dense = keras.layers.Dense(4, activation="relu")
    _built(mam, 8), _built(dense, 8)
    dense.set_weights([mam.get_weights()[0], mam.get_weights()[1]])
    np.testing.assert_allclose(_np(mam(x)), _np(dense(x)), rtol=0, atol=1e-6)


def test_token_inputs_reduce_the_last_axis(rng):
    layer = MAMDense(5)
    model = _built(layer, None, shape=(4, 11))
    x = rng.standard_normal((3, 4, 11)).astype(np.float32)
    w = _np(layer.kernel)
    y = _np(model(x))
    assert y.shape == (3, 4, 5)
    np.testing.assert_array_equal(y.reshape(12, 5), npref.mam_dense(x.reshape(12, 11), w))


def test_fit_evaluate_predict_and_keras_file_keep_beta_and_weights(rng, tmp_path):
    x = rng.standard_normal((64, 12)).astype(np.float32)
    y = (x[:, :3] ** 2).astype(np.float32)
    inp = keras.Input((12,))
    out = MAMDense(3, name="mam")(MAMDense(16, activation="relu", beta=0.5, name="hidden")(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before, (before, after)
    pred = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("hidden").get_beta() == 0.5
    assert isinstance(loaded.get_layer("hidden"), MAMDense)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pred)
    h = loaded.get_layer("hidden")
    w, b = _np(h.kernel), _np(h.bias)
    blend = 0.5 * (x @ w) + 0.5 * npref.mam_forward(x, w)[0] + b
    np.testing.assert_allclose(_np(keras.Model(loaded.input, h.output)(x)),
                               np.maximum(blend, 0), rtol=0, atol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras does not jit_compile on torch")
def test_fit_with_jit_compile_gives_npref_outputs(rng):
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = rng.standard_normal((32, 4)).astype(np.float32)
    layer = MAMDense(4)
    model = _built(layer, 10)
    model.compile(keras.optimizers.SGD(1e-2), "mse", jit_compile=True)
    hist = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    w, b = _np(layer.kernel), _np(layer.bias)
    np.testing.assert_array_equal(model.predict(x, verbose=0, batch_size=32),
                                  npref.mam_dense(x, w, b))


def test_set_beta_validates_and_reaches_the_computation(rng):
    layer = MAMDense(3)
    _built(layer, 5)
    with pytest.raises(ValueError, match=r"MAMDense 'mam_dense.*': beta must be in \[0, 1\], got 1.5"):
        layer.set_beta(1.5)
    layer.set_beta(1.0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(_np(layer(x)), x @ _np(layer.kernel), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"units": 0}, "units must be a positive integer, got 0"),
    ({"units": 2.5}, "units must be a positive integer, got 2.5"),
    ({"units": 2, "beta": -0.1}, r"beta must be in \[0, 1\], got -0.1"),
    ({"units": 2, "lora_rank": 4}, "lora_rank is not supported, got 4"),
])
def test_bad_arguments_name_the_thing_and_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAMDense(**kwargs)


def test_bad_inputs_name_the_layer_and_the_value():
    layer = MAMDense(2, name="m")
    with pytest.raises(ValueError, match=r"MAMDense 'm': needs inputs of rank >= 2"):
        layer.build((5,))
    layer2 = MAMDense(2, name="k")
    with pytest.raises(ValueError, match=r"MAMDense 'k': inputs must be floating point, got dtype int32"):
        layer2(np.ones((2, 3), np.int32))


def test_accepts_dense_arguments_with_dense_defaults():
    dense = inspect.signature(keras.layers.Dense.__init__).parameters
    mam = inspect.signature(MAMDense.__init__).parameters
    for name, param in dense.items():
        if name in ("lora_rank", "lora_alpha", "quantization_config"):
            continue  # Dense-only features MAMDense refuses (through **kwargs)
        assert name in mam, f"MAMDense lacks Dense's argument {name!r}"
        assert mam[name].default == param.default, name
    assert mam["beta"].default == 0.0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused kernel is TensorFlow's")
def test_tensorflow_backend_runs_the_fused_kernel(rng, monkeypatch):
    from mam_tf.train import fused
    if not fused.available():
        pytest.skip(f"fused kernel unavailable: {fused.unavailable_reason()}")
    calls = []
    real_forward, real_backward = fused.forward, fused.backward
    monkeypatch.setattr(fused, "forward", lambda *a: calls.append("f") or real_forward(*a))
    monkeypatch.setattr(fused, "backward", lambda *a: calls.append("b") or real_backward(*a))
    x, w, g = _int_data(rng, 4, 9, 3)
    vjp(mam_op.mam_reduce, [x, w], g)
    assert calls == ["f", "b"]


def _largest_tensor_built(fn, x, w, g):
    """The most elements any one intermediate of the forward + backward holds."""
    if BACKEND == "jax":
        import jax

        def step(x, w, g):
            y, pull = jax.vjp(mam_op.mam_reduce, x, w)
            return y, pull(g)

        sizes = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars)
                for sub in jax.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jax.make_jaxpr(step)(x, w, g).jaxpr)
        return max(sizes)
    if BACKEND == "torch":
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        class Record(TorchDispatchMode):
            largest = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        Record.largest = max(Record.largest, t.numel())
                return out

        with Record():
            vjp(mam_op.mam_reduce, [x, w], g)
        return Record.largest
    raise AssertionError(BACKEND)


@pytest.mark.skipif(BACKEND == "tensorflow",
                    reason="TensorFlow's paths are covered by tests/test_memory.py")
@pytest.mark.parametrize("path", ["fused", "chunked"])
def test_op_never_builds_the_batch_inputs_units_product(rng, monkeypatch, path):
    from mam_tf.keras3 import _chunks
    if path == "chunked":
        monkeypatch.setenv("MAM_TF_FUSED", "0")
    b, n, m = 8, 512, 16
    monkeypatch.setattr(_chunks, "CHUNK_PRODUCTS", 1024)  # 8 columns a chunk
    x = rng.standard_normal((b, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    g = rng.standard_normal((b, m)).astype(np.float32)
    largest = _largest_tensor_built(mam_op.mam_reduce, x, w, g)
    assert largest <= max(b * n, n * m, 1024), (largest, b * n * m)
