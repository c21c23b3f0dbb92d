"""docs/errors.md matches the code: the table of (code, status) pairs is derived from the
source (every error class's `code`, every `code="…"` given to an error, every problem the
API builds itself, every refusal reason) and compared with the document, both ways."""

from __future__ import annotations

import ast
import importlib
import logging
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import zpay
from zpay.api.errors import _HTTP_CODES, problem_for
from zpay.chains.protocol import ChainError
from zpay.domain.errors import ZpayError
from zpay.domain.policy import Reason

SRC = Path(zpay.__file__).parent
DOC = SRC.parent.parent / "docs" / "errors.md"
# Not the HTTP API's: the SDK, the CLI, the demo, the server-rendered pages and MCP tools
# have their own surfaces (the MCP endpoint's own HTTP refusals are the API's).
EXCLUDED = ("client/", "web/", "mcp/", "cli.py", "demo.py", "__main__.py")
INCLUDED = ("mcp/http.py",)
# Codes that never reach an HTTP answer, and why.
NOT_ANSWERED = {
    "error": "the base class's default; every raise names its code",
    "approved": "the audit log's reason for an allowed attempt, not an error",
    "anvil_not_found": "start-up of a local EVM chain only",
    "anvil_start_failed": "start-up of a local EVM chain only",
    "anvil_state_busy": "start-up of a local EVM chain only",
    "ledger_violation": "a broken invariant: answered as 500 internal_error",
    "invalid_config": "start-up of a chain adapter only",
    "local_setup_failed": "start-up of a local chain only",
}
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if not rel.startswith(EXCLUDED) or rel in INCLUDED:
            yield rel, ast.parse(path.read_text())


def _error_classes() -> dict[str, type[BaseException]]:
    for info in pkgutil.walk_packages([str(SRC)], "zpay."):
        rel = info.name.removeprefix("zpay.").replace(".", "/")
        if not rel.startswith(tuple(e.rstrip("/").removesuffix(".py") for e in EXCLUDED)):
            importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    stack: list[type[BaseException]] = [ZpayError, ChainError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found


def _status_of(cls: type[BaseException], code: str) -> int | None:
    """The status the API answers for `cls` raised with `code` (None: not answered as such)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, "message")
    exc.code, exc.message, exc.extra = code, "message", {}  # type: ignore[attr-defined]
    logging.disable(logging.WARNING)  # problem_for logs chain errors reaching the API
    try:
        status, body = problem_for(exc)  # type: ignore[arg-type]
    finally:
        logging.disable(logging.NOTSET)
    return status if body["code"] == code else None


def derived_pairs() -> set[tuple[str, int | None]]:
    """(code, status) for every code the API can answer; status None where the code is
    answered under a status the source does not pin (e.g. re-raised by a helper)."""
    classes = _error_classes()
    pairs: set[tuple[str, int | None]] = set()

    def add(code: str, raiser: str | None) -> None:
        cls = classes.get(raiser or "")
        pairs.add((code, _status_of(cls, code) if cls is not None else None))

    class_codes: dict[str, str] = {}
    for _rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    targets = (stmt.targets if isinstance(stmt, ast.Assign)
                               else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
                    value = getattr(stmt, "value", None)
                    if (isinstance(value, ast.Constant) and isinstance(value.value, str)
                            and any(isinstance(t, ast.Name) and t.id == "code"
                                    for t in targets)):
                        class_codes[node.name] = value.value
                        add(value.value, node.name)
    for _rel, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            for kw in node.keywords:
                if kw.arg != "code":
                    continue
                if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    add(kw.value.value, name)
                elif (isinstance(kw.value, ast.Attribute) and kw.value.attr == "code"
                      and isinstance(kw.value.value, ast.Name)
                      and kw.value.value.id in class_codes):
                    add(class_codes[kw.value.value.id], name)
            args = node.args
            if name == "problem" and len(args) >= 2 and all(
                    isinstance(a, ast.Constant) for a in args[:2]):
                pairs.add((str(args[1].value), int(args[0].value)))  # type: ignore[arg-type,union-attr]
            if name == "release_unsent" and len(args) >= 3 and isinstance(args[2], ast.Constant):
                pairs.add((str(args[2].value), 402))  # a payment failure code
    pairs |= {(code, status) for status, code in _HTTP_CODES.items()}  # Litestar's own
    pairs |= {(str(v), 402) for k, v in vars(Reason).items() if not k.startswith("_")}
    return {(c, s) for c, s in pairs if c not in NOT_ANSWERED}


def documented_pairs() -> set[tuple[str, int]]:
    pairs: set[tuple[str, int]] = set()
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or not cells[1].isdigit():
            continue
        for code in re.findall(r"`([^`]+)`", cells[0]):
            if CODE.match(code):
                pairs.add((code, int(cells[1])))
    return pairs


def test_every_code_the_api_answers_is_documented_with_its_status() -> None:
    documented = documented_pairs()
    derived = derived_pairs()
    doc_codes = {c for c, _ in documented}
    missing = sorted(c for c, _ in derived if c not in doc_codes)
    assert not missing, f"codes answered but not in docs/errors.md: {missing}"
    wrong = sorted((c, s) for c, s in derived if s is not None and (c, s) not in documented)
    assert not wrong, f"documented under another status than the code answers: {wrong}"


def test_every_documented_code_exists() -> None:
    derived_codes = {c for c, _ in derived_pairs()}
    stale = sorted({c for c, _ in documented_pairs()} - derived_codes)
    assert not stale, f"docs/errors.md documents codes the code never answers: {stale}"


def test_the_derivation_sees_what_it_must() -> None:
    derived = derived_pairs()
    # Spot checks that the walk works (a broken walk would make the tests above vacuous).
    for pair in [("too_many_webhook_endpoints", 409), ("invalid_status", 422),
                 ("payment_not_found", 404), ("daily_limit", 402), ("malformed_json", 400),
                 ("unsupported_media_type", 415), ("database_unavailable", 503),
                 ("invalid_recipient", 422), ("merchant_key_required", 403),
                 ("missing_credentials", 401), ("transfer_never_submitted", 402),
                 ("request_body_too_large", 413), ("webhook_url_not_allowed", None)]:
        assert pair in derived, pair
    assert len(derived) > 60
