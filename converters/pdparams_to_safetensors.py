#!/usr/bin/env python
"""PaddleNLP .pdparams shards to PaddleNLP safetensors shards (Paddle layout, dtype kept).

Usage: python converters/pdparams_to_safetensors.py SRC_DIR DST_DIR
       [more `paddle-glm convert` options, which override these]
"""
import sys

from paddle_glm.cli import main

DEFAULTS = ["--to", "safetensors"]

if __name__ == "__main__":
    sys.exit(main(["convert", *DEFAULTS, *sys.argv[1:]]))
