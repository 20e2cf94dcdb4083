"""`python -m emotrain.export checkpoint=PATH [out=DIR] [quantize=true] [opset=17] ...`
(console script `emotrain-export`).

Writes an ONNX deployment bundle; see emotrain.inference.onnx_export and `python -m emotrain.export --help`.
"""

from __future__ import annotations

import sys

from emotrain.inference.cli import export_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
