"""Shared fixtures: a real PostgreSQL database and an SQLite file, both migrated.

PostgreSQL is this machine's server (127.0.0.1:5432, trust auth) unless
ALFLOW_TEST_PG_URL names another admin URL. Each test gets a fresh database, so tests never
see each other's rows. Nothing here is skipped: if PostgreSQL is down the tests fail.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

os.environ.setdefault("OMP_NUM_THREADS", "1")

PG_ADMIN_URL = os.environ.get(
    "ALFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_admin():
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url():
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"alflow_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from alflow.db.session import get_engine

    get_engine.cache_clear()  # close pooled connections before dropping
    sa.create_engine(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'alflow.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request):
    """An empty database on each backend (parametrised)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def db_url(empty_db_url):
    """A database on each backend, migrated to head."""
    from alflow.db.session import upgrade

    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def engine(db_url):
    from alflow.db.session import get_engine

    return get_engine(db_url)


@pytest.fixture(scope="session")
def water(tmp_path_factory):
    """Three tiny PaiNN members trained on rattled water, shared by the sampler tests
    (trained once per session): (ensemble, frames, training energies per atom)."""
    pytest.importorskip("tblite.ase")
    from ensemble_helpers import trained_water_ensemble

    return trained_water_ensemble(tmp_path_factory.mktemp("water"))
