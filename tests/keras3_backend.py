"""Backend-specific helpers of the Keras 3 tests: the gradient of a function on the backend
Keras runs (``KERAS_BACKEND``), the tensor conversions around it, and the backend in every test
id (scripts/test.sh runs the Keras 3 tests once per backend, each in its own pytest process)."""
import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True, params=[BACKEND])
def keras_backend(request):
    """The backend of this process as the tests' parameter: imported into a test module, it
    names the backend in each test's id (``test_x[jax]``), so a failure says which one."""
    return request.param


def vjp(fn, args, g):
    """(fn(*args), the gradients of sum(fn(*args) * g) with respect to each of args), as numpy."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        ts = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(ts)
            y = fn(*ts)
        grads = tape.gradient(y, ts, output_gradients=tf.constant(g))
        return y.numpy(), [gr.numpy() for gr in grads]
    if BACKEND == "jax":
        import jax
        y, pull = jax.vjp(fn, *[jax.numpy.asarray(a) for a in args])
        return np.asarray(y), [np.asarray(gr) for gr in pull(jax.numpy.asarray(g))]
    if BACKEND == "torch":
        import torch
        ts = [torch.tensor(a, requires_grad=True) for a in args]
        y = fn(*ts)
        y.backward(torch.tensor(g))
        return y.detach().numpy(), [t.grad.numpy() for t in ts]
    raise AssertionError(BACKEND)


def jit(fn):
    """fn compiled where the backend compiles it (tf.function(jit_compile=True), jax.jit)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax
        return jax.jit(fn)
    return fn
