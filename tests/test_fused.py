"""The fused CPU kernel equals the pure-TensorFlow reference bit for bit, and falls back cleanly.

Forward values and indices are compared with exact equality. So are the gradients: the kernel
adds its terms in the order of the reference's unsorted_segment_sum on the CPU (every max term,
then every min term, rows ascending; mam_fused.h), so even weights hit by many rows agree to the
last bit. Shapes cross the kernel's edges: 16-column blocks, 128-input slices, 16-input steps,
16-row work items, N > 65535, batch 1, a single input.
"""
import os
import threading
import warnings

import numpy as np
import pytest

import npref
from mam_tf import MAMDense
from mam_tf.common import fusedbuild
from mam_tf.train import fused
from mam_tf.train import mam_op
from mam_tf.train.compat import keras, tf

# A machine without a C++ compiler skips these tests; the project's test command sets
# MAM_TF_REQUIRE_FUSED=1 (it installs the compiler), so there a broken kernel is a failure.
if os.environ.get("MAM_TF_REQUIRE_FUSED") == "1" and not fused.available():
    raise RuntimeError(f"the fused kernel must build here: {fused.unavailable_reason()}")
pytestmark = pytest.mark.skipif(
    not fused.available(), reason=f"fused kernel unavailable: {fused.unavailable_reason()}"
)

EDGE_SHAPES = [
    (1, 70001, 19),  # batch 1, N > 65535 (beyond 16-bit indices), M < one block
    (3, 129, 17),  # one input past a slice, one unit past a block
    (17, 300, 33),  # one row past a work item, partial step, partial block
    (16, 256, 32),  # exact multiples of everything
    (5, 1, 3),  # a single input: max == min, every pair counted twice
    (40, 2000, 130),
]


def _ref(x, w, g):
    y, amax, amin = mam_op.mam_forward_reference(x, w)
    dx, dw = mam_op.mam_backward_reference(g, x, w, amax, amin)
    return [t.numpy() for t in (y, amax, amin, dx, dw)]


def _fused(x, w, g):
    y, amax, amin = fused.forward(x, w)
    dx, dw = fused.backward(g, x, w, amax, amin)
    return [t.numpy() for t in (y, amax, amin, dx, dw)]


def _normal_case(rng, shape):
    """Standard-normal x [B, N], w [N, M] and upstream gradient g [B, M] for shape (B, N, M)."""
    b, n, m = shape
    return tuple(rng.standard_normal(dims).astype(np.float32) for dims in ((b, n), (n, m), (b, m)))


def _assert_identical(x, w, g):
    names = ("y", "amax", "amin", "dx", "dw")
    for name, f, r in zip(names, _fused(x, w, g), _ref(x, w, g)):
        assert f.dtype == r.dtype and f.shape == r.shape, name
        np.testing.assert_array_equal(f, r, err_msg=f"fused and reference differ in {name}")


def _assert_matches_numpy(x, w):
    """The fused forward against the numpy statement of the semantics (tests/npref.py)."""
    for name, f, n in zip(("y", "amax", "amin"), fused.forward(x, w), npref.mam_forward(x, w)):
        np.testing.assert_array_equal(f.numpy(), n, err_msg=f"fused and numpy differ in {name}")


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_equals_reference_exactly_on_tile_edges(rng, shape):
    x, w, g = _normal_case(rng, shape)
    _assert_identical(x, w, g)
    if np.prod(shape) <= 2_000_000:  # and the numpy statement of the semantics, where it fits
        _assert_matches_numpy(x, w)


def test_ties_go_to_the_lowest_index_and_colliding_gradients_agree(rng):
    # Small integers: products tie everywhere, and many rows pick the same weight.
    x = rng.integers(-2, 3, (64, 700)).astype(np.float32)
    w = rng.integers(-2, 3, (700, 40)).astype(np.float32)
    g = rng.standard_normal((64, 40)).astype(np.float32)
    _assert_identical(x, w, g)
    _, amax, amin = npref.mam_forward(x, w)
    y, famax, famin = (t.numpy() for t in fused.forward(x, w))
    np.testing.assert_array_equal(famax, amax)
    np.testing.assert_array_equal(famin, amin)


def test_all_negative_products_pick_the_true_max(rng):
    x = rng.uniform(0.5, 2.0, (9, 500)).astype(np.float32)
    w = -rng.uniform(0.5, 2.0, (500, 21)).astype(np.float32)
    g = rng.standard_normal((9, 21)).astype(np.float32)
    _assert_identical(x, w, g)
    y = fused.forward(x, w)[0].numpy()
    assert (y < 0).all()


def test_zero_input_selects_index_zero_and_counts_twice(rng):
    x = np.zeros((3, 200), np.float32)
    x[1] = rng.standard_normal(200)
    w = rng.standard_normal((200, 18)).astype(np.float32)
    g = rng.standard_normal((3, 18)).astype(np.float32)
    _assert_identical(x, w, g)
    y, amax, amin = (t.numpy() for t in fused.forward(x, w))
    dx, dw = (t.numpy() for t in fused.backward(g, x, w, amax, amin))
    assert (y[0] == 0).all() and (amax[0] == 0).all() and (amin[0] == 0).all()
    # Row 0 routes g twice to input 0 (max and min): dx[0, 0] = sum_j 2 g[0, j] w[0, j].
    np.testing.assert_allclose(dx[0, 0], (2 * g[0] * w[0]).sum(), rtol=1e-5)
    assert (dx[0, 1:] == 0).all()


def test_nan_input_gives_nan_like_the_reference_and_indices_stay_in_range(rng):
    # NaN and inf in a slice that tracks indices (input 250 of random data) and in one that
    # runs the value loop (input 1200).
    n = 1300
    x = rng.standard_normal((5, n)).astype(np.float32)
    w = rng.standard_normal((n, 20)).astype(np.float32)
    x[1, 250] = np.nan
    x[2, 7] = np.inf  # inf * w is finite-signed, but inf - inf can make y NaN
    x[3, 1200] = np.nan
    x[4, 1201] = -np.inf
    w[5, 3] = np.nan
    y, amax, amin = (t.numpy() for t in fused.forward(x, w))
    ry, rmax, rmin = (t.numpy() for t in mam_op.mam_forward_reference(x, w))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
    np.testing.assert_array_equal(y[~np.isnan(y)], ry[~np.isnan(ry)])
    kept = ~np.isnan(ry)  # the extremes of the outputs without a NaN product: the same inputs
    np.testing.assert_array_equal(amax[kept], rmax[kept])
    np.testing.assert_array_equal(amin[kept], rmin[kept])
    assert np.isnan(y[1]).all() and np.isnan(y[3]).all() and np.isnan(y[:, 3]).all()
    assert ((0 <= amax) & (amax < n) & (0 <= amin) & (amin < n)).all()


def test_out_of_range_indices_are_refused(rng):
    x = rng.standard_normal((2, 10)).astype(np.float32)
    w = rng.standard_normal((10, 3)).astype(np.float32)
    bad = np.full((2, 3), 10, np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="index out of range"):
        fused.backward(np.ones((2, 3), np.float32), x, w, bad, bad * 0)


def test_other_dtypes_are_refused_by_the_kernel_and_routed_to_the_reference(rng):
    x = rng.standard_normal((3, 20))
    w = rng.standard_normal((20, 4))
    with pytest.raises(TypeError, match="float64; the fused kernel takes float32 only"):
        fused.forward(x, w)
    assert not fused.usable(tf.constant(x), tf.constant(w))
    y = mam_op.mam_forward(tf.constant(x), tf.constant(w))[0]
    assert y.dtype == tf.float64


def test_two_threads_at_once_get_their_own_answers(rng):
    cases = []
    for seed in range(2):
        r = np.random.default_rng(seed)
        x = r.standard_normal((33, 3000)).astype(np.float32)
        w = r.standard_normal((3000, 40)).astype(np.float32)
        g = r.standard_normal((33, 40)).astype(np.float32)
        cases.append((x, w, g, _ref(x, w, g)))
    errors = []
    barrier = threading.Barrier(2)

    def worker(x, w, g, expected):
        try:
            barrier.wait()
            for _ in range(5):
                for got, want in zip(_fused(x, w, g), expected):
                    np.testing.assert_array_equal(got, want)
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=c) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _op_types(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def test_tf_function_uses_the_kernel_and_xla_falls_back_to_the_reference(rng):
    x = tf.constant(rng.standard_normal((6, 300)).astype(np.float32))
    w = tf.constant(rng.standard_normal((300, 20)).astype(np.float32))
    g = tf.constant(rng.standard_normal((6, 20)).astype(np.float32))

    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(mam_op.mam_reduce(x, w) * g)
        return loss, tape.gradient(loss, [x, w])

    graph_step = tf.function(step)
    xla_step = tf.function(step, jit_compile=True)
    assert {"MamFusedForward", "MamFusedBackward"} <= _op_types(graph_step, x, w)
    assert not {"MamFusedForward", "MamFusedBackward"} & _op_types(xla_step, x, w)
    loss, (dx, dw) = graph_step(x, w)
    xloss, (xdx, xdw) = xla_step(x, w)  # compiles and runs: no custom op reached XLA
    _, _, _, rdx, rdw = _ref(x.numpy(), w.numpy(), g.numpy())
    np.testing.assert_array_equal(dx.numpy(), rdx)
    np.testing.assert_array_equal(dw.numpy(), rdw)
    # XLA may sum in its own order: equal to float rounding.
    np.testing.assert_allclose(xloss.numpy(), loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(xdx.numpy(), rdx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xdw.numpy(), rdw, rtol=1e-6, atol=1e-6)


def test_helpers_from_the_executor_give_the_reference_bits_in_a_tf_function(rng):
    # In a tf.function the ops' helper threads come from the executor's runner (the inter-op
    # pool that runs the graph), not the intra-op pool of eager calls. 256 x 48 -> 256 is a
    # forward with a helper and a one-pass backward, 160 x 5000 -> 100 both ops with helpers; on
    # a machine with one intra-op thread there are none and this compares the serial path. A
    # helper joins when it starts in time: every case runs a few times.
    data = _mixed_cases(rng, [(256, 48, 256), (160, 5000, 100)])

    @tf.function
    def step(x, w, g):
        y, amax, amin = fused.forward(x, w)
        return (y, amax, amin, *fused.backward(g, x, w, amax, amin))

    for k in range(2):
        x, w, g = data[f"x{k}"], data[f"w{k}"], data[f"g{k}"]
        want = _ref(x, w, g)
        if k == 0:  # and the numpy statement of the semantics, where it fits
            for name, r, n in zip(("y", "amax", "amin"), want, npref.mam_forward(x, w)):
                np.testing.assert_array_equal(r, n, err_msg=f"{name}: reference != numpy")
        for call in range(5):
            got = [t.numpy() for t in step(x, w, g)]
            for name, f, r in zip(("y", "amax", "amin", "dx", "dw"), got, want):
                np.testing.assert_array_equal(f, r, err_msg=f"{name} of case {k} differs "
                                                            f"(call {call})")


def test_disabled_traces_standard_ops_only(rng):
    x = tf.constant(rng.standard_normal((2, 50)).astype(np.float32))
    w = tf.constant(rng.standard_normal((50, 3)).astype(np.float32))
    with fused.disabled():
        types = _op_types(tf.function(lambda x, w: mam_op.mam_reduce(x, w)), x, w)
    assert "MamFusedForward" not in types
    assert fused.usable(x, w)


def test_mamdense_training_step_is_identical_with_and_without_the_kernel(rng):
    x = tf.constant(rng.standard_normal((20, 150)).astype(np.float32))
    layer = MAMDense(24, beta=0.25)
    layer.build((None, 150))

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        return [loss] + tape.gradient(loss, [layer.kernel, layer.bias])

    fast = [t.numpy() for t in tf.function(grads)()]
    with fused.disabled():
        slow = [t.numpy() for t in tf.function(grads)()]
    for f, s in zip(fast, slow):
        np.testing.assert_array_equal(f, s)


@pytest.fixture
def fresh_state(monkeypatch):
    """A process state in which the fused kernel was never tried; restored afterwards."""
    saved = (fused.loader.tried, fused.loader.loaded, fused.loader.reason)
    fused.loader.reset()
    yield
    fused.loader.tried, fused.loader.loaded, fused.loader.reason = saved


def test_a_failed_build_warns_once_and_the_reference_path_works(monkeypatch, fresh_state, rng):
    def broken_build():
        raise RuntimeError("c++ exited with 1: simulated")

    monkeypatch.setattr(fused, "build", broken_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not fused.available()
        assert not fused.available()
        x = rng.standard_normal((3, 40)).astype(np.float32)
        w = rng.standard_normal((40, 5)).astype(np.float32)
        y = mam_op.mam_forward(tf.constant(x), tf.constant(w))[0].numpy()
    relevant = [c for c in caught if issubclass(c.category, fused.FusedKernelWarning)]
    assert len(relevant) == 1
    assert "simulated" in str(relevant[0].message) and "reference path" in str(relevant[0].message)
    np.testing.assert_array_equal(y, npref.mam_forward(x, w)[0])
    assert "simulated" in fused.unavailable_reason()


def test_opting_out_needs_no_build_and_gives_no_warning(monkeypatch, fresh_state):
    monkeypatch.setenv("MAM_TF_FUSED", "0")
    monkeypatch.setattr(fused, "build", lambda: pytest.fail("built despite MAM_TF_FUSED=0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fused.available()


def test_cache_key_follows_sources_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MAM_TF_CACHE", str(tmp_path))
    a = fused.library_dir("c++")
    assert a.parent == tmp_path and a.name.startswith(f"ops-{tf.__version__}-")
    monkeypatch.setattr(fusedbuild, "CXXFLAGS", fusedbuild.CXXFLAGS + ("-DCHANGED",))
    assert fused.library_dir("c++") != a


def test_another_kernel_directory_gets_its_own_build_and_a_bad_one_is_named(monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("MAM_TF_CACHE", str(tmp_path / "cache"))
    here = fused.library_dir("c++")
    other = tmp_path / "kernels"
    other.mkdir()
    for name in fused.SOURCES:
        (other / name).write_bytes((fused.KERNEL_DIR / name).read_bytes())
    monkeypatch.setenv(fused.KERNEL_DIR_ENV, str(other))
    assert fused.kernel_dir() == other.resolve()
    assert fused.library_dir("c++") == here  # the same sources: the same build
    with open(other / "mam_fused.h", "a") as f:
        f.write("// another version\n")
    assert fused.library_dir("c++") != here
    (other / "mam_fused_op.cc").unlink()
    with pytest.raises(RuntimeError, match="MAM_TF_KERNEL_DIR.*lacks mam_fused_op.cc"):
        fused.kernel_dir()


def test_first_check_inside_a_graph_trace_still_loads(fresh_state):
    # Keras calls the layer symbolically first: loading and self-testing must run eagerly.
    @tf.function
    def f():
        return tf.constant(fused.available())

    assert f().numpy()


def test_savedmodel_holds_standard_ops_only(tmp_path, rng):
    model = keras.Sequential([keras.Input((30,)), MAMDense(4)])
    x = rng.standard_normal((2, 30)).astype(np.float32)
    model.save(tmp_path / "sm")  # SavedModel: must load where mam-tf's library is not built
    graph_def = (tmp_path / "sm" / "saved_model.pb").read_bytes()
    assert b"MamFused" not in graph_def
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_array_equal(loaded.signatures["serving_default"](tf.constant(x))
                                  [model.output_names[0]].numpy(), model(x).numpy())


# Shapes around the forward's register tiles (4 rows x 2 vectors with AVX-512, 2 rows with AVX2;
# 2 or 1 rows while slices track indices), its row groups (two items per thread) and slices:
# batch 1..9 and 130 (groups with a remainder), N past the slices that track indices on random
# data (about the first 900 inputs) so the value loop, its integer-max form and both searches
# (lane by lane, whole vectors) all run.
TILE_SHAPES = [(b, 1100, 40) for b in range(1, 10)] + [(130, 257, 20), (6, 4099, 70)]


@pytest.mark.parametrize("shape", TILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_equals_reference_exactly_around_the_register_tiles(rng, shape):
    x, w, g = _normal_case(rng, shape)
    _assert_identical(x, w, g)


# Rows of at most one slice (N <= 128) go from the first product to the outputs in registers
# when the block is whole (32 columns with AVX-512), else through the state; dw pieces of up to
# 256 inputs accumulate in a local buffer (whole and partial 16-column pieces), dx rows run in
# pairs (odd batches leave one). Ties (small integers) and zeros of both signs included.
SMALL_ROW_SHAPES = [(1, 48, 32), (7, 48, 64), (33, 128, 96), (256, 48, 256), (5, 17, 33),
                    (9, 100, 250), (4, 129, 16), (3, 256, 40)]


@pytest.mark.parametrize("kind", ["normal", "ties", "relu"])
@pytest.mark.parametrize("shape", SMALL_ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_equals_reference_exactly_on_small_rows(rng, shape, kind):
    b, n, m = shape
    if kind == "ties":
        x = rng.integers(-3, 4, (b, n)).astype(np.float32)
        w = rng.integers(-3, 4, (n, m)).astype(np.float32)
    else:
        x, w, _ = _normal_case(rng, shape)
    if kind == "relu":  # and a row of zeros of both signs: every product is a zero
        x = np.maximum(x, 0.0)
        x[rng.random(x.shape) < 0.2] = -0.0
        x[-1] = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    g = rng.standard_normal((b, m)).astype(np.float32)
    _assert_identical(x, w, g)
    # The value is the selected products' sum to the bit (the sign of a zero included).
    y, amax, amin = (t.numpy() for t in fused.forward(x, w))
    rows, cols = np.indices(y.shape)
    want = x[rows, amax] * w[amax, cols] + x[rows, amin] * w[amin, cols]
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))


def test_relu_inputs_with_zero_products_keep_the_sign_of_zero(rng):
    # ReLU outputs: many x == 0, so products +0 and -0 tie with each other; rows where every
    # product is <= 0 keep a max of zero (the integer-max form must not run there).
    x = np.maximum(rng.standard_normal((12, 900)), 0).astype(np.float32)
    x[3] = 0.0
    x[4, :] = 0.0
    x[4, 500] = 1.0
    w = rng.standard_normal((900, 36)).astype(np.float32)
    w[:, 5] = -np.abs(w[:, 5])
    g = rng.standard_normal((12, 36)).astype(np.float32)
    _assert_identical(x, w, g)  # equal values (+0 == -0 there) and indices
    # The value is the selected products' sum, to the bit: the sign of a zero is that of the
    # lowest-index extreme. (The reference's reduce_max may pick the other zero of a tie.)
    y, amax, amin = (t.numpy() for t in fused.forward(x, w))
    rows, cols = np.indices(y.shape)
    want = x[rows, amax] * w[amax, cols] + x[rows, amin] * w[amin, cols]
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))


def test_rising_products_search_every_step_and_stay_exact(rng):
    # Products that grow along the inputs improve the running max in every step (every lane:
    # the vector search) or in few lanes (the lane-by-lane search). The first 256 inputs are
    # zero, so their first product is every extreme and the slices after the first stop
    # tracking indices: the value loop meets the rising products.
    n = 1256
    x = np.zeros((5, n), np.float32)
    x[:, 256:] = np.linspace(0.1, 5.0, n - 256, dtype=np.float32)
    x[1, 256:] = x[1, 256:][::-1]
    w = rng.standard_normal((n, 33)).astype(np.float32)
    w[:, :3] = np.abs(w[:, :3]) + 1.0
    w[:, 3] = np.linspace(-1.0, 1.0, n)
    g = rng.standard_normal((5, 33)).astype(np.float32)
    _assert_identical(x, w, g)


# Tiles of 4 rows run the value loop's bound test after the tracked slices (AVX-512 builds;
# others run the plain value loop, same bits): a group of 4 inputs is skipped where
# max|x| * max|w| over it stays below every running extreme of its row. Random and ReLU data skip
# most groups; ties (small integers) and rising products skip few, which rests the test for some
# slices. Included: 8 and 4 valid columns in the last block (the floor takes valid lanes only),
# a row of positive products only (its floor is negative: it never skips), groups of zeros
# (bound 0), a partial last step, and rows that do not fill a tile of 4.
BOUND_SHAPES = [(32, 3000, 40), (42, 2100, 36), (64, 5000, 100)]


@pytest.mark.parametrize("kind", ["normal", "relu", "ties", "rising"])
@pytest.mark.parametrize("shape", BOUND_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_equals_reference_exactly_where_the_bound_test_skips_groups(rng, shape, kind):
    b, n, m = shape
    x, w, g = _normal_case(rng, shape)
    if kind == "relu":
        x = np.maximum(x, 0.0)
    elif kind == "ties":
        x = rng.integers(-3, 4, (b, n)).astype(np.float32)
        w = rng.integers(-3, 4, (n, m)).astype(np.float32)
    elif kind == "rising":  # every step raises the extremes of most rows
        x = x * np.linspace(0.01, 10.0, n, dtype=np.float32)
    x[1] = np.abs(x[1])
    w[:, 2] = np.abs(w[:, 2]) + 0.5  # row 1, column 2: positive products only
    _assert_identical(x, w, g)
    if kind == "normal":  # and the numpy statement of the semantics
        _assert_matches_numpy(x, w)


def test_ties_and_the_least_rise_beside_skipped_groups_are_found(rng):
    # Powers of two make every product and bound exact. Inputs 100 and 101 set every row's
    # extremes to +-0.5, far above the other products (at most 1/16), whose groups are skipped.
    # Late in each row one input ties the max and one the min (the earlier index stays), and
    # one raises one column's max, another lowers one column's min, by the least float step:
    # their groups' bounds reach the floor, so they run.
    b, n, m = 64, 4096, 32

    def small(shape):
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        return (np.ldexp(1.0, rng.integers(-5, -1, shape)) * sign).astype(np.float32)

    x, w = small((b, n)), small((n, m))
    x[:, 100:102] = 1.0
    w[100], w[101] = 0.5, -0.5
    step = np.nextafter(np.float32(0.5), np.float32(1.0))
    for r in range(b):
        tie_max, tie_min, up, down = 1000 + 8 * r, 1003 + 8 * r, 2000 + 8 * r, 3001 + 8 * r
        x[r, [tie_max, tie_min, up, down]] = 1.0
        w[tie_max], w[tie_min] = 0.5, -0.5
        w[up, r % m], w[down, (r + 5) % m] = step, -step
    g = rng.standard_normal((b, m)).astype(np.float32)
    _assert_identical(x, w, g)
    _assert_matches_numpy(x, w)
    amax, amin = (t.numpy() for t in fused.forward(x, w)[1:])
    rows = np.arange(b)
    assert (amax[rows, rows % m] == 2000 + 8 * rows).all()  # the least rise is the max
    assert (amin[rows, (rows + 5) % m] == 3001 + 8 * rows).all()
    assert (amax[:, 7][rows % m != 7] == 100).all()  # a tie keeps the earlier index
    assert (amin[:, 7][(rows + 5) % m != 7] == 101).all()


def test_big_dw_is_zeroed_first_and_stays_exact(rng):
    # N * M above the backward's threshold: dw zeroed by rows in a first pass, ties included.
    x = rng.integers(-2, 3, (33, 9000)).astype(np.float32)
    w = rng.integers(-3, 4, (9000, 40)).astype(np.float32)
    g = rng.standard_normal((33, 40)).astype(np.float32)
    _assert_identical(x, w, g)


_THREADS_SCRIPT = """
import sys, numpy as np
from mam_tf.train import fused
d = np.load(sys.argv[1])
out = {}
for k in range(len(d.files) // 3):
    x, w, g = d[f"x{k}"], d[f"w{k}"], d[f"g{k}"]
    y, amax, amin = fused.forward(x, w)
    dx, dw = fused.backward(g, x, w, amax, amin)
    for name, t in zip(("y", "amax", "amin", "dx", "dw"), (y, amax, amin, dx, dw)):
        out[f"{name}{k}"] = t.numpy()
np.savez(sys.argv[2], **out)
"""


def _mixed_cases(rng, shapes):
    """Half-integer x (ties) with a normal column in every 7, normal w and g, per shape."""
    data = {}
    for k, (b, n, m) in enumerate(shapes):
        data[f"x{k}"] = rng.integers(-3, 4, (b, n)).astype(np.float32) * 0.5
        data[f"x{k}"][:, ::7] = rng.standard_normal((b, len(range(0, n, 7))))
        data[f"w{k}"] = rng.standard_normal((n, m)).astype(np.float32)
        data[f"g{k}"] = rng.standard_normal((b, m)).astype(np.float32)
    return data


def _assert_subprocess_gives_these_bits(data, tmp_path, env, what):
    """Runs the fused ops on `data` in a fresh process with `env` added: the same bytes here."""
    import subprocess
    import sys

    np.savez(tmp_path / "in.npz", **data)
    out = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(tmp_path / "in.npz"),
                           str(out)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    for k in range(len(data) // 3):
        here = _fused(data[f"x{k}"], data[f"w{k}"], data[f"g{k}"])
        for name, want in zip(("y", "amax", "amin", "dx", "dw"), here):
            assert got[f"{name}{k}"].tobytes() == want.tobytes(), f"{name}{k} differs {what}"


def test_one_and_three_threads_give_the_same_bits_as_this_process(rng, tmp_path):
    data = _mixed_cases(rng, [(130, 700, 70), (9, 5000, 33), (256, 48, 256)])
    for threads in (1, 3):
        _assert_subprocess_gives_these_bits(data, tmp_path, {"TF_NUM_INTRAOP_THREADS":
                                                             str(threads)},
                                            f"with {threads} threads")


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has("avx2"), reason="needs an x86-64 CPU with AVX2 (reads "
                                                  "/proc/cpuinfo) to run the older builds")
def test_avx2_and_sse_builds_give_the_same_bits_as_the_native_one(rng, tmp_path):
    # The same source built for AVX2 (8 lanes, 2-row tiles, no bound test) and SSE4.2 (4 lanes)
    # through $MAM_TF_MARCH: the code paths of those CPUs, and the same bytes as this build
    # (on an AVX-512 machine: 16 lanes, and the bound test on the 64 x 5000 rows).
    data = _mixed_cases(rng, [(130, 700, 70), (9, 5000, 33), (256, 48, 256)])
    data["x3"], data["w3"], data["g3"] = _normal_case(rng, (64, 5000, 100))
    for march in ("x86-64-v3", "x86-64-v2"):
        _assert_subprocess_gives_these_bits(data, tmp_path, {fused.MARCH_ENV: march},
                                            f"when built with -march={march}")


def test_a_bad_march_is_named_and_the_reference_path_works(monkeypatch, fresh_state, rng):
    monkeypatch.setenv(fused.MARCH_ENV, "native; rm -rf ~")
    with pytest.warns(fused.FusedKernelWarning, match=r"MAM_TF_MARCH is 'native; rm -rf ~'"):
        assert not fused.available()
    x, w, _ = _normal_case(rng, (3, 40, 5))
    y, _, _ = mam_op.mam_forward(x, w)
    np.testing.assert_array_equal(y.numpy(), npref.mam_forward(x, w)[0])
