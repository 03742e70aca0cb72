"""The package's import surface: light imports, lazy public names, one version."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

# Core modules that must import without torch (or transformers): a service that only routes on an
# exported ONNX router, and every tool that reads logs or reports, must not pay torch's import.
TORCH_FREE = [
    "neural_router",
    "neural_router.pool",
    "neural_router.validation",
    "neural_router.router",
    "neural_router.data.dataset",
    "neural_router.card",
    "neural_router.modeling.config",
    "neural_router.modeling.text",
    "neural_router.inference.interface",
    "neural_router.inference.predictors",
    "neural_router.policy.routing",
    "neural_router.policy.exploration",
    "neural_router.evaluation.metrics",
    "neural_router.evaluation.baselines",
    "neural_router.feedback.store",
    "neural_router.feedback.offpolicy",
]


def _imports_in_fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_neural_router_does_not_import_torch():
    r = _imports_in_fresh_interpreter("import neural_router, sys; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_core_module_does_not_import_torch(module):
    code = (f"import sys, {module}; heavy = sorted({{'torch', 'transformers'}} & set(sys.modules)); "
            "assert not heavy, heavy")
    r = _imports_in_fresh_interpreter(code)
    assert r.returncode == 0, f"import {module} pulls in torch/transformers:\n{r.stderr[-2000:]}"


def test_public_names_load_on_first_use():
    import neural_router
    from neural_router.inference.interface import Predictions
    from neural_router.policy.routing import Preferences
    from neural_router.router import Router

    assert neural_router.Router is Router
    assert neural_router.Preferences is Preferences and neural_router.Predictions is Predictions
    assert set(neural_router.__all__) == {"Router", "RouteResult", "ModelPool", "ModelSpec", "Predictions",
                                          "RequestFeatures", "Preferences", "Constraints"}
    assert set(neural_router.__all__) <= set(dir(neural_router))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        neural_router.Nope  # noqa: B018


def test_version_comes_from_the_distribution():
    import neural_router

    assert neural_router.__version__ == version("neural-router")


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages by name (training/, serving/ and configs/ install under
    neural_router): a new sub-package missing from that list would be left out of the wheel."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11

    repo = Path(__file__).resolve().parents[1]
    tool = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: repo / path for name, path in tool["package-dir"].items()}
    dirs.setdefault("neural_router", repo / "neural_router")
    found = set()
    for name, root in dirs.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    assert found == set(tool["packages"]), (sorted(found - set(tool["packages"])),
                                            sorted(set(tool["packages"]) - found))
