"""Throw-away migrated databases for benchmarks (PostgreSQL on this machine, SQLite in tmp)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "ALFLOW_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextlib.contextmanager
def scratch_database(backend: str):
    """Yield the URL of a fresh database migrated to head; drop it afterwards."""
    from alflow.db.session import get_engine, upgrade

    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            upgrade(url)
            yield url
            get_engine(url).dispose()
        return
    name = f"alflow_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
