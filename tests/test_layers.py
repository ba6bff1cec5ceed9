"""The arrows point down: domain <- store, transport <- services <- web, cli. Every import in
the package is read (those inside functions too, where an upward one would hide)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# What each layer may import from the package, besides itself.
ALLOWED = {
    "domain": set(),
    "config": {"domain"},
    "store": {"domain", "config"},
    "transport": {"domain", "config"},
    "services": {"domain", "config", "store", "transport"},
    "web": {"domain", "config", "store", "transport", "services"},
    "cli": {"domain", "config", "store", "transport", "services", "web"},
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "gateway"}


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        layer = relative.parts[1] if len(relative.parts) > 1 else ""
        if layer not in ALLOWED:
            continue  # gateway/__init__, __main__: the package's own entry
        for name in imports_of(path):
            target = name.split(".")
            if len(target) < 2 or target[1] == layer:
                continue
            if target[1] not in ALLOWED[layer]:
                wrong.append(f"{relative.as_posix()} imports {name}")
    return wrong


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.web.app import create_app\n")
    assert imports_of(module) == {"gateway.web.app"}
