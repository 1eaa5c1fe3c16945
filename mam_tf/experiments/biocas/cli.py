"""`reproduce biocas`: its command line (the common options; the scales set the rest)."""
from __future__ import annotations

from mam_tf.experiments import base
from mam_tf.experiments.biocas.config import SCALES

__all__ = ["add_command"]


def add_command(subparsers, common):
    """Adds ``reproduce biocas`` (``common``: the shared options' parent parser)."""
    from mam_tf.experiments import biocas

    return base.add_parser(
        subparsers, common, biocas.EXPERIMENT,
        help="seed 000: the compressed-sensing Deep Neural Oracle, MAC vs MAM under pruning",
        description=biocas.__doc__,
        epilog="scales: " + "; ".join(
            f"{k}: {v['windows']} windows, {v['epochs']} epochs, {len(v['seeds'])} seed(s), "
            f"{len(v['fractions'])} fractions" for k, v in SCALES.items()))
