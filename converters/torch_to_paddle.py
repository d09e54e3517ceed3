#!/usr/bin/env python
"""A PyTorch/HF GLM checkpoint (pytorch_model.bin or torch-layout safetensors) to Paddle-layout safetensors.

Usage: python converters/torch_to_paddle.py SRC_DIR DST_DIR [more `paddle-glm convert` options, which override these]
"""
import sys

from paddle_glm.cli import main

DEFAULTS = ["--from-layout", "torch", "--to-layout", "paddle", "--to", "safetensors"]

if __name__ == "__main__":
    sys.exit(main(["convert", *DEFAULTS, *sys.argv[1:]]))
