"""The shared pieces of the sparse-attention family (issue 23), importable from one place: choosing the blocks
(``models/sparse/selection.py``: density + seed, a block table, the user's scores; the problem and parameter
checks) and the kernel builders every family launches (``models/sparse/kernels.py``: the block-sparse FA2 kernels
over listed or permuted tiles, pooling, block scoring, selection, gathers and copies, the Triton launch helpers).
This module only re-exports them (``from iosim.models.sparse import common as sc`` keeps working).
"""

from iosim.models.sparse.kernels import (FA2_REGS, INT32, INT64, STREAM_REGS, attention_tensors, bh_grid, bsa_tiles,  # noqa: F401
                                         copy_kernel, fill_kernel, fill_tiles, gather_kernel, list_tables,
                                         listed_fwd_kernel, listed_tables, permuted_fwd_kernel, pool_gather_kernel,
                                         pool_kernel, rename_tensors, repeat_kv_kernels, score_kernel, select_kernel,
                                         sparse_fwd_kernel, tile_tables, tiles_dividing, tiles_of, triton_kernel,
                                         triton_smem)
from iosim.models.sparse.selection import (MAX_MASK_BLOCKS, PER_HEAD_LIMIT, check_int, check_params,  # noqa: F401
                                           choose_blocks, concrete, density_blocks, forced_blocks, keep_cumulative,
                                           keep_topk, kept_fraction, load_table, per_head_mask, pool_blocks,
                                           valid_blocks)
