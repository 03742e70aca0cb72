"""Import direction: the engine runs without the web stack, the core imports neither the training
nor the serving layer, and nothing imports the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE_MODULES = ["neural_router.serving.config"] + [
    f"neural_router.serving.engine.{p.stem}" for p in sorted((REPO / "serving" / "engine").glob("*.py"))
    if p.stem != "__init__"]


def _module_level_imports(path: Path) -> list[str]:
    """Modules imported by ``path`` outside function bodies (a function's lazy import is dispatch)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.extend(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append(child.module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _all_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_engine_imports_no_web_stack() -> None:
    assert len(ENGINE_MODULES) >= 5
    code = ("import sys\n" + "".join(f"import {m}\n" for m in ENGINE_MODULES) +
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn') "
            "or m.startswith('neural_router.serving.api')))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


def test_engine_sources_never_name_the_api() -> None:
    for path in sorted((REPO / "serving" / "engine").glob("*.py")):
        bad = [m for m in _all_imports(path)
               if m.split(".")[0] in ("fastapi", "starlette") or m.startswith("neural_router.serving.api")]
        assert not bad, (path.name, bad)


def test_the_core_imports_neither_training_nor_serving() -> None:
    files = sorted((REPO / "neural_router").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        imports = _module_level_imports(path) if path.name == "cli.py" else _all_imports(path)
        bad = [m for m in imports if m.startswith(("neural_router.training", "neural_router.serving"))]
        assert not bad, (str(path.relative_to(REPO)), bad)


def test_training_and_serving_do_not_import_each_other() -> None:
    for root, other in (("training", "neural_router.serving"), ("serving", "neural_router.training")):
        for path in sorted((REPO / root).rglob("*.py")):
            bad = [m for m in _all_imports(path) if m.startswith(other)]
            assert not bad, (str(path.relative_to(REPO)), bad)


def test_no_library_code_imports_the_cli() -> None:
    roots = [REPO / "neural_router", REPO / "serving", REPO / "training"]
    allowed = {REPO / "neural_router" / "__main__.py"}
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        if path not in allowed:
            assert "neural_router.cli" not in _all_imports(path), path.relative_to(REPO)


def test_python_dash_m_neural_router_is_the_cli() -> None:
    p = subprocess.run([sys.executable, "-m", "neural_router", "serve", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--router" in p.stdout and "--config" in p.stdout
    assert not (REPO / "serving" / "__main__.py").exists()
