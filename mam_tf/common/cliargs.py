"""Argparse pieces every command shares: the output option and the old spellings of renamed
flags, kept for one release as hidden aliases that print one deprecation line."""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_out", "add_deprecated", "required_out", "REMOVED_IN"]

#: the release that drops the old spellings
REMOVED_IN = "0.3"

_VALUE = object()  # the old flag takes a value (as the new one does)


def add_out(parser, help, *, required=False, metavar="PATH"):
    """``-o/--out PATH``: where the command writes (a file or a folder), stored as ``out``.

    A required one is checked by the command with :func:`required_out`, not by argparse, so
    that a deprecated alias of it (``--output``, ``--dest``) satisfies it too.
    """
    if required:
        help = f"{help} (required)"
    return parser.add_argument("-o", "--out", metavar=metavar, help=help)


def required_out(args):
    """``args.out``, or ValueError ``-o/--out is required`` when it was not given (``mam-tf``
    prefixes the command's name)."""
    if not args.out:
        raise ValueError("-o/--out is required: where to write")
    return args.out


def add_deprecated(parser, old, new, *, dest, const=_VALUE, **kwargs):
    """Keeps ``old`` working as a hidden alias of ``new``.

    With ``const`` the old flag takes no value and stores ``const`` into ``dest`` (an inverted
    switch such as ``--per-tensor``, which stores ``per_row=False``); without it the old flag
    takes a value as ``new`` does (``kwargs``: its ``type``, ``nargs``...). Using it prints
    ``<prog>: <old> is deprecated (goes in mam-tf 0.3); use <new>`` on stderr, once per use.
    """
    takes_value = const is _VALUE

    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: {option_string} is deprecated (goes in mam-tf {REMOVED_IN}); "
                  f"use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values if takes_value else const)

    if not takes_value:
        kwargs["nargs"] = 0
    # default=SUPPRESS: the alias never overwrites the default the new option set
    return parser.add_argument(old, dest=dest, action=_Deprecated, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS, **kwargs)
