"""Arrays from files, for the commands that take them (``--data``, ``--target``)."""
from __future__ import annotations

import zipfile

import numpy as np

__all__ = ["load_array"]


def load_array(path, key=None, *, key_flag="--data-key"):
    """The array in a .npy, or the one (or ``key``) array of a .npz.

    Raises ValueError naming the file for anything unreadable; a .npz of several arrays and no
    ``key`` is refused with the arrays it holds and ``key_flag``, the option that chooses one.
    """
    path = str(path)
    try:
        loaded = np.load(path)
        if not hasattr(loaded, "files"):  # a .npy (whatever its name)
            return loaded
        with loaded as z:
            if key is None:
                if len(z.files) != 1:
                    raise ValueError(f"{path} holds arrays {z.files}; choose one with {key_flag}")
                key = z.files[0]
            if key not in z.files:
                raise ValueError(f"{path} has no array {key!r}; it holds {z.files}")
            return z[key]
    except OSError as err:
        raise ValueError(f"cannot read {path!r}: {err.strerror or err}") from None
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path!r} is not a readable .npy/.npz array file ({err})") from None
