"""How the writer's rows become SQL and lines, and back: one compiled INSERT per table that skips
rows whose key exists, the JSON encoding of a row in the write-ahead and spool files, and its decoding."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Dialect, Table
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlmodel import SQLModel

UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError)


class Insert:
    """One table's INSERT compiled once, with the column types' own bind processors.

    The writer thread shares the GIL with the event loop; ``Connection.execute`` spends ~10 µs
    of Python per row building and processing parameters, which the loop then waits for. This
    hands the driver ready parameters instead, converted by the same processors.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = insert_ignoring_duplicates(table, dialect.name).compile(
            dialect=dialect, column_keys=[c.key for c in table.columns]
        )
        self.sql = compiled.string
        self.positional = dialect.positional
        self.names = list(compiled.positiontup or ()) if self.positional else [c.key for c in table.columns]
        get = operator.itemgetter(*self.names)
        # itemgetter of one name returns the value, of several a tuple: always make it a tuple.
        self._get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            get if len(self.names) > 1 else lambda d: (get(d),)
        )
        processors = [table.columns[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self.names]
        self._process = [(i, p) for i, p in enumerate(processors) if p is not None]

    def params(self, rows: list[Mapping[str, Any]]) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        out = []
        for d in rows:
            values = self._get(d)
            if self._process:
                processed = list(values)
                for i, process in self._process:
                    processed[i] = process(processed[i])
                values = tuple(processed)
            out.append(values)
        if self.positional:
            return out
        return [dict(zip(self.names, values, strict=True)) for values in out]


def insert_ignoring_duplicates(table: Table, dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    # config.Storage refuses other databases: replays need "skip duplicates", and only these two are tested.
    raise ValueError(f"unsupported database dialect {dialect!r}")


def tables() -> dict[str, Table]:
    """Every table a spooled or write-ahead row may name, whether or not this process has written one yet
    (a process replaying a killed one's rows may not have imported the ledger's model)."""
    import gateway.store.db
    import gateway.store.ledger  # noqa: F401

    return {t.name: t for t in SQLModel.metadata.sorted_tables}


def loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a torn last line


def encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError  # orjson reports "Type is not JSON serializable" with the type itself


def decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """JSON values back to the column's Python type (datetimes and decimals travel as strings; no table has a
    date column)."""
    out: dict[str, Any] = {}
    for column in table.columns:
        value = row.get(column.name)
        if value is not None:
            kind = python_type(column.type)
            if kind is datetime and isinstance(value, str):
                value = datetime.fromisoformat(value)
            elif kind is Decimal and not isinstance(value, Decimal):
                value = Decimal(str(value))
        out[column.name] = value
    return out


def python_type(sql_type: Any) -> Any:
    # A TypeDecorator (sqlmodel's UTCDateTime) may report ``object``; its impl knows better.
    for t in (sql_type, getattr(sql_type, "impl_instance", None)):
        try:
            kind = t.python_type if t is not None else None
        except NotImplementedError:
            kind = None
        if kind not in (None, object):
            return kind
    return None


class DirectWriter:
    """A writer for one-off commands (``gateway subject erase``): each row is inserted at once."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def put(self, row: SQLModel) -> None:
        table = row.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as conn:
            conn.execute(table.insert(), [{c.name: getattr(row, c.name) for c in table.columns}])
