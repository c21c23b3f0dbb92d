"""Core statements run straight on asyncpg: the payment hot path's executor on PostgreSQL.

SQLAlchemy's async engine costs about 0.5 ms of CPU per statement on this kind of machine
(greenlet hops, its execution context, a BEGIN round trip even for a read) — measured
(benchmarks/hot_path.py) as more than half of a payment's server time, against ~0.1 ms for
asyncpg itself. `DirectExecutor` runs the same Core statements on connections of the
hot path's own pool (store.direct_pool), without that machinery:

- each statement shape is compiled ONCE by SQLAlchemy's own compiler for the asyncpg
  dialect (its cache key, as SQLAlchemy's own statement cache uses), and its values go
  through the columns' own type processors (money as `BaseUnits`, times as `UtcDateTime`),
  so what is written and read is exactly what the ORM path writes and reads;
- results answer like SQLAlchemy's (`one`, `first`, `scalar`, `scalar_one`, `scalars`,
  `all`, iteration; rows by attribute and `_mapping`) and errors are SQLAlchemy's
  (`IntegrityError`, `DBAPIError`), so the services cannot tell the two executors apart;
- reads outside a transaction run as single statements (no BEGIN/ROLLBACK: at READ
  COMMITTED each statement takes its own snapshot either way).

Only Core statements: an ORM entity select would answer columns where a caller expects
objects, so it is refused. On SQLite the hot path keeps SQLAlchemy's session (the single
writer is the limit there, not the driver).
"""

from __future__ import annotations

import collections
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import Select

from zpay.store.direct_pool import DirectPool

_DIALECT: Dialect = asyncpg_dialect()
_NUMERIC_OID = 1700
# PostgreSQL binds at most 65,535 values per statement; a combined write stays well under.
_MAX_BOUND_VALUES = 30_000
_MAX_ROWS_PER_INSERT = 64  # one shape per row count: a bounded number of statement texts
_MAX_SHAPES = 2000  # statement shapes; more means statements are built with inlined values


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bound parameters in positional order
    bind: tuple[Callable[[Any], Any] | None, ...]
    defaults: dict[str, Any]  # INSERT columns with a Python-side scalar default
    row: type[tuple[Any, ...]] | None  # None: no rows (the answer is a row count)
    results: tuple[Callable[[Any], Any] | None, ...]
    compiled: Any


class _Bound:
    """A compiled shape bound to one statement object: how each positional value is found
    — the caller's parameter, else a default or the statement's own value — worked out
    once, so a call only looks its values up (SQLAlchemy's `construct_params` walked
    every bind per call). Shapes it cannot plan exactly keep `construct_params`."""

    __slots__ = ("_slots", "compiled", "key")

    def __init__(self, compiled: _Compiled, key: Any) -> None:
        self.compiled, self.key = compiled, key
        self._slots = _plan(compiled, key)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if self._slots is None:
            compiled = self.compiled
            values = compiled.compiled.construct_params(
                {**compiled.defaults, **params}, extracted_parameters=self.key.bindparams)
            return [value if process is None or value is None else process(value)
                    for value, process in zip((values[n] for n in compiled.names),
                                              compiled.bind, strict=True)]
        args = []
        for key, name, fallback, required, process in self._slots:
            if key in params:
                value = params[key]
            elif name in params:
                value = params[name]
            elif required:
                raise sa_exc.InvalidRequestError(f"A value is required for bind parameter {key!r}")
            else:
                value = fallback
            args.append(value if process is None or value is None else process(value))
        return args


_Slot = tuple[str, str, Any, bool, Callable[[Any], Any] | None]


def _plan(compiled: _Compiled, key: Any) -> tuple[_Slot, ...] | None:
    """(parameter key, bind name, value if not given, required, type processor) for each
    positional value, as `construct_params` would find it; None where it does more
    (escaped names, binds with callables, collected or post-compiled parameters)."""
    inner = compiled.compiled
    if inner.escaped_bind_names or inner._collect_params or inner._render_postcompile:
        return None
    by_name: dict[str, Any] = {}
    for bind, name in inner.bind_names.items():
        if bind.callable:
            return None
        by_name.setdefault(name, bind)
    own = inner.construct_params({}, extracted_parameters=key.bindparams, _check=False)
    slots: list[_Slot] = []
    for name, process in zip(compiled.names, compiled.bind, strict=True):
        bind = by_name[name]
        if name in compiled.defaults:
            slots.append((bind.key, name, compiled.defaults[name], False, process))
        else:
            slots.append((bind.key, name, own[name], bool(bind.required), process))
    return tuple(slots)


def _bind_processor(type_: Any) -> Callable[[Any], Any] | None:
    return type_.dialect_impl(_DIALECT).bind_processor(_DIALECT)  # type: ignore[no-any-return]


def _result_processor(type_: Any) -> Callable[[Any], Any] | None:
    impl = type_.dialect_impl(_DIALECT)
    inner = getattr(impl, "impl_instance", impl)
    numeric = isinstance(inner, sqltypes.Numeric) and not isinstance(inner, sqltypes.Float)
    return impl.result_processor(_DIALECT, _NUMERIC_OID if numeric else None)  # type: ignore[no-any-return]


def _row_class(names: Sequence[str]) -> type[tuple[Any, ...]]:
    base = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
    fields = tuple(names)

    class Row(base):  # type: ignore[valid-type, misc]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(fields, self, strict=True))

    return Row


def _compile(stmt: Executable, column_keys: tuple[str, ...] | None, cache_key: Any) -> _Compiled:
    if not isinstance(stmt, ClauseElement):
        raise TypeError(f"not a Core statement: {stmt!r}")
    if isinstance(stmt, Select) and any(
            isinstance(d.get("expr"), type) for d in stmt.column_descriptions):
        raise TypeError("the direct executor answers rows, not ORM objects: select the "
                        "table (Model.__table__) or columns, not the mapped class")
    compiled: Any = stmt.compile(dialect=_DIALECT, column_keys=list(column_keys or ()) or None,
                            cache_key=cache_key)
    if "__[POSTCOMPILE_" in str(compiled):
        raise TypeError("expanding parameters (IN with a list) have no fixed shape: "
                        "spell the condition out")
    names = tuple(compiled.positiontup or ())
    bind = tuple(_bind_processor(compiled.binds[name].type) for name in names)
    defaults: dict[str, Any] = {}
    if isinstance(stmt, Insert):
        for column in stmt.table.columns:  # type: ignore[attr-defined]
            default = column.default
            if default is not None and default.is_scalar and column.key in names:
                defaults[column.key] = default.arg
    columns: list[Any] = []
    if isinstance(stmt, Select):
        columns = list(stmt.selected_columns)
    elif isinstance(stmt, UpdateBase) and stmt._returning:
        columns = list(stmt.exported_columns)
    row = _row_class([c.key if c.key is not None else f"c{i}" for i, c in enumerate(columns)]
                     ) if columns else None
    results = tuple(_result_processor(c.type) for c in columns)
    return _Compiled(str(compiled), names, bind, defaults, row, results, compiled)


class DirectResult:
    """A SQLAlchemy-like result over fetched rows (or a row count)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (sa_exc.NoResultFound("No row was found when one was required")
                   if not self._rows else
                   sa_exc.MultipleResultsFound("Multiple rows were found when one was required"))
        return self._rows[0]

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise sa_exc.MultipleResultsFound("Multiple rows were found when one was required")
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> DirectResult:
        return DirectResult([row[0] for row in self._rows], self.rowcount)


_COUNT = re.compile(r"(\d+)$")
_PLACEHOLDER = re.compile(r"\$(\d+)")
# `$n::TYPE` as the asyncpg dialect compiles a bound value (TYPE may be `NUMERIC(78, 0)` or
# `TIMESTAMP WITH TIME ZONE`).
_TYPED = r"\$(\d+)::([A-Z][A-Z ]*(?:\(\d+(?:, \d+)?\))?)"
_INSERT_ROW = re.compile(r"(INSERT INTO \w+ \([\w, ]+\)) VALUES \((.*)\)", re.S)
_UPDATE_BY_ID = re.compile(rf"UPDATE (\w+) SET (.*) WHERE \1\.id = {_TYPED}", re.S)
_COLUMNAR: dict[str, _Compiled | None] = {}


def _columnar(compiled: _Compiled) -> _Compiled | None:
    """An INSERT of one row, or an UPDATE of one row by id, as a statement that writes any
    number of rows from one array per value (`unnest`): one statement text whatever the
    row count, so PostgreSQL plans it once. None for any other shape."""
    if compiled.sql in _COLUMNAR:
        return _COLUMNAR[compiled.sql]
    sql = None
    if (insert := _INSERT_ROW.fullmatch(compiled.sql)) is not None:
        typed = re.findall(_TYPED, insert.group(2))
        if ", ".join(f"${n}::{t}" for n, t in typed) == insert.group(2):
            sql = f"{insert.group(1)} SELECT * FROM unnest({_arrays(typed)})"
    elif (update := _UPDATE_BY_ID.fullmatch(compiled.sql)) is not None:
        table, assignments, id_number, id_type = update.groups()
        typed = re.findall(rf"(\w+)={_TYPED}", assignments)
        if ", ".join(f"{c}=${n}::{t}" for c, n, t in typed) == assignments:
            names = {int(n): c for c, n, _ in typed} | {int(id_number): "zpay_row_id"}
            arrays = [(n, t) for _, n, t in typed] + [(id_number, id_type)]
            sql = (f"UPDATE {table} SET {', '.join(f'{c}=zpay_v.{c}' for c, _, _ in typed)} "
                   f"FROM unnest({_arrays(sorted(arrays, key=lambda a: int(a[0])))}) AS "
                   f"zpay_v({', '.join(names[n] for n in sorted(names))}) "
                   f"WHERE {table}.id = zpay_v.zpay_row_id")
    found = None
    if sql is not None and _PLACEHOLDER.findall(sql) == [str(n) for n in range(
            1, len(compiled.names) + 1)]:
        found = _Compiled(sql, compiled.names, compiled.bind, compiled.defaults, None, (),
                          compiled.compiled)
    if len(_COLUMNAR) >= _MAX_SHAPES:
        _COLUMNAR.clear()
    _COLUMNAR[compiled.sql] = found
    return found


def _arrays(typed: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"${n}::{t}[]" for n, t in typed)


def _multirow(compiled: _Compiled, rows: int, offset: int) -> str:
    """A compiled statement renumbered from `offset`; an INSERT of `rows` rows as one
    multi-row VALUES (each row's values follow the previous row's)."""
    if rows == 1:
        return _renumbered(compiled.sql, offset)
    head, values = compiled.sql.split(" VALUES ", 1)
    width = len(compiled.names)
    return f"{head} VALUES " + ", ".join(
        _renumbered(values, offset + n * width) for n in range(rows))


def _renumbered(sql: str, offset: int) -> str:
    """A compiled statement's `$n` placeholders moved up by `offset` (every value is bound:
    compiled SQL carries no literal that could hold a `$`)."""
    return _PLACEHOLDER.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


@contextmanager
def _as_sqlalchemy_errors(sql: str, params: Any) -> Iterator[None]:
    """A statement's failure as SQLAlchemy raises it (a lost connection stays asyncpg's:
    the API answers both as an outage)."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise sa_exc.IntegrityError(sql, params, exc) from exc
    except asyncpg.PostgresError as exc:
        if isinstance(exc, asyncpg.PostgresConnectionError):
            raise
        raise sa_exc.DBAPIError(sql, params, exc) from exc


class DirectExecutor:
    """`execute(statement, params)` on one asyncpg connection (see the module's note)."""

    _shapes: dict[Any, _Compiled] = {}
    # The hot path builds its statements once: found by identity, with no cache key to
    # compute (each entry holds its statement weakly; a dead one never matches).
    _bound: dict[tuple[int, tuple[str, ...] | None], tuple[Any, _Bound]] = {}

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @classmethod
    def _compiled(cls, stmt: Executable, params: Mapping[str, Any]) -> _Bound:
        column_keys = tuple(sorted(params)) if isinstance(stmt, Insert) and params else None
        found = cls._bound.get((id(stmt), column_keys))
        if found is not None and found[0]() is stmt:
            return found[1]
        key = stmt._generate_cache_key()  # type: ignore[attr-defined]
        if key is None:
            raise TypeError(f"this statement cannot be cached: {stmt!r}")
        shape = (key.key, column_keys)
        compiled = cls._shapes.get(shape)
        if compiled is None:
            if len(cls._shapes) >= _MAX_SHAPES:
                cls._shapes.clear()  # a runaway of shapes must not grow without bound
            compiled = cls._shapes[shape] = _compile(stmt, column_keys, key)
        if len(cls._bound) >= _MAX_SHAPES:
            cls._bound.clear()
        bound = _Bound(compiled, key)
        cls._bound[(id(stmt), column_keys)] = (weakref.ref(stmt), bound)
        return bound

    async def execute(self, stmt: Executable,
                      params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
                      ) -> DirectResult:
        """One statement; a list of parameter sets runs it for each (asyncpg pipelines
        them: one round trip for all), like SQLAlchemy's executemany."""
        if isinstance(params, Sequence):
            return await self._execute_many(stmt, params)
        params = params or {}
        bound = self._compiled(stmt, params)
        compiled, args = bound.compiled, bound.args(params)
        with _as_sqlalchemy_errors(compiled.sql, args):
            if compiled.row is None:
                status = await self._connection.execute(compiled.sql, *args)
                match = _COUNT.search(status or "")
                return DirectResult([], int(match.group(1)) if match else -1)
            records = await self._connection.fetch(compiled.sql, *args)
        row, results = compiled.row, compiled.results
        rows = [row(*(v if p is None or v is None else p(v)
                      for v, p in zip(record, results, strict=True))) for record in records]
        return DirectResult(rows, len(rows))

    async def _execute_many(self, stmt: Executable,
                            many: Sequence[Mapping[str, Any]]) -> DirectResult:
        if not many:
            return DirectResult([], 0)
        bound = self._compiled(stmt, many[0])
        compiled = bound.compiled
        if compiled.row is not None:
            raise TypeError("executemany answers no rows (no RETURNING)")
        batch = [bound.args(params) for params in many]
        with _as_sqlalchemy_errors(compiled.sql, batch):
            await self._connection.executemany(compiled.sql, batch)
        return DirectResult([], len(batch))

    _together: dict[tuple[tuple[str, int], ...], str] = {}

    async def execute_together(
        self, items: Sequence[tuple[Executable, Mapping[str, Any] | Sequence[Mapping[str, Any]]]]
    ) -> None:
        """Several writes (no RETURNING) as ONE statement and round trip: PostgreSQL's
        data-modifying WITH runs each exactly once, all on one snapshot — so none may read
        or change a row another one writes (the caller's promise; rows.DeferredWrites).
        An item with a list of parameter sets writes each: an INSERT of a row, or an
        UPDATE of a row by id, as one statement over arrays of the values (`_columnar`),
        anything else once per set. Past PostgreSQL's limit of bound values per
        statement, it takes several statements (still in order, in the caller's
        transaction)."""
        parts: list[tuple[_Compiled, int, list[Any]]] = []  # (shape, rows, values)
        for stmt, params in items:
            many = [params] if isinstance(params, Mapping) else list(params)
            bound = self._compiled(stmt, many[0])
            compiled = bound.compiled
            if compiled.row is not None:
                raise TypeError("a combined write answers no rows (no RETURNING)")
            columnar = _columnar(compiled) if len(many) > 1 else None
            if columnar is not None:
                rows = [bound.args(p) for p in many]
                parts.append((columnar, 1, [list(column) for column in zip(*rows, strict=True)]))
            elif isinstance(stmt, Insert):
                for start in range(0, len(many), _MAX_ROWS_PER_INSERT):
                    chunk = many[start:start + _MAX_ROWS_PER_INSERT]
                    parts.append((compiled, len(chunk), [
                        v for p in chunk for v in bound.args(p)]))
            else:
                parts += [(compiled, 1, bound.args(p)) for p in many]
        statement: list[tuple[_Compiled, int, list[Any]]] = []
        values = 0
        for part in parts:
            if statement and values + len(part[2]) > _MAX_BOUND_VALUES:
                await self._write_together(statement)
                statement, values = [], 0
            statement.append(part)
            values += len(part[2])
        if statement:
            await self._write_together(statement)

    async def _write_together(self, parts: list[tuple[_Compiled, int, list[Any]]]) -> None:
        if len(parts) == 1 and parts[0][1] == 1:
            compiled, _, args = parts[0]
            with _as_sqlalchemy_errors(compiled.sql, args):
                await self._connection.execute(compiled.sql, *args)
            return
        shape = tuple((compiled.sql, rows) for compiled, rows, _ in parts)
        sql = self._together.get(shape)
        if sql is None:
            ctes, offset = [], 0
            for n, (compiled, rows, _) in enumerate(parts):
                ctes.append(f"w{n} AS ({_multirow(compiled, rows, offset)})")
                offset += rows * len(compiled.names)
            if len(self._together) >= _MAX_SHAPES:
                self._together.clear()
            sql = self._together[shape] = f"WITH {', '.join(ctes)} SELECT 1"
        args = [v for _, _, values in parts for v in values]
        with _as_sqlalchemy_errors(sql, args):
            await self._connection.execute(sql, *args)


@asynccontextmanager
async def direct_connection(pool: DirectPool, *, transaction: bool
                            ) -> AsyncIterator[DirectExecutor]:
    """A connection of `pool` driven directly; in one transaction (committed on success,
    rolled back on any error) when `transaction`."""
    driver, opened = await pool.acquire()
    try:
        if not transaction:
            yield DirectExecutor(driver)
            return
        tx = driver.transaction()
        await tx.start()
        try:
            yield DirectExecutor(driver)
            await tx.commit()
        except BaseException:
            if not driver.is_closed() and driver.is_in_transaction():
                await tx.rollback()
            raise
    finally:
        # A connection still in a transaction (a rollback that was itself cancelled) is
        # closed, never handed out again.
        pool.release(driver, opened)


class Executor(Protocol):
    """What the hot path needs of a unit of work: SQLAlchemy's `AsyncSession` (SQLite) or
    a `DirectExecutor` (PostgreSQL)."""

    async def execute(self, statement: Any, params: Any = None, /) -> Any: ...
