"""`reproduce mwscas`: its command-line options, mapped to :class:`.config.Config` fields."""
from __future__ import annotations

import argparse

from mam_tf.experiments import base
from mam_tf.experiments.mwscas.config import FRACTIONS, NAME

__all__ = ["add_command", "fine_tune_arg"]

_fractions = base.parse_fractions("--fine-tune")


def fine_tune_arg(text):
    """``--fine-tune``: kept fractions among the pruned points below 1, or 'none'."""
    fracs = _fractions(text)
    by_value = {round(f, 6): f for f in FRACTIONS if f < 1}
    bad = [f for f in fracs if round(f, 6) not in by_value]
    if bad:
        raise argparse.ArgumentTypeError(
            f"--fine-tune is {text!r}; the fractions must be among the pruned points "
            f"{','.join(f'{f:g}' for f in by_value.values())}")
    return tuple(by_value[round(f, 6)] for f in fracs)


def _overrides(args):
    return dict(fine_tune=args.fine_tune, epochs=args.epochs, vc_epochs=args.vc_epochs,
                windows=args.windows, records=args.records, train_records=args.train_records,
                deploy_windows=args.deploy_windows, mcu=False if args.no_mcu else None,
                bandpass=() if args.no_bandpass else None)


def add_command(subparsers, common):
    """Adds ``reproduce mwscas`` (``common``: the shared options' parent parser)."""
    from mam_tf.experiments import mwscas

    p = base.add_parser(subparsers, common, mwscas.EXPERIMENT, overrides=_overrides,
                        help="seed 004: the ECG autoencoder, MAC vs MAM under pruning, QAT "
                        "int16x8, deployed", description=mwscas.__doc__)
    g = p.add_argument_group(f"{NAME} options")
    g.add_argument("--records", default=None, metavar="DIR",
                   help="also evaluate every trained model on the WFDB records of DIR "
                   "(e.g. MIT-BIH Arrhythmia, lead MLII)")
    g.add_argument("--train-records", default=None, metavar="DIR",
                   help="train on the windows of the WFDB records of DIR instead of synthetic ones")
    g.add_argument("--no-bandpass", action="store_true",
                   help="do not band-pass filter records (default 0.5-40 Hz before windowing)")
    g.add_argument("--no-mcu", action="store_true",
                   help="leave out the Cortex-M7 figures even when its toolchain is present")
    g.add_argument("--epochs", type=int, default=None, help="float epochs (default: the scale's)")
    g.add_argument("--vc-epochs", type=int, default=None, metavar="N",
                   help="MAM: epochs of the MAC -> MAM blend, beta from 1 down to 0 in N "
                   "equal steps, one per epoch (default: the scale's, 1: the first epoch MAC)")
    g.add_argument("--fine-tune", type=fine_tune_arg, default=None, metavar="FRACTIONS|none",
                   help="FC1 fractions kept at which the magnitude-pruned model is also "
                   "fine-tuned (an epoch of QAT with the mask held), e.g. 0.05,0.02; 'none' for "
                   "no fine-tuned curve (default: the scale's; small: 0.2,0.1,0.05,0.02,0.01)")
    g.add_argument("--windows", type=int, default=None,
                   help="synthetic windows in all (default: the scale's)")
    g.add_argument("--deploy-windows", type=int, default=None,
                   help="test windows run through the host runtime per deployed model "
                   "(default: the scale's; about 60-120 ms each on a 2-core machine)")
    return p
