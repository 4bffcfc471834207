"""A stand-in for torchvision, so SGLang's memory modules import beside the CPU build of torch.

SGLang 0.5.23 imports torchvision on the way to its memory pools
(``sglang.srt.mem_cache.memory_pool`` -> ``sglang.srt.configs`` -> ``configs/nano_nemotron_vl.py``
-> ``multimodal/internvl_utils.py``: ``import torchvision.transforms``, and
``configs/deepseek_ocr.py``), but only uses it in image preprocessing. PyPI's torchvision wheels
are linked against a CUDA build of torch and fail to import beside the CPU one ("operator
torchvision::nms does not exist"). So the mock engine's SGLang memory backend and the tests of
``tests/unit/sglang`` put this stub in ``sys.modules`` when the real package does not import.
Nothing in kv_canary needs it, and a machine with SGLang's full GPU install never uses it.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import sys
import types


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def install_if_missing() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
        return
    except (ImportError, RuntimeError):
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    # transformers caches "is torchvision available?" on first use: answer it (False) before the
    # stub exists, so transformers keeps to its PIL paths instead of importing torchvision's.
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()
    root, transforms, functional = (
        _module(name) for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    )
    vars(root).update(transforms=transforms)
    vars(transforms).update(functional=functional, InterpolationMode=InterpolationMode)
    vars(functional).update(InterpolationMode=InterpolationMode)
    sys.modules.update({module.__name__: module for module in (root, transforms, functional)})


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "stub: torchvision does not import beside the CPU build of torch")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _unavailable(f"{name}.{attribute}")

    vars(module)["__getattr__"] = __getattr__  # module-level __getattr__ (PEP 562)
    return module


def _unavailable(qualname: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{qualname}: torchvision is stubbed here (PyPI's build needs a CUDA torch)")

    return call
