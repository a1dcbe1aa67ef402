"""Attention algorithms as schedule generators, one family per module, installed as ``iosim.models``.

Importing this package registers every family in ``iosim.registry``.
"""

from iosim.models import flash1, flash2, square_tiling, standard  # noqa: F401  (registration side effects)
