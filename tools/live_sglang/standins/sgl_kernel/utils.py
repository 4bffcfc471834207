"""``is_arch_support_pdl``: programmatic dependent launch needs the real kernels; the stand-in says no."""


def is_arch_support_pdl() -> bool:
    return False
