"""The runtime installed alone, as an engine would install it, into a fresh virtual environment.

Two facts: it brings torch (and what torch needs) and nothing else, and a pytest run there sees
no kv-canary plugin: no ``--model-mode``, no scenario items. About a minute, most of it unpacking
torch; offline wherever pip can reach a torch wheel (.ci/install's pin, and on hosted CI the index
in KV_CANARY_TORCH_INDEX).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "kv_canary", "harness", "mock_models")
TOOLING = {"fastapi", "uvicorn", "matplotlib", "click", "tqdm", "requests", "pydantic", "pyyaml", "triton", "pytest"}
PROJECT = "kv-canary"


def _run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def _build_wheel(work: Path) -> Path:
    # From a copy: building in place would leave build/ and egg-info in the checkout.
    source = work / "source"
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", work / "wheels", source)
    (wheel,) = (work / "wheels").glob("kv_canary-*.whl")
    return wheel


def _installed(report: dict) -> dict[str, list[Requirement]]:
    return {
        canonicalize_name(item["metadata"]["name"]): [
            Requirement(text) for text in item["metadata"].get("requires_dist", [])
        ]
        for item in report["install"]
    }


def _needed_by(root: str, installed: dict[str, list[Requirement]], environment: Mapping[str, str]) -> set[str]:
    """Every distribution ``root`` needs, transitively, without extras, under ``environment``."""
    needed: set[str] = set()
    pending = [root]
    while pending:
        for requirement in installed.get(pending.pop(), []):
            name = canonicalize_name(requirement.name)
            if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            if name not in needed:
                needed.add(name)
                pending.append(name)
    return needed


def test_the_runtime_installs_alone_with_torch_and_leaves_pytest_runs_alone(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"

    # 1. What comes with it: torch, pinned to this environment's build (a bare `torch` could
    # resolve to a multi-GB CUDA wheel), and torch's own requirements; nothing of the tooling.
    torch_index = os.environ.get("KV_CANARY_TORCH_INDEX")
    report_file = tmp_path / "install-report.json"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        *(["--index-url", torch_index] if torch_index else []),
        "--report",
        report_file,
        f"torch=={torch.__version__.split('+')[0]}",
        wheel,
    )
    installed = _installed(json.loads(report_file.read_text()))
    environment = default_environment()  # the venv's interpreter is this one
    unconditional = [
        str(requirement)
        for requirement in installed[PROJECT]
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""})
    ]
    assert unconditional == ["torch>=2.6"]
    needed = _needed_by(PROJECT, installed, environment)
    assert "torch" in needed
    assert set(installed) == {PROJECT} | needed, f"installed beyond the runtime's needs: {set(installed) - needed}"
    assert not set(installed) & TOOLING, f"tooling came with the runtime: {set(installed) & TOOLING}"

    # 2. The runtime imports with what came (the SGLang integration too, which needs SGLang only
    # once a tree is walked), and pulls in no tooling module.
    imported = _run(python, "-c", _IMPORT_THE_RUNTIME).stdout.split()
    assert imported == [], f"importing the runtime imported tooling: {imported}"

    # 3. No entry point of the runtime loads tooling into its host (pytest, SGLang's plugin loader, ...):
    # each names a kv_canary module, but the console script.
    entry_points = _run(python, "-c", _LIST_ENTRY_POINTS).stdout.splitlines()
    loading_tooling = [
        line
        for line in entry_points
        if not line.startswith("console_scripts ") and not line.split()[2].startswith("kv_canary.")
    ]
    assert loading_tooling == [], f"entry points of the runtime that load tooling: {loading_tooling}"

    # 4. The console script is there (a script cannot depend on an extra) and says what to install.
    console = subprocess.run(
        [str(venv / "bin" / "kv-canary"), "list"], capture_output=True, text=True, timeout=60, check=False
    )
    assert console.returncode == 2 and "pip install 'kv-canary[harness" in console.stderr, console.stderr

    # 5. A pytest run in that environment: no plugin, no option, no scenario items.
    _run(python, "-m", "pip", "install", "-q", "pytest")
    project = tmp_path / "engine_project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_engine.py").write_text("def test_engine():\n    pass\n")
    (project / "scenarios").mkdir()
    shutil.copy2(REPO_ROOT / "scenarios" / "baseline.yaml", project / "scenarios")
    collected = _run(python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", cwd=project).stdout
    assert "test_engine.py::test_engine" in collected and "1 test collected" in collected
    assert "baseline.yaml" not in collected
    help_text = _run(python, "-m", "pytest", "--help", cwd=project).stdout
    assert "--model-mode" not in help_text and "kv-canary" not in help_text
    plugins = _run(python, "-m", "pytest", "--trace-config", "--collect-only", "-q", cwd=project).stdout
    assert "harness.pytest_plugin" not in plugins and "kv_canary" not in plugins
    refused = subprocess.run(
        [str(python), "-m", "pytest", "--model-mode", "mha"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 4 and "unrecognized arguments: --model-mode" in refused.stderr


_IMPORT_THE_RUNTIME = """
import sys
import kv_canary
import kv_canary.integrations.sglang
from kv_canary import CanaryConfig, install_canary
tooling = {"fastapi", "uvicorn", "matplotlib", "click", "tqdm", "requests", "pydantic", "yaml"}
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & (tooling | {"harness", "mock_models"}))))
"""

_LIST_ENTRY_POINTS = """
import importlib.metadata
for entry_point in importlib.metadata.distribution("kv-canary").entry_points:
    print(entry_point.group, entry_point.name, entry_point.value)
"""
