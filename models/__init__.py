"""Attention algorithms as schedule generators, one family per module, installed as ``iosim.models``.

Importing this package registers every family in ``iosim.registry``.
"""

from iosim.models import block_sparse, flash1, flash2, flash2_bwd, splitkv, square_tiling, standard, varlen  # noqa: F401  (registration side effects)
from iosim.models import cudnn, fa3, fa4, lean  # noqa: F401  (persistent kernels)
from iosim.models import fastattention  # noqa: F401  (Ascend two-level tiling; Volta variant to come)
from iosim.models import sparse  # noqa: F401  (the seed papers' sparse family: models/sparse/)
