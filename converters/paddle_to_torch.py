#!/usr/bin/env python
"""A Paddle-layout GLM checkpoint (pdparams or safetensors) to torch-layout safetensors that PyTorch/HF load.

Usage: python converters/paddle_to_torch.py SRC_DIR DST_DIR [more `paddle-glm convert` options, which override these]
"""
import sys

from paddle_glm.cli import main

DEFAULTS = ["--from-layout", "paddle", "--to-layout", "torch", "--to", "safetensors"]

if __name__ == "__main__":
    sys.exit(main(["convert", *DEFAULTS, *sys.argv[1:]]))
