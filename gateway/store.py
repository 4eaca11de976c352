"""The gateway's tables and how to open them: SQLAlchemy Core over SQLite or PostgreSQL.

One code path for both. SQLite is the default (WAL, ``BEGIN IMMEDIATE`` so a transaction
holds the write lock from its first statement and never fails on a lock upgrade);
PostgreSQL is for more than one gateway instance. Dialect differences are limited to
:func:`upsert` (both dialects spell ``INSERT .. ON CONFLICT`` the same way in SQLAlchemy)
and the migration lock.

Migrations are a list of functions and a one-row-per-version ``schema_version`` table,
applied under a lock so two instances starting together do not race.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, OperationalError

from earmark.errors import EarmarkError

log = logging.getLogger(__name__)


class StoreError(EarmarkError):
    """A database URL that cannot be opened or a schema that cannot be migrated."""


metadata = MetaData()

schema_version = Table(
    "em_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)
devices = Table(  # the device → user registry; a user owns any number of devices
    "em_devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False, index=True),
    Column("registered_at", Float, nullable=False),
)
tokens = Table(  # API tokens, stored as SHA-256; user_id NULL means an admin token
    "em_tokens",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("user_id", String(128), nullable=True),
    Column("created_at", Float, nullable=False),
)
seen = Table(  # the dedup record: (device_id, seq) counts once
    "em_seen",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("window_start", BigInteger, nullable=True),  # NULL for deletion requests
    Column("merged_at", Float, nullable=False),
)
contributions = Table(  # what each window added, for explain/export and late registration
    "em_contributions",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("tag", String(16), primary_key=True),
    Column("w", Float, nullable=False),
    Column("window_start", BigInteger, nullable=False),
    Column("window_s", Integer, nullable=False),
    Column("model", String(64), nullable=False),
)
profiles = Table(  # decayed score of one tag for one user, valid at ref_t
    "em_profiles",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("tag", String(16), primary_key=True),
    Column("score", Float, nullable=False),
    Column("ref_t", Float, nullable=False),
)
floors = Table(  # after a deletion: sequence numbers up to here are erased, never re-merged
    "em_device_floor",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)
dead_letters = Table(
    "em_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", Float, nullable=False),
    Column("reason", String(64), nullable=False, index=True),
    Column("detail", String(300), nullable=False),
    Column("topic", String(200), nullable=False),
    Column("device_id", String(64), nullable=True),  # from the topic when it parsed
    Column("payload_len", Integer, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("payload_head", LargeBinary, nullable=False),  # first HEAD_BYTES, never parsed
)
HEAD_BYTES = 128


def _migration_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t is not schema_version])


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1]


def open_engine(url: str) -> Engine:
    """An Engine for ``sqlite:///path`` or ``postgresql+psycopg://...``, schema migrated."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            _sqlite_setup(engine)
        elif url.startswith("postgresql+psycopg://"):
            engine = create_engine(url, pool_pre_ping=True, pool_size=4)
        else:
            raise StoreError(f"database URL {url!r}: use sqlite:///PATH or postgresql://...")
    except ArgumentError as err:
        raise StoreError(f"database URL {url!r} is not valid: {err}") from None
    try:
        migrate(engine)
    except OperationalError as err:
        raise StoreError(f"cannot open database {engine.url!r}: {err.orig}") from None
    return engine


def _sqlite_setup(engine: Engine) -> None:
    """WAL, NORMAL sync (durable across process kills), BEGIN IMMEDIATE per transaction."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> int:
    """Apply pending migrations under a lock; return the schema version."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
        schema_version.create(conn, checkfirst=True)
        done = {r[0] for r in conn.execute(schema_version.select())}
        for number, step in enumerate(MIGRATIONS, start=1):
            if number not in done:
                log.info("applying migration %d", number)
                step(conn)
                conn.execute(schema_version.insert().values(version=number, applied_at=time.time()))
        return len(MIGRATIONS)


def upsert(conn: Connection, table: Table) -> Any:
    """``INSERT`` that understands ``on_conflict_do_nothing/_update`` on this dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


_COMPILED: dict[tuple[str, str], tuple[str, tuple[str, ...] | None]] = {}


def insert_many(conn: Connection, stmt: Any, key: str, rows: list[dict[str, Any]]) -> None:
    """Run one INSERT for many rows through the driver's own ``executemany``.

    For thousands of small rows SQLAlchemy's per-row parameter processing costs about twice
    the insert itself (SQLite: 8 us against 3 us a message). The statement is still built
    and compiled by SQLAlchemy, once per dialect and ``key``, so SQLite and PostgreSQL keep
    one code path. Only for columns needing no type conversion (text, integers, floats).
    """
    cached = _COMPILED.get((conn.dialect.name, key))
    if cached is None:
        compiled = stmt.compile(dialect=conn.dialect)
        cached = (str(compiled), tuple(compiled.positiontup) if compiled.positional else None)
        _COMPILED[(conn.dialect.name, key)] = cached
    sql, order = cached
    if not rows:
        return
    if order is None:  # named parameters (psycopg): the dicts as they are
        conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]
    else:  # positional (sqlite3): tuples in the compiled order
        conn.exec_driver_sql(sql, [tuple(r[c] for c in order) for r in rows])


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
