"""DuckDB over the lake: a connection with the delta extension loaded from the pinned
``duckdb-extension-delta`` package (offline; never downloaded at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that can read Delta tables (``delta_scan``)."""
    import duckdb
    import duckdb_extensions

    connection = duckdb.connect()
    duckdb_extensions.import_extension("delta", con=connection)
    connection.execute("LOAD delta")
    return connection
