"""`reproduce transformer`: its command line (the common options; the scales set the rest)."""
from __future__ import annotations

from mam_tf.experiments import base
from mam_tf.experiments.transformer.config import SCALES

__all__ = ["add_command"]


def add_command(subparsers, common):
    """Adds ``reproduce transformer`` (``common``: the shared options' parent parser)."""
    from mam_tf.experiments import transformer

    return base.add_parser(
        subparsers, common, transformer.EXPERIMENT,
        help="a transformer encoder block with a MAM MLP: MAC vs MAM at 10%% of the MLP kept, "
             "int8 on the host runtime and the Cortex-M7",
        description=transformer.__doc__,
        epilog="scales: " + "; ".join(
            f"{k}: {v.get('samples', 4000)} sequences, {v.get('epochs', 12)} epochs, "
            f"{len(v['seeds'])} seed(s)" for k, v in SCALES.items()))
