"""The house's rules that import-linter cannot see: no module imports another module's private
names, every method the schema accepts is in the one methods table, and the table's families
agree with what peft does with them."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import tuiwiz
from tuiwiz.methods import METHOD_NAMES, METHODS
from tuiwiz.profile import schema

PACKAGE = Path(tuiwiz.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuiwiz") \
                    and node.module != here:
                found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)


def test_the_scanner_sees_a_private_import(tmp_path):
    """The check above fails on the thing it looks for (so an empty result means something)."""
    code = "from tuiwiz.plan.memory import _secret\nfrom tuiwiz.plan import memory\n"
    names = [a.name for node in ast.walk(ast.parse(code)) if isinstance(node, ast.ImportFrom)
             for a in node.names if a.name.startswith("_")]
    assert names == ["_secret"]


def test_the_schema_accepts_exactly_the_methods_in_the_table():
    union = typing.get_args(typing.get_args(schema.Method)[0])
    accepted = {typing.get_args(cls.model_fields["type"].annotation)[0] for cls in union}
    assert accepted == set(METHOD_NAMES)


def test_method_families_follow_what_the_method_trains():
    assert {m.name for m in METHODS.values() if m.mergeable} == {"lora", "qlora", "adalora", "ia3"}
    assert {m.name for m in METHODS.values() if m.whole_model} == {"full", "bitfit"}
    assert all(m.uses_peft for m in METHODS.values() if m.family != "full")
    assert [m.name for m in METHODS.values() if m.quantized] == ["qlora"]
    # adapters learn far faster than whole-model updates
    assert all(m.learning_rate > METHODS["full"].learning_rate for m in METHODS.values() if m.name != "full")
