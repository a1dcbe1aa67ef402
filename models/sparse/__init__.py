"""The seed papers' sparse-attention family (issue 23), one module per family; ``common`` holds the shared pieces:
where the kept blocks come from (a density and a seed, a block table from a file, or the user's attention scores),
and the kernels every family launches (the block-sparse FA2 kernel, pooling, block scoring, selection, gathers).

Importing this package registers every family in ``iosim.registry``.
"""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "common" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
