"""Modules that moved in 0.2 (the layout by stage) stay importable under their old names for
one release, with a :class:`MamTfDeprecationWarning` naming the new place."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from mam_tf.common.deprecation import REMOVED_IN, MamTfDeprecationWarning

#: old module -> new module
MOVED = {
    "mam_tf.layers": "mam_tf.train.layers",
    "mam_tf.ops": "mam_tf.train.mam_op",
    "mam_tf.fused": "mam_tf.train.fused",
    "mam_tf.training": "mam_tf.train.schedule",
    "mam_tf.pruning": "mam_tf.train.pruning",
    "mam_tf.quantization": "mam_tf.train.quantization",
    "mam_tf.sparse": "mam_tf.deploy.offset_csr",
    "mam_tf.reference": "mam_tf.deploy.reference",
    "mam_tf.options": "mam_tf.deploy.options",
    "mam_tf.flatbuffer": "mam_tf.deploy.flatbuffer",
    "mam_tf.convert": "mam_tf.deploy.convert",
    "mam_tf.check": "mam_tf.deploy.check",
    "mam_tf.fuzz": "mam_tf.deploy.fuzz",
    "mam_tf.runtime": "mam_tf.deploy.runtime",
    "mam_tf.core": "mam_tf.deploy.native",
    "mam_tf.sparse_op": "mam_tf.deploy.node",
    "mam_tf.mcu": "mam_tf.device.mcu",
    "mam_tf.bench_mcu": "mam_tf.bench.mcu",
    "mam_tf.bench_train": "mam_tf.bench.train",
    "ecg_data.bench": "mam_tf.bench.data",
}
#: the attributes of ``mam_tf`` that were modules (``mam_tf.pruning`` and ``mam_tf.quantization``
#: stay public attributes without a warning)
MOVED_SUBMODULES = {old.split(".", 1)[1] for old in MOVED if old.startswith("mam_tf.")} - {
    "pruning", "quantization"}


def import_moved(old: str, stacklevel: int = 2):
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new}; import it from there ({old} goes in mam-tf "
                  f"{REMOVED_IN})", MamTfDeprecationWarning, stacklevel=stacklevel)
    return importlib.import_module(new)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return import_moved(spec.name, stacklevel=3)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
