"""One exception root: every error class kv_canary defines derives from KvCanaryError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import kv_canary
from kv_canary import KvCanaryError


def _error_classes_defined_in_kv_canary() -> list[type[BaseException]]:
    found = []
    for module_info in pkgutil.walk_packages(kv_canary.__path__, prefix="kv_canary."):
        module = importlib.import_module(module_info.name)
        found += [
            value
            for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__
        ]
    return found


def test_every_error_class_kv_canary_defines_derives_from_the_root():
    classes = _error_classes_defined_in_kv_canary()
    assert len(classes) >= 8  # the root, the runtime's six, and the SGLang integration's
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, KvCanaryError)] == []


def test_the_errors_are_exported_and_keep_their_builtin_bases():
    exported = {name: getattr(kv_canary, name) for name in kv_canary.__all__}
    errors = {
        name: value for name, value in exported.items() if inspect.isclass(value) and issubclass(value, Exception)
    }
    assert set(errors) == {
        "KvCanaryError",
        "CanaryConfigError",
        "UnsupportedPoolError",
        "PoolLayoutError",
        "UnsupportedForwardModeError",
        "KvCanaryViolationError",
        "KvCanaryHealthError",
    }
    assert issubclass(kv_canary.CanaryConfigError, ValueError)
    assert issubclass(kv_canary.PoolLayoutError, ValueError)
    assert issubclass(kv_canary.UnsupportedPoolError, TypeError)
    assert issubclass(kv_canary.KvCanaryViolationError, RuntimeError)
