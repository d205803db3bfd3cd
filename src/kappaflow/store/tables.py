"""Result tables: declared by their columns, or from a `msgspec.Struct` (`Table.of`), a
typed table whose rows are its structs; and the conversion of those rows into the
values a driver writes, and back."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import partial
from itertools import starmap
from typing import Any, Generic, Literal, TypeVar, get_args

import msgspec
from msgspec import inspect
from msgspec.structs import astuple

from kappaflow.errors import AppError, StoreError

ColumnType = Literal["TEXT", "INTEGER", "REAL", "BOOLEAN", "BLOB", "DATE", "TIMESTAMP"]
Mode = Literal["replace", "add", "distinct", "latest"]
Merge = Literal["add", "min", "max", "replace"]
R = TypeVar("R", bound=msgspec.Struct)
Row = tuple[Any, ...] | msgspec.Struct
"""A row a processor writes: a tuple in its table's column order, or a typed table's
struct."""

COLUMN_TYPES: dict[type[inspect.Type], ColumnType] = {
    inspect.StrType: "TEXT",
    inspect.IntType: "INTEGER",
    inspect.FloatType: "REAL",
    inspect.BoolType: "BOOLEAN",
    inspect.BytesType: "BLOB",
    inspect.DateType: "DATE",
    inspect.DateTimeType: "TIMESTAMP",
}
"""The column type of each field type `Table.of` takes (also as ``X | None``, nullable)."""
NUMERIC: tuple[ColumnType, ...] = ("INTEGER", "REAL")
VALID_FROM = "valid_from_ms"
"""The column of a history table: the epoch milliseconds its row is valid from."""
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A name the store's SQL writes unquoted: PostgreSQL folds other letters to lower case
and cuts names at 63 bytes."""
RESERVED = frozenset(
    """
    add all alter analyse analyze and any array as asc asymmetric authorization
    autoincrement between binary both case cast check collate collation column commit
    concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user default deferrable delete
    desc distinct do drop else end escape except exists false fetch for foreign freeze from
    full grant group having if ilike in index initially inner insert intersect into is
    isnull join lateral leading left like limit localtime localtimestamp natural not nothing
    notnull null offset on only or order outer overlaps placing primary raise references
    returning right select session_user set similar some symmetric table tablesample then
    to trailing transaction true union unique update user using values variadic verbose
    when where window with
    """.split()  # noqa: SIM905 - a list of words reads better as text
)
"""The keywords PostgreSQL or SQLite refuse as a table or column name in the store's SQL
(each of their keywords tried in it)."""


class Table(msgspec.Struct, Generic[R], frozen=True):
    """A result table. ``mode='replace'``: a written row replaces the stored one with the
    same key. ``mode='latest'``: it does if its column ``time`` is later than the stored
    one's (the latest by event time, whichever order rows come in; of rows at one time,
    the first written stays). ``mode='add'``: its
    non-key columns (numbers) are added to the stored ones, or merged as ``merge`` says
    (column -> ``min``, ``max``, ``replace``): partial results of several writers
    combined. ``mode='distinct'``: a row whose key is already stored is ignored; each new one adds
    1 to column ``counts[1]`` of table ``counts[0]``, in the row whose key columns (all
    present in this table) have the same values: a distinct count kept as rows arrive.

    Names are lower-case SQL identifiers, not keywords, and table names do not start
    with ``kf_`` (the store's own tables): `AppError` otherwise. With ``history``
    (reference data, mode ``replace``), each `Store.upsert` also keeps its rows, valid
    from its time, in `history_table`. A table declared with
    `Table.of` is typed: its rows are structs of ``row``."""

    name: str
    columns: tuple[tuple[str, ColumnType], ...]
    key: tuple[str, ...]
    mode: Mode = "replace"
    counts: tuple[str, str] | None = None
    not_null: tuple[str, ...] = ()
    """Columns that refuse NULL besides the key's (which always do)."""
    row: type[R] | None = None
    """The struct of a typed table's rows; None: rows are tuples."""
    time: str | None = None
    """A ``latest`` table's column of event time."""
    merge: tuple[tuple[str, Merge], ...] = ()
    """An ``add`` table's columns merged otherwise than added."""
    history: bool = False
    """Reference data whose every upload is kept, valid from its time (`history_table`),
    so that a `Lookup` reads the rows in force at an event's time."""

    def __post_init__(self) -> None:
        _check_name(self.name, f"table {self.name!r}")
        if self.name.startswith("kf_"):
            raise AppError(f"table {self.name!r}: names starting kf_ are the store's own")
        names = self.column_names
        for name in names:
            _check_name(name, f"table {self.name}: column {name!r}")
        if len(set(names)) != len(names):
            raise AppError(f"table {self.name}: a column is named twice in {names}")
        unknown = [name for name in (*self.key, *self.not_null) if name not in names]
        if unknown or not self.key:
            raise AppError(
                f"table {self.name}: its key {self.key} and not_null {self.not_null} must "
                f"name some of its columns ({', '.join(names)})"
            )
        if self.mode not in get_args(Mode):
            raise AppError(f"table {self.name}: mode {self.mode!r} is not one of "
                           f"{', '.join(get_args(Mode))}")  # fmt: skip
        if (self.mode == "latest") != (self.time in names):
            raise AppError(f"table {self.name}: a 'latest' table, and only one, names its "
                           f"column of event time (time=), one of {', '.join(names)}")  # fmt: skip
        if self.time is not None and self.time not in (*self.key, *self.not_null):
            raise AppError(f"table {self.name}: column {self.time}, the event time of a "
                           "'latest' table, may be NULL, which no time is later than; "
                           "declare it not null")  # fmt: skip
        merged = dict(self.merge)
        for name, merge in merged.items():
            if merge not in get_args(Merge):
                raise AppError(f"table {self.name}: column {name} merges by {merge!r}; a "
                               "merge is add, min, max or replace")  # fmt: skip
        if merged and (self.mode != "add" or not merged.keys() <= set(names) - set(self.key)):
            raise AppError(f"table {self.name}: merge names columns of an 'add' table "
                           f"outside its key, got {self.merge}")  # fmt: skip
        if self.mode == "add":
            for name, kind in self.columns:
                added = name not in self.key and merged.get(name, "add") == "add"
                if added and kind not in NUMERIC:
                    raise AppError(
                        f"table {self.name}: column {name} is {kind}, but an 'add' table "
                        "adds up its columns outside the key (those merge does not name): "
                        "they must be numbers"
                    )

        if self.history and (self.mode != "replace" or VALID_FROM in names):
            raise AppError(f"table {self.name}: a table with history has mode 'replace' "
                           f"and no column {VALID_FROM}")  # fmt: skip

    @property
    def history_table(self) -> Table[Any]:
        """Every upload's rows of a table with ``history``, each with the time it is
        valid from: column `VALID_FROM` first, then the table's, keyed by the table's
        key and `VALID_FROM`."""
        return Table(
            f"{self.name}_history", ((VALID_FROM, "INTEGER"), *self.columns),
            (*self.key, VALID_FROM), not_null=self.not_null,
        )  # fmt: skip

    @classmethod
    def of(
        cls,
        row: type[R],
        key: str | Sequence[str],
        *,
        name: str | None = None,
        mode: Mode = "replace",
        counts: tuple[str, str] | None = None,
        time: str | None = None,
        merge: Mapping[str, Merge] | None = None,
        history: bool = False,
    ) -> Table[R]:
        """The table of ``row``'s structs, named ``name`` (default: the struct's name in
        snake case, ``PageViews`` -> ``page_views``), keyed by the fields ``key``: a
        column per field, in order, typed by `COLUMN_TYPES`; a field ``X | None`` is
        nullable (not in the key), the others refuse NULL. `AppError` names a field of
        another type. ``mode``, ``counts``, ``time``, ``merge`` and ``history`` are as in
        `Table`."""
        name = name or re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_",
                              row.__name__).lower()  # fmt: skip
        keys = (key,) if isinstance(key, str) else tuple(key)
        columns, nullable = [], []
        for field in msgspec.structs.fields(row):
            kind, optional = _column_type(inspect.type_info(field.type))
            if kind is None:
                raise AppError(
                    f"table {name}: field {field.name} of {row.__name__} is "
                    f"{_shown(field.type)}, which no column holds; "
                    "a field is int, float, str, bool, bytes, datetime.date, "
                    "datetime.datetime, a Literal of strings or of ints, or one of those "
                    "| None"
                )
            if optional and field.name in keys:
                raise AppError(f"table {name}: key field {field.name} of {row.__name__} "
                               "may be None, which no key column holds")  # fmt: skip
            columns.append((field.name, kind))
            if optional:
                nullable.append(field.name)
        not_null = tuple(n for n, _ in columns if n not in nullable and n not in keys)
        merged = tuple((merge or {}).items())
        return cls(name, tuple(columns), keys, mode, counts, not_null, row, time, merged, history)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


def renamed(table: Table[R], name_of: Callable[[str], str]) -> Table[R]:
    """``table`` named ``name_of(table.name)``, its distinct count's table too."""
    counts = table.counts and (name_of(table.counts[0]), table.counts[1])
    return msgspec.structs.replace(table, name=name_of(table.name), counts=counts)


def with_histories(tables: Iterable[Table[Any]]) -> list[Table[Any]]:
    """``tables``, each with history followed by its `Table.history_table`."""
    return [each for table in tables
            for each in ((table, table.history_table) if table.history else (table,))]  # fmt: skip


def _shown(annotation: Any) -> str:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _check_name(name: str, what: str) -> None:
    if not IDENTIFIER.fullmatch(name) or name in RESERVED:
        problem = "an SQL keyword" if name in RESERVED else "not a lower-case SQL identifier"
        raise AppError(
            f"{what} is {problem}: name it with 1 to 63 of a-z, 0-9 and _, not starting "
            "with a digit, and not a keyword (such as order, user, end, window)"
        )


def _column_type(kind: inspect.Type) -> tuple[ColumnType | None, bool]:
    """The column type of a field's type, and whether it may be None."""
    if isinstance(kind, inspect.Metadata):
        return _column_type(kind.type)
    if isinstance(kind, inspect.UnionType):
        others = [each for each in kind.types if not isinstance(each, inspect.NoneType)]
        if len(others) == 1 and len(kind.types) == 2:
            return _column_type(others[0])[0], True
        return None, False
    if isinstance(kind, inspect.LiteralType):
        types = set(map(type, kind.values))
        return {str: "TEXT", int: "INTEGER"}.get(types.pop()) if len(types) == 1 else None, False
    return COLUMN_TYPES.get(type(kind)), False


def row_writer(table: Table[Any], dialect: str) -> Callable[[Sequence[Row]], Iterable[Row]] | None:
    """What turns rows of ``table`` into those the driver of ``dialect`` writes (None:
    nothing to turn): a typed table's structs into tuples (tuples in its column order
    pass as they are, such as a columnar operator's, zipped from its columns), and in
    SQLite dates and datetimes into ISO 8601 text (see `sql_value`). It raises
    `StoreError` for a row of another type, or a naive datetime (an instant needs its
    time zone)."""
    adapt = _adapter(table, dialect)
    struct = table.row
    if struct is None:
        return None if adapt is None else partial(map, adapt)

    def turn(rows: Sequence[Row]) -> Iterable[Row]:
        kinds = set(map(type, rows))
        if kinds == {struct}:
            tuples: Iterable[Row] = map(astuple, rows)
        elif kinds == {tuple}:
            tuples = rows
        elif kinds <= {struct, tuple}:
            tuples = [row if type(row) is tuple else astuple(row) for row in rows]
        else:
            others = ", ".join(sorted(kind.__name__ for kind in kinds - {struct, tuple}))
            raise StoreError(
                f"table {table.name} takes rows of {struct.__name__} (or tuples in its "
                f"columns' order), got {others}"
            )
        return tuples if adapt is None else map(adapt, tuples)

    return turn


def _adapter(table: Table[Any], dialect: str) -> Callable[[Row], Row] | None:
    """What turns a row's dates and datetimes into what ``dialect`` stores; None if
    nothing needs turning."""
    temporal = [(at, name, kind) for at, (name, kind) in enumerate(table.columns)
                if kind in ("DATE", "TIMESTAMP")]  # fmt: skip
    if not temporal:
        return None

    def adapt(row: Row) -> Row:
        values = list(row)  # type: ignore[arg-type]
        for at, name, kind in temporal:
            value = values[at]
            if kind == "TIMESTAMP" and isinstance(value, datetime) and value.tzinfo is None:
                raise StoreError(f"table {table.name}: column {name}: {_naive(value)}")
            if dialect == "sqlite":
                values[at] = sql_value(value)
        return tuple(values)

    return adapt


def _naive(value: datetime) -> str:
    return f"{value} has no time zone; write aware datetimes, such as datetime.now(UTC)"


def sql_value(value: Any) -> Any:
    """A value as SQLite stores it: a date as ISO 8601 text, a datetime as ISO 8601 text
    in UTC to the microsecond, so that text order is time order (`StoreError` for a
    naive one)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise StoreError(_naive(value))
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


def rows_read(table: Table[R], found: list[tuple[Any, ...]]) -> list[R]:
    """The rows of ``table`` read in its column order, with booleans, dates and
    datetimes turned back from what SQLite keeps: a typed table's as its structs,
    another's as tuples."""
    turned = [(at, READ_AS[kind]) for at, (_, kind) in enumerate(table.columns) if kind in READ_AS]
    if turned:
        found = [_turned(values, turned) for values in found]
    row, names = table.row, table.column_names
    if row is None:
        return found  # type: ignore[return-value]
    if row.__match_args__ == names:
        return list(starmap(row, found))
    return [row(**dict(zip(names, values, strict=True))) for values in found]  # kw_only


def _turned(
    values: tuple[Any, ...], turned: list[tuple[int, Callable[[Any], Any]]]
) -> tuple[Any, ...]:
    listed = list(values)
    for at, turn in turned:
        listed[at] = turn(listed[at])
    return tuple(listed)


def _as_bool(value: Any) -> Any:
    return value if value is None else bool(value)


def _as_date(value: Any) -> Any:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _as_datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


READ_AS = {"BOOLEAN": _as_bool, "DATE": _as_date, "TIMESTAMP": _as_datetime}
"""What turns a value of a column of each type back, from SQLite's 0 and 1 and ISO 8601
text (PostgreSQL's pass as they are)."""
