"""Derivative expressions and their renderings (arrays, NumPy block programs, CUDA kernels)."""
