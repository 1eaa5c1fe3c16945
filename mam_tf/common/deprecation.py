"""The warning every stage raises for a name of mam-tf that moved or is going away."""
from __future__ import annotations

__all__ = ["MamTfDeprecationWarning", "REMOVED_IN"]

#: the release that drops what is deprecated now
REMOVED_IN = "0.3"


class MamTfDeprecationWarning(FutureWarning):
    """A name of mam-tf that moved; shown by default, unlike DeprecationWarning."""
