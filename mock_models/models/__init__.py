"""Tiny transformer-shaped models whose weights come from a seed, and the token oracle."""
