"""The tree is the architecture: library packages import no service, and
services never import each other (STYLE.md habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_imports_no_service() -> None:
    offenders = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in (ROOT / "src" / "voxmesh").rglob("*.py")
        for m in _imports(p)
        if m == "services" or m.startswith(("services.", "tests", "bench"))
    ]
    assert offenders == []


def test_services_do_not_import_each_other() -> None:
    services = [d for d in (ROOT / "services").iterdir() if (d / "__init__.py").exists()]
    assert {d.name for d in services} >= {"asr_small", "asr_large", "router", "autoscaler"}
    offenders = []
    for service in services:
        for path in service.rglob("*.py"):
            for module in _imports(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != service.name:
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
                if parts[0] in ("tests", "bench"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []
