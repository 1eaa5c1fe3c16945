"""The README's example, run as it is: it trains a MAMDense to pure MAM, prunes it, converts it
and runs the .tflite on the host runtime, whose outputs must stay within the int8 quantization
error of the Keras model's, a bound derived here from the scales alone."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_readme.py runs the next code block as it is -->"


def _example() -> str:
    text = README.read_text()
    assert MARKER in text, f"{README} has lost the marker of its example: {MARKER!r}"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block is not None, f"no ```python block follows the marker in {README}"
    return block.group(1)


def _affine(quantization) -> tuple[float, int]:
    scales, zero_points = quantization
    assert scales is not None and len(scales) == 1, quantization
    return float(scales[0]), int(zero_points[0])


def _int8_error_bound(kernel, bias, x, s_in, z_in, s_out):
    """Largest |device - Keras| each output may show, [B, M].

    Keras computes y_j = max_i(w_ij x_i) + min_i(w_ij x_i) + b_j in float. The device computes
    the same on x' = s_in * (round(x / s_in) + z_in - z_in) (clamped to int8) and on
    w' = s_j * round(w / s_j) with s_j = max_i |w_ij| / 127 (symmetric int8 per output row; a
    pruned 0 stays 0). Each product moves by at most
        d_ij = |w'_ij| |x'_i - x_i| + |x_i| |w'_ij - w_ij|,
    so the max and the min each move by at most max_i d_ij. The bias is rounded at
    s_in * s_j (half a step), the requantization rounds twice (at most one output step s_out),
    its q31 multiplier is off by at most 2^-30 relative, and float32 adds a few ulps to the
    Keras side.
    """
    w = kernel.astype(np.float64)                      # [N, M]
    s_w = (np.abs(w).max(axis=0) / 127.0).astype(np.float32).astype(np.float64)
    s_w[s_w == 0] = 1.0
    w_q = np.round(w / s_w) * s_w                      # no ties: |w / s_w| is not a half-integer
    x64 = x.astype(np.float64)
    q = np.sign(x64 / s_in) * np.floor(np.abs(x64 / s_in) + 0.5) + z_in
    x_q = (np.clip(q, -128, 127) - z_in) * s_in
    dx = np.abs(x_q - x64)                             # [B, N]
    assert dx.max() <= s_in / 2 * (1 + 1e-6), f"input outside its calibrated range by {dx.max()}"
    d = np.abs(w_q)[None] * dx[:, :, None] + np.abs(x64)[:, :, None] * np.abs(w_q - w)[None]
    products = x64[:, :, None] * w[None]               # [B, N, M]
    magnitude = np.abs(products.max(axis=1)) + np.abs(products.min(axis=1)) + np.abs(bias)
    return (2 * d.max(axis=1) + s_in * s_w / 2 + s_out + magnitude * 2.0 ** -30
            + 8 * np.finfo(np.float32).eps * magnitude)


def test_readme_example_trains_prunes_converts_and_runs_within_the_int8_bound(tmp_path, monkeypatch):
    from mam_tf import MAMDense
    from mam_tf.deploy.runtime import Interpreter

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_example(), f"{README} (example)", "exec"), ns)
    x, pruned, result, y_device = ns["x"], ns["pruned"], ns["result"], ns["y_device"]

    layers = [layer for layer in pruned.layers if isinstance(layer, MAMDense)]
    assert len(layers) == 1, [type(layer).__name__ for layer in pruned.layers]
    layer = layers[0]
    assert float(layer.beta.numpy()) == 0.0, "the example must train to pure MAM (beta == 0)"
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    assert np.count_nonzero(kernel == 0) == round(0.9 * kernel.size), "sparsity=0.9 prunes 90%"
    assert (tmp_path / "model.tflite").read_bytes() == result.tflite
    assert b"MAM_SPARSE" in result.tflite, "the MAM layer must become a MAM_SPARSE custom op"

    interp = Interpreter(result.tflite)
    s_in, z_in = _affine(interp.input_quantization)
    s_out, z_out = _affine(interp.output_quantization)
    y_keras = np.asarray(pruned(x), np.float64)
    # The output is int8: values beyond its range clamp on the device, and clamping is
    # 1-Lipschitz, so the clamped Keras output is compared.
    y_keras = np.clip(y_keras, (-128 - z_out) * s_out, (127 - z_out) * s_out)
    bound = _int8_error_bound(kernel, bias, x, s_in, z_in, s_out)
    # The bound must say something: a few output steps, well inside the outputs' spread.
    assert bound.max() < 0.1 * np.ptp(y_keras), (bound.max(), np.ptp(y_keras))
    err = np.abs(np.asarray(y_device, np.float64) - y_keras)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (
        f"device output {y_device[worst]} vs Keras {y_keras[worst]} at {worst}: "
        f"|diff| {err[worst]} > bound {bound[worst]}")
