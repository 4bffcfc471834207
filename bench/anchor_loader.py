"""Load SGLang 0.5.23's kv_canary verify kernel from ``.anchor/`` (see shared/anchor/make_anchor.sh).

Only its kernel package is unpacked there, not SGLang: the few SGLang modules it imports at
load time are replaced by small stand-ins before the import.
"""

from __future__ import annotations

import pathlib
import sys
import types

import torch


def _stand_in(name: str, package_dir: pathlib.Path | None = None, **attributes: object) -> None:
    module = types.ModuleType(name)
    if package_dir is not None:
        module.__path__ = [str(package_dir)]
    module.__dict__.update(attributes)
    sys.modules[name] = module


def load_anchor(anchor_dir: pathlib.Path) -> types.SimpleNamespace | None:
    """The anchor's verify API, or None when ``anchor_dir`` was not prepared."""
    root = anchor_dir / "sglang"
    if not (root / "kernels" / "ops" / "kv_canary" / "verify.py").exists():
        return None
    sys.path.insert(0, str(anchor_dir))
    _stand_in("sglang", root)
    _stand_in("sglang.srt", root / "srt")
    _stand_in("sglang.srt.utils", root / "srt" / "utils")
    _stand_in(
        "sglang.srt.utils.common",
        is_cuda=torch.cuda.is_available,
        is_hip=lambda: False,
        is_sail=lambda: False,
        get_cuda_version=lambda: tuple(int(part) for part in str(torch.version.cuda).split(".")),
    )
    _stand_in("sglang.utils", is_in_ci=lambda: False)
    _stand_in("sglang.kernels", root / "kernels")
    _stand_in("sglang.kernels.ops", root / "kernels" / "ops")
    from sglang.kernels.ops.kv_canary import consts, verify

    return types.SimpleNamespace(consts=consts, verify=verify)
