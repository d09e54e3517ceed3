"""Weight-only int8/int4 quantization, applied to a loaded model from outside (see README)."""
