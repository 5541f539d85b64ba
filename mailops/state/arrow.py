"""A statement's rows as Arrow columns, read by SQLite's Arrow driver (ADBC).

The outbox analysis reads some hundred thousand rows at a time. Through the DB-API driver
each value becomes a Python object first, several times what SQLite needs to find them;
the ADBC driver fills Arrow's columns in C. It reads a SQLite file only, and only a
statement whose values SQLAlchemy can write into its text: anything else
gives None, and the caller reads the rows through its session as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailops.state.location import sqlite_file

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Engine
    from sqlalchemy.sql import CompoundSelect, Select

# One batch for the whole result: the driver types each column from the values of its first
# batch, and a later batch of another type would fail (a column that starts with NULLs).
_ONE_BATCH = str(1 << 30)
_BUSY_MILLISECONDS = 10000  # as the store's own connections: wait for a writer's commit


def arrow_table(
    engine: Engine, statement: Select[*tuple[Any, ...]] | CompoundSelect[*tuple[Any, ...]]
) -> pa.Table | None:
    """The rows of ``statement`` on ``engine``'s database as an Arrow table, one column per selected column; None
    where the Arrow driver does not apply (not a SQLite file, values it cannot write into the statement's text, or
    anything the driver refuses, such as a hot journal that a read-only reader cannot roll back). A column that
    holds numbers and texts comes as texts.

    It reads in a transaction of its own, yet sees what the caller's open transaction sees once that has read:
    under SQLite's rollback journal (the store's; a database in WAL mode is left to the session) no writer
    commits while a reader holds its shared lock, which a transaction keeps from its first read to its end."""
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if engine.dialect.name != "sqlite" or path is None:
        return None
    try:
        text = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    except SQLAlchemyError:  # a value with no literal form (a time): the session's driver binds it
        return None
    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa

    # Read-only: a reader never creates, changes or journals the file (the store uses a rollback journal).
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        with (
            adbc_driver_sqlite.connect(uri) as database,
            adbc_driver_manager.AdbcConnection(database) as connection,
            adbc_driver_manager.AdbcStatement(connection) as pragma,
            adbc_driver_manager.AdbcStatement(connection) as query,
        ):
            pragma.set_sql_query(f"PRAGMA busy_timeout = {_BUSY_MILLISECONDS}")
            pragma.execute_update()
            pragma.set_sql_query("PRAGMA journal_mode")
            mode, _ = pragma.execute_query()
            if pa.RecordBatchReader.from_stream(mode).read_all().column(0).to_pylist() == ["wal"]:
                return None
            query.set_options(**{"adbc.sqlite.query.batch_rows": _ONE_BATCH})
            query.set_sql_query(text)
            stream, _ = query.execute_query()
            return pa.RecordBatchReader.from_stream(stream).read_all()
    except (adbc_driver_manager.Error, pa.ArrowException):
        return None
