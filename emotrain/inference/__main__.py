"""`python -m emotrain.inference --model BUNDLE [TEXT ...]`: the same as `emotrain-predict`."""

import sys

from emotrain.inference.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
