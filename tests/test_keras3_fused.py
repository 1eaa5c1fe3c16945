"""The fused CPU kernel on the JAX and PyTorch backends (mam_tf.keras3._jax / _torch over
mam_tf.common.fusedcpu): it is the path MAMDense takes (an XLA custom call in JAX's compiled
code, the autograd Function and the C ABI in PyTorch), it gives the bits of the numpy statements
below, and the chunked array path takes over, with one warning, when it cannot build.

Gradients are compared bit for bit with a float32 statement of mam_fused.h's summation order
(every max term, then every min term, each pass in row-major (b, j) order): ``np.add.at`` adds
its terms one by one in the order of its index arrays. Compiling the library costs about a
minute once per machine (cached in ~/.cache/mam-tf); the tests themselves take seconds.
"""
import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import npref
from keras3_backend import BACKEND, keras_backend, vjp  # noqa: F401  (backend in ids)
from mam_tf.common import fusedbuild, fusedcpu
from mam_tf.keras3 import MAMDense, mam_op

if BACKEND == "tensorflow":
    pytest.skip("the TensorFlow backend runs the TensorFlow op (tests/test_fused.py)",
                allow_module_level=True)

MOD = mam_op.backend_module()
# As for the TensorFlow op (tests/test_fused.py): the project's test command sets
# MAM_TF_REQUIRE_FUSED=1 (it installs the compiler), so there a kernel that does not build is a
# failure; elsewhere the fused tests skip, saying why.
if os.environ.get("MAM_TF_REQUIRE_FUSED") == "1" and not MOD.loader.available():
    raise RuntimeError(f"the fused kernel must build here: {MOD.loader.reason}")
needs_fused = pytest.mark.skipif(not MOD.loader.available(),
                                 reason=f"fused kernel unavailable: {MOD.loader.reason}")

# Shapes across the kernel's edges: 16-column blocks, 128-input slices, 16-input steps, row
# groups, a single input, batch 1.
EDGE_SHAPES = [(1, 700, 19), (3, 129, 17), (17, 300, 33), (16, 256, 32), (5, 1, 3),
               (40, 2000, 130), (256, 48, 256)]


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def _ordered_backward(g, x, w, amax, amin):
    """dx, dw in float32, each sum in mam_fused.h's documented order."""
    b, n = x.shape
    m = w.shape[1]
    rows = np.repeat(np.arange(b), m)
    cols = np.tile(np.arange(m), b)
    dx = np.zeros((b, n), np.float32)
    dw = np.zeros((n, m), np.float32)
    gv = g.ravel()
    for idx in (np.asarray(amax).ravel(), np.asarray(amin).ravel()):
        np.add.at(dw, (idx, cols), gv * x[rows, idx])
        np.add.at(dx, (rows, idx), gv * w[idx, cols])
    return dx, dw


def _case(rng, b, n, m):
    return tuple(rng.standard_normal(s).astype(np.float32) for s in ((b, n), (n, m), (b, m)))


def _np(t):
    return ops.convert_to_numpy(t)


@needs_fused
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_forward_and_gradients_are_the_stated_bits(rng, shape):
    x, w, g = _case(rng, *shape)
    y, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
    ry, amax, amin = npref.mam_forward(x, w)
    np.testing.assert_array_equal(y, ry)
    fy, famax, famin = (_np(t) for t in mam_op.forward(ops.convert_to_tensor(x),
                                                         ops.convert_to_tensor(w)))
    np.testing.assert_array_equal(famax, amax)
    np.testing.assert_array_equal(famin, amin)
    rdx, rdw = _ordered_backward(g, x, w, amax, amin)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(dw, rdw)


@needs_fused
def test_many_rows_on_one_weight_sum_in_the_stated_order(rng):
    # Small integers tie everywhere: many rows pick the same weight, and the sums of float32
    # terms of mixed magnitude depend on their order.
    x = rng.integers(-3, 4, (64, 40)).astype(np.float32) * np.float32(1.1)
    w = rng.integers(-3, 4, (40, 24)).astype(np.float32) * np.float32(0.7)
    g = rng.standard_normal((64, 24)).astype(np.float32) * np.float32(1e3) ** rng.integers(
        -1, 2, (64, 24)).astype(np.float32)
    _, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
    _, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = _ordered_backward(g, x, w, amax, amin)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(dw, rdw)


@needs_fused
def test_results_do_not_depend_on_the_thread_count(rng):
    lib = MOD.loader.get()  # the backend's library: the C ABI is in both builds
    x, w, g = _case(rng, 130, 700, 70)
    one = fusedcpu.numpy_forward(lib, x, w, threads=1)
    three = fusedcpu.numpy_forward(lib, x, w, threads=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fusedcpu.numpy_backward(lib, g, x, w, *one[1:], threads=1),
                    fusedcpu.numpy_backward(lib, g, x, w, *one[1:], threads=3)):
        np.testing.assert_array_equal(a, b)


@needs_fused
def test_nan_products_give_nan_outputs_and_in_range_indices(rng):
    x, w, _ = _case(rng, 6, 50, 5)
    x[1, 7] = np.nan  # row 1: every output NaN
    x[3, 2] = np.inf
    w[2, 4] = 0.0  # row 3, unit 4: inf * 0 is NaN; the rest of row 3 is +-inf
    y, amax, amin = (_np(t) for t in mam_op.forward(ops.convert_to_tensor(x),
                                                      ops.convert_to_tensor(w)))
    with np.errstate(invalid="ignore"):
        p = x[:, :, None] * w[None, :, :]
        ry = npref.mam_forward(x, w)[0]
    np.testing.assert_array_equal(y, ry)  # NaN exactly where the numpy statement has NaN
    assert np.isnan(y[1]).all() and np.isnan(y[3, 4])
    # Indices: the lowest extremes among the products that are not NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(amax, np.nanargmax(p, axis=1))
        np.testing.assert_array_equal(amin, np.nanargmin(p, axis=1))


def _record_fused_calls(monkeypatch):
    """The fused entry points called from now on: XLA custom-call targets traced (JAX), C ABI
    calls (PyTorch)."""
    calls = []
    if BACKEND == "jax":
        import jax
        real = jax.ffi.ffi_call

        def ffi_call(target, *a, **k):
            calls.append(target)
            return real(target, *a, **k)

        monkeypatch.setattr(jax.ffi, "ffi_call", ffi_call)
    else:
        for name in ("forward", "backward"):
            real_fn = getattr(fusedcpu, name)
            monkeypatch.setattr(fusedcpu, name, lambda *a, _f=real_fn, _n=name:
                                calls.append(_n) or _f(*a))
    return calls


@needs_fused
@pytest.mark.skipif(BACKEND != "jax", reason="JAX's lowering")
def test_jax_jit_lowers_to_the_custom_calls_and_gives_the_same_bits(rng):
    import jax
    x, w, g = _case(rng, 32, 300, 40)

    def step(x, w, g):
        y, pull = jax.vjp(mam_op.mam_reduce, x, w)
        return (y, *pull(g))

    hlo = jax.jit(step).lower(x, w, g).as_text()
    assert MOD.FORWARD_TARGET in hlo and MOD.BACKWARD_TARGET in hlo
    assert "reduce_max" not in jax.make_jaxpr(step)(x, w, g).pretty_print()  # no chunked path
    compiled = [np.asarray(t) for t in jax.jit(step)(x, w, g)]
    eager = [np.asarray(t) for t in step(x, w, g)]
    for a, b in zip(compiled, eager):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(compiled[0], npref.mam_forward(x, w)[0])


@needs_fused
@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's autograd graph")
def test_torch_grad_fn_is_the_mam_function_on_the_c_library(rng, monkeypatch):
    import torch
    calls = _record_fused_calls(monkeypatch)
    x, w, g = _case(rng, 4, 30, 3)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = mam_op.mam_reduce(xt, wt)
    assert type(y.grad_fn).__name__ == "MAMReduceBackward"
    y.backward(torch.tensor(g))
    assert calls == ["forward", "backward"]


@needs_fused
def test_keras_fit_trains_on_the_fused_kernel(rng, monkeypatch):
    calls = _record_fused_calls(monkeypatch)
    model = keras.Sequential([keras.Input((20,)), MAMDense(3)])
    model.compile("sgd", "mse", jit_compile=BACKEND == "jax")
    model.fit(rng.standard_normal((8, 20)).astype(np.float32),
              rng.standard_normal((8, 3)).astype(np.float32), epochs=2, verbose=0)
    fwd = MOD.FORWARD_TARGET if BACKEND == "jax" else "forward"
    bwd = MOD.BACKWARD_TARGET if BACKEND == "jax" else "backward"
    assert fwd in calls and bwd in calls, calls


def test_other_dtypes_take_the_chunked_path_and_equal_npref(rng):
    x = rng.integers(-3, 4, (5, 30)).astype(np.float16)
    w = rng.integers(-3, 4, (30, 4)).astype(np.float16)
    xt, wt = ops.convert_to_tensor(x), ops.convert_to_tensor(w)
    assert not MOD.fused_usable(xt, wt)
    y = _np(mam_op.mam_reduce(xt, wt))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, npref.mam_forward(x, w)[0].astype(np.float16))


@pytest.fixture
def never_loaded():
    """The backend's loader in a state where the library was never tried; restored after."""
    saved = (MOD.loader.tried, MOD.loader.loaded, MOD.loader.reason)
    MOD.loader.reset()
    yield MOD.loader
    MOD.loader.tried, MOD.loader.loaded, MOD.loader.reason = saved


def test_a_failed_build_warns_once_and_the_chunked_path_equals_npref(rng, monkeypatch,
                                                                     never_loaded):
    def broken_build(*a, **k):
        raise RuntimeError("c++ exited with 1: simulated")

    monkeypatch.setattr(fusedcpu, "build", broken_build)
    x, w, g = (rng.integers(-3, 4, s).astype(np.float32) for s in ((7, 13), (13, 5), (7, 5)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, (dx, dw) = vjp(mam_op.mam_reduce, [x, w], g)
        vjp(mam_op.mam_reduce, [x, w], g)
    relevant = [c for c in caught if issubclass(c.category, fusedbuild.FusedKernelWarning)]
    assert len(relevant) == 1, [str(c.message) for c in caught]
    assert "simulated" in str(relevant[0].message) and "chunked" in str(relevant[0].message)
    assert not MOD.fused_usable(ops.convert_to_tensor(x), ops.convert_to_tensor(w))
    ry, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)  # small integers: every sum exact
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(dx, rdx.astype(np.float32))
    np.testing.assert_array_equal(dw, rdw.astype(np.float32))


def test_opting_out_builds_nothing_and_warns_nothing(monkeypatch, never_loaded, rng):
    monkeypatch.setenv("MAM_TF_FUSED", "0")
    monkeypatch.setattr(fusedcpu, "build", lambda *a, **k: pytest.fail("built despite opt-out"))
    x, w, _ = _case(rng, 3, 20, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusedbuild.FusedKernelWarning)
        assert not MOD.loader.available()
        y = _np(mam_op.mam_reduce(ops.convert_to_tensor(x), ops.convert_to_tensor(w)))
    np.testing.assert_array_equal(y, npref.mam_forward(x, w)[0])


@needs_fused
def test_bad_indices_and_shapes_are_named(rng):
    x, w, g = _case(rng, 2, 5, 3)
    amax = np.zeros((2, 3), np.int32)
    amin = amax.copy()
    amin[1, 2] = 5
    with pytest.raises(Exception, match=r"index out of range at flat position 5"):
        _np(mam_op.backward(*(ops.convert_to_tensor(a) for a in (g, x, w, amax, amin)))[0])
    with pytest.raises(Exception, match=r"5 inputs but w has 4 rows|\[batch, inputs\]"):
        _np(mam_op.forward(ops.convert_to_tensor(x), ops.convert_to_tensor(w[:4]))[0])
