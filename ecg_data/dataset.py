"""The synthetic ECG data set of seed 004: 100 000 ECGSYN windows, 80/10/10, cached on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import synthetic
from .windows import split_windows

__all__ = ["build_synthetic_dataset", "synthetic_dataset_path", "default_cache_dir"]

_SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    """``$MAM_TF_DATA_DIR`` if set, else ``~/.cache/mam-tf/ecg_data``."""
    env = os.environ.get("MAM_TF_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mam-tf" / "ecg_data"


def _params(n_windows, length, fs, heart_rate, snr_db, seed, splits, model):
    hr = (float(heart_rate), float(heart_rate)) if np.ndim(heart_rate) == 0 else tuple(
        float(v) for v in heart_rate
    )
    params = {
        "generator": "ecgsyn",
        "generator_version": synthetic.GENERATOR_VERSION,
        "chunk_size": synthetic.CHUNK_SIZE,
        "warmup_s": synthetic.WARMUP_S,
        "history_s": synthetic.HISTORY_S,
        "oversampling": synthetic.DEFAULT_OVERSAMPLING,
        "n_windows": int(n_windows),
        "length": int(length),
        "fs": float(fs),
        "heart_rate": list(hr),
        "snr_db": None if snr_db is None else float(snr_db),
        "seed": int(seed),
        "splits": [float(s) for s in splits],
        "scale": "window",
        "model": dataclasses.asdict(model or synthetic.EcgsynModel()),
    }
    return json.loads(json.dumps(params))  # the form it takes once stored (lists, not tuples)


def synthetic_dataset_path(
    n_windows=100_000,
    length=256,
    fs=256,
    heart_rate=(60, 100),
    snr_db=None,
    seed=0,
    *,
    splits=(0.8, 0.1, 0.1),
    model=None,
    cache_dir=None,
) -> Path:
    """Where ``build_synthetic_dataset`` caches a data set: a name readable by people plus a
    hash of every parameter (and of the generator's version)."""
    params = _params(n_windows, length, fs, heart_rate, snr_db, seed, splits, model)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    snr = "clean" if snr_db is None else f"snr{float(snr_db):g}dB"
    name = f"ecgsyn_n{int(n_windows)}_len{int(length)}_fs{float(fs):g}_{snr}_seed{int(seed)}_{key}.npz"
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / name


def _load(path, params):
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = json.loads(str(f["params"]))
            if stored != params:
                return None
            return {k: f[k] for k in _SPLITS}
    except Exception as exc:  # a truncated or foreign file: rebuild it
        warnings.warn(f"build_synthetic_dataset: ignoring unreadable cache '{path}': {exc}")
        return None


def build_synthetic_dataset(
    n_windows=100_000,
    length=256,
    fs=256,
    heart_rate=(60, 100),
    snr_db=None,
    seed=0,
    *,
    splits=(0.8, 0.1, 0.1),
    model=None,
    cache_dir=None,
    progress=True,
    workers=None,
):
    """ECGSYN windows split into ``{"train", "val", "test"}`` float32 arrays [n_i, length].

    The windows are ``synthetic_windows(n_windows, length, fs, heart_rate, snr_db, seed)``
    (each scaled to [0, 1]), split consecutively (they are i.i.d.) by ``splits``. The result is
    cached as an npz under ``cache_dir`` (default ``default_cache_dir()``; ``False`` disables the
    cache) with a key derived from all parameters, and loaded from there next time.
    ``workers``: generator processes (None: one per CPU); the data do not depend on it.
    """
    if len(splits) != 3:
        raise ValueError(f"build_synthetic_dataset: splits is {splits!r}; need 3 fractions")
    params = _params(n_windows, length, fs, heart_rate, snr_db, seed, splits, model)
    path = None
    if cache_dir is not False:
        path = synthetic_dataset_path(
            n_windows, length, fs, heart_rate, snr_db, seed, splits=splits, model=model,
            cache_dir=cache_dir,
        )
        if path.is_file():
            data = _load(path, params)
            if data is not None:
                return data
    x = synthetic.synthetic_windows(
        n_windows, length, fs, heart_rate, snr_db, seed, model=model, workers=workers,
        progress=progress,
    )
    data = split_windows(x, splits, _SPLITS)
    data = {k: np.ascontiguousarray(v) for k, v in data.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash never leaves a truncated file under the final name.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(tmp, params=np.array(json.dumps(params, sort_keys=True)), **data)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is for everyone
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return data
