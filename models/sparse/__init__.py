"""The seed papers' sparse-attention family (issue 23), one module per family. The pieces several families use live
in two modules: ``selection`` (where the kept blocks come from: a density and a seed, a block table from a file, or
the user's attention scores; the problem and parameter checks) and ``kernels`` (the kernels every family launches:
the block-sparse FA2 kernels, pooling, block scoring, selection, gathers, copies); ``common`` re-exports both.

Importing this package registers every family in ``iosim.registry``.
"""

import importlib
import pkgutil

SHARED = ("common", "kernels", "selection")  # shared pieces, not families

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in SHARED and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
