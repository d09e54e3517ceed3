#!/usr/bin/env python
"""Safetensors shards (PaddleNLP or HF; HF's are transposed to the Paddle layout) to PaddleNLP .pdparams shards.

Usage: python converters/safetensors_to_pdparams.py SRC_DIR DST_DIR
       [more `paddle-glm convert` options, which override these]
"""
import sys

from paddle_glm.cli import main

DEFAULTS = ["--to", "pdparams"]

if __name__ == "__main__":
    sys.exit(main(["convert", *DEFAULTS, *sys.argv[1:]]))
