"""iosim's predictions beside validate_sparse.py's measurements (issue 23): compare_masks.py over the sparse cases.

    .venv/bin/python benchmarks/gpu/compare_sparse.py DIR/kernels.csv --profile h100 --out reports/validation/h100/sparse

Same table, rule and JSON as compare_masks.py (DRAM rows only where the *predicted* DRAM read > 1.15 × Q+K+V).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import compare_masks  # noqa: E402
import validate_sparse  # noqa: E402

if __name__ == "__main__":
    validate_sparse.install()
    sys.exit(compare_masks.main())
