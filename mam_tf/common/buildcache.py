"""Where mam-tf keeps what it builds on first use (the fused TensorFlow op, the C core, the
Cortex-M7 firmware): ``$MAM_TF_CACHE``, default ``~/.cache/mam-tf``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MAM_TF_CACHE") or Path.home() / ".cache" / "mam-tf")
