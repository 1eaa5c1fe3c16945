"""A plain numpy statement of docs/operator-contract.md section 1, the oracle the TensorFlow
code is tested against."""
import numpy as np


def mam_forward(x, w):
    """x [B, N], w [N, M] -> y [B, M], argmax [B, M], argmin [B, M] (lowest index wins ties)."""
    p = x[:, :, None].astype(np.float32) * w[None, :, :].astype(np.float32)
    amax = p.argmax(axis=1)  # numpy returns the first occurrence: the lowest index
    amin = p.argmin(axis=1)
    return (p.max(axis=1) + p.min(axis=1)).astype(np.float32), amax, amin


def mam_backward(g, x, w, amax, amin):
    """Routed gradient: only the selected pair of each row gets g; a == m counts twice."""
    b, n = x.shape
    m = w.shape[1]
    dx = np.zeros_like(x, dtype=np.float64)
    dw = np.zeros_like(w, dtype=np.float64)
    rows = np.repeat(np.arange(b), m)
    cols = np.tile(np.arange(m), b)
    for idx in (amax.ravel(), amin.ravel()):
        gv = g.ravel().astype(np.float64)
        np.add.at(dw, (idx, cols), gv * x[rows, idx])
        np.add.at(dx, (rows, idx), gv * w[idx, cols])
    return dx, dw


def mam_dense(x, w, b=None, beta=0.0):
    """The MAMDense forward without activation, for any beta."""
    y = (1.0 - beta) * mam_forward(x, w)[0] + beta * (x.astype(np.float32) @ w.astype(np.float32))
    return y if b is None else y + b
