"""The notebooks run top to bottom (the autoencoder one at the tiny scale) and compute what
they say: a trained, pruned and converted model whose ARSNR clears a floor, and a .tflite
whose outputs are Keras' within quantization's bound. The Keras 3 notebook runs once per
backend, each in its own kernel (Keras fixes its backend per process)."""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: A cell appended to each notebook: the numbers its own variables hold, as one JSON line.
PROBES = {
    "quickstart": """
import json as _json
_keras = pruned.predict(test, verbose=0)
print("RESULTS " + _json.dumps({
    "beta": float(model.get_layer("encoder").get_beta()),
    "kept": float(np.count_nonzero(pruned.get_layer("encoder").kernel.numpy())
                  / pruned.get_layer("encoder").kernel.numpy().size),
    "arsnr_trained": float(ecg_data.arsnr(test, model.predict(test, verbose=0))),
    "arsnr_pruned": float(ecg_data.arsnr(test, _keras)),
    "arsnr_tflite": float(ecg_data.arsnr(test, y)),
    "tflite_minus_keras": float(np.abs(y - _keras).max()),
    "keras_max": float(np.abs(_keras).max()),
}))
""",
    "keras3": """
import json as _json
_enc = model.get_layer("encoder")
_kernel = keras.ops.convert_to_numpy(_enc.effective_kernel())
with open("from_file.tflite", "rb") as _f:
    _same = _f.read() == conv.tflite
print("RESULTS " + _json.dumps({
    "backend": keras.backend.backend(),
    "beta": float(_enc.get_beta()),
    "kept": float(np.count_nonzero(_kernel) / _kernel.size),
    "arsnr_pruned": float(ecg_data.arsnr(test, pruned_out)),
    "arsnr_tflite": float(ecg_data.arsnr(test, y)),
    "tflite_minus_keras": float(np.abs(y - pruned_out).max()),
    "keras_max": float(np.abs(pruned_out).max()),
    "has_mam_sparse": b"MAM_SPARSE" in conv.tflite,
    "same_bytes_from_file": _same,
}))
""",
    "ecg_autoencoder": """
import json as _json
_q = qat.predict(x, verbose=0)
print("RESULTS " + _json.dumps({
    "arsnr_deployed": float(ecg_data.arsnr(x, head.predict(z, verbose=0))),
    "arsnr_qat": float(ecg_data.arsnr(x, head.predict(_q, verbose=0))),
    "tflite_minus_keras": float(np.abs(z - _q).max()),
    "keras_max": float(np.abs(_q).max()),
    "stages": len(manifest["stages"]),
}))
""",
}


def _run(name, tmp_path, monkeypatch, backend=None):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "notebooks are committed without outputs"
    nb.cells.append(nbformat.v4.new_code_cell(PROBES[name]))
    monkeypatch.setenv("MAM_TF_NOTEBOOK_SCALE", "tiny")
    if backend:  # a Keras 3 process: its backend, and no tf_keras switch inherited from here
        monkeypatch.setenv("KERAS_BACKEND", backend)
        monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    found = re.findall(r"^RESULTS (.*)$", text, re.M)
    assert len(found) == 1, text[-3000:]
    return json.loads(found[0]), text


def _printed(text, label):
    """The number a notebook printed after ``label``."""
    m = re.search(re.escape(label) + r"\s*(-?[0-9.]+)", text)
    assert m, f"the notebook printed no {label!r}:\n{text[-3000:]}"
    return float(m.group(1))


def test_quickstart_trains_prunes_and_converts(tmp_path, monkeypatch):
    r, text = _run("quickstart", tmp_path, monkeypatch)
    # trained to pure MAM, pruned to 10% of the encoder's weights
    assert r["beta"] == 0.0, r
    assert r["kept"] == pytest.approx(0.10, abs=1e-3), r
    # the tiny run reconstructs its test windows: ARSNR above 4 dB (it reaches about 6)
    assert r["arsnr_trained"] > 4.0 and r["arsnr_pruned"] > 4.0, r
    # the .tflite computes what the pruned Keras model computes, within int16x8 quantization:
    # 1% of the output range, and the same ARSNR to 0.1 dB
    assert r["tflite_minus_keras"] <= 0.01 * r["keras_max"], r
    assert abs(r["arsnr_tflite"] - r["arsnr_pruned"]) < 0.1, r
    # and what the notebook printed is what it computed
    assert _printed(text, "ARSNR of the .tflite (dB):") == pytest.approx(r["arsnr_tflite"])
    assert _printed(text, "beta:") == 0.0


def test_ecg_autoencoder_reproduces_and_deploys_at_the_tiny_scale(tmp_path, monkeypatch):
    r, text = _run("ecg_autoencoder", tmp_path, monkeypatch)
    # every stage of the tiny reproduction ran and printed its line
    lines = text.count(" computed (") + text.count(" read back (")
    assert r["stages"] > 0 and lines == r["stages"], text[:3000]
    # the deployed FC1 (5% of its weights, int16x8) feeds the decoder what QAT Keras computes:
    # within 1% of the code's range, the same ARSNR to 0.05 dB
    assert r["tflite_minus_keras"] <= 0.01 * r["keras_max"], r
    assert abs(r["arsnr_deployed"] - r["arsnr_qat"]) < 0.05, r
    # the tiny scale trains for seconds: it still reconstructs above 1 dB (it reaches about 1.7)
    assert r["arsnr_deployed"] > 1.0, r
    assert _printed(text, "deployed ARSNR (dB):") == pytest.approx(r["arsnr_deployed"])


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras3_notebook_trains_prunes_and_converts_on(backend, tmp_path, monkeypatch):
    r, text = _run("keras3", tmp_path, monkeypatch, backend=backend)
    assert r["backend"] == backend, r  # the kernel ran on the backend asked for
    assert f"on the {backend} backend" in text
    # trained to pure MAM, pruned to 10% of the encoder's weights, a MAM_SPARSE op in the file
    assert r["beta"] == 0.0 and r["kept"] == pytest.approx(0.10, abs=1e-3), r
    assert r["has_mam_sparse"] is True, r
    # the pruned model reconstructs its test windows (as the tf_keras quickstart: about 6 dB)
    assert r["arsnr_pruned"] > 4.0, r
    # the .tflite computes what the Keras 3 model computes on its own backend, within int16x8
    # quantization: 1% of the output range, the same ARSNR to 0.1 dB
    assert r["tflite_minus_keras"] <= 0.01 * r["keras_max"], r
    assert abs(r["arsnr_tflite"] - r["arsnr_pruned"]) < 0.1, r
    # the .keras file, loaded on the TensorFlow backend in another process, gives those bytes
    assert r["same_bytes_from_file"] is True, r
    assert "converted on the tensorflow backend" in text and "the same .tflite: True" in text
    assert _printed(text, "ARSNR of the .tflite (dB):") == pytest.approx(r["arsnr_tflite"])
