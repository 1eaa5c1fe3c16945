"""The MAM op for the Keras 3 backend in use: one differentiable ``mam_reduce(x, w)``.

- TensorFlow: :func:`mam_tf.train.mam_op.mam_reduce`, the same op as the tf_keras layer (the
  fused CPU kernel outside XLA, the chunked TensorFlow reference under ``jit_compile``);
  imported through :mod:`mam_tf.train.tfcore`, never tf_keras.
- JAX: :mod:`._jax` (the fused CPU kernel as an XLA custom call, else a chunked array path);
  PyTorch: :mod:`._torch` (the fused CPU kernel through its C ABI, else a chunked path).

Every backend computes ``y[b, j] = max_i(x[b, i] w[i, j]) + min_i(x[b, i] w[i, j])`` with the
lowest index winning ties, and routes the gradient to the selected pair only (a pair that is
both argmax and argmin receives it twice).
"""
from __future__ import annotations

import importlib

import keras

__all__ = ["backend_module", "mam_reduce", "forward", "backward"]

_MODULES = {
    "tensorflow": "mam_tf.train.mam_op",
    "jax": "mam_tf.keras3._jax",
    "torch": "mam_tf.keras3._torch",
}


def backend_module(backend=None):
    """The module holding ``forward``, ``backward`` and ``mam_reduce`` for ``backend``
    (default: Keras' current backend)."""
    name = backend or keras.backend.backend()
    if name not in _MODULES:
        raise ValueError(f"mam_tf.keras3: the Keras backend {name!r} is not supported; "
                         f"use one of {sorted(_MODULES)}")
    return importlib.import_module(_MODULES[name])


def mam_reduce(x, w):
    """Differentiable MAM of x [B, N] and w [N, M] on the current backend."""
    return backend_module().mam_reduce(x, w)


def forward(x, w):
    """(y, amax, amin) on the current backend, without gradient."""
    mod = backend_module()
    return mod.mam_forward(x, w) if hasattr(mod, "mam_forward") else mod.forward(x, w)


def backward(g, x, w, amax, amin):
    """(dx, dw) on the current backend."""
    mod = backend_module()
    return mod.mam_backward(g, x, w, amax, amin) if hasattr(mod, "mam_backward") else \
        mod.backward(g, x, w, amax, amin)
