"""No float on any amount path: the money column refuses one, the parser refuses one, and no
module converts to float except for durations."""

from __future__ import annotations

import ast
import pathlib

import pytest

import zpay
from zpay.store.types import BaseUnits

# Durations (seconds) are the only floats zpay knows; each use is listed here by file.
ALLOWED_FLOAT_CALLS = {"settings.py", "_core.py"}


def test_money_column_refuses_float() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    for dialect in (sqlite.dialect(), postgresql.dialect()):
        with pytest.raises(TypeError):
            BaseUnits().process_bind_param(1.5, dialect)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            BaseUnits().process_result_value(1.5, dialect)


def test_no_float_conversion_outside_durations() -> None:
    root = pathlib.Path(zpay.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "float" and path.name not in ALLOWED_FLOAT_CALLS):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and any(
                part in path.parts for part in ("domain", "services", "store")
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} float literal")
    assert offenders == []
