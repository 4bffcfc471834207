"""Canary kernels: each Triton kernel sits beside a torch reference of the same signature."""
