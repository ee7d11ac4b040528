"""Bulk writers: one statement (or one COPY) per batch, never one ORM flush per row.

The orchestrator is the only writer. Each function takes a `Connection` (or a `Session`,
whose connection is used) inside the caller's transaction, so a batch lands whole or not
at all. On PostgreSQL, rows stream through binary COPY into a temporary table and are
merged with one INSERT ... ON CONFLICT; on SQLite, one executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from alflow.db.models import Geometry, Label, OracleMethod
from alflow.db.types import pack, unpack
from alflow.geometry import charge_and_multiplicity, content_hash

GEOMETRY_COLUMNS = (
    "content_hash", "natoms", "formula", "numbers", "positions", "cell", "pbc",
    "charge", "multiplicity", "origin",
)
LABEL_COLUMNS = (
    "geometry_id", "method_id", "task_id", "status", "energy", "forces", "stress",
    "error_class", "error_msg", "wall_s", "cpu_s",
)
_ID_CHUNK = 500


def _conn(target: Connection | Session) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _insert(conn: Connection, table):
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


# --------------------------------------------------------------------------- geometry
def pbc_bits(pbc) -> int:
    return sum(1 << i for i, p in enumerate(np.broadcast_to(pbc, (3,))) if p)


def geometry_row(atoms: Atoms, origin: str) -> dict[str, Any]:
    """The database row of an Atoms (arrays packed; hash computed once, here)."""
    charge, mult = charge_and_multiplicity(atoms)
    periodic = bool(atoms.pbc.any())
    cell = atoms.cell.array if periodic else None
    return {
        "content_hash": content_hash(atoms.numbers, atoms.positions, cell, atoms.pbc, charge, mult),
        "natoms": len(atoms),
        "formula": atoms.get_chemical_formula(mode="hill"),
        "numbers": pack(atoms.numbers, "<u1"),
        "positions": pack(atoms.positions),
        "cell": pack(cell) if periodic else None,
        "pbc": pbc_bits(atoms.pbc),
        "charge": charge,
        "multiplicity": mult,
        "origin": origin,
    }


def atoms_from_geometry(geo: Geometry | Any) -> Atoms:
    """Rebuild the exact Atoms (bit-identical positions) from a geometry row."""
    n = geo.natoms
    numbers = unpack(geo.numbers, "<u1") if isinstance(geo.numbers, (bytes, memoryview)) else geo.numbers
    positions = unpack(geo.positions) if isinstance(geo.positions, (bytes, memoryview)) else geo.positions
    cell = geo.cell
    if isinstance(cell, (bytes, memoryview)):
        cell = unpack(cell)
    pbc = [bool(geo.pbc >> i & 1) for i in range(3)]
    atoms = Atoms(
        numbers=np.asarray(numbers, dtype=int),
        positions=np.asarray(positions).reshape(n, 3),
        cell=None if cell is None else np.asarray(cell).reshape(3, 3),
        pbc=pbc,
    )
    atoms.info["charge"] = geo.charge
    atoms.info["multiplicity"] = geo.multiplicity
    return atoms


def write_geometries(target: Connection | Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert geometries that are new (dedupe by content hash); return the id of every
    input row, in input order, whether it was new or already stored."""
    if not rows:
        return []
    conn = _conn(target)
    if conn.dialect.name == "postgresql":
        _copy_merge(conn, "geometry", GEOMETRY_COLUMNS, rows, "(content_hash)")
    else:
        stmt = _insert(conn, Geometry).on_conflict_do_nothing(index_elements=["content_hash"])
        conn.execute(stmt, list(rows))
    return _ids_by_hash(conn, [r["content_hash"] for r in rows])


def _ids_by_hash(conn: Connection, hashes: list[str]) -> list[int]:
    unique = list(dict.fromkeys(hashes))
    found: dict[str, int] = {}
    for i in range(0, len(unique), _ID_CHUNK):
        chunk = unique[i : i + _ID_CHUNK]
        q = select(Geometry.content_hash, Geometry.id).where(Geometry.content_hash.in_(chunk))
        found.update((h, i) for h, i in conn.execute(q))
    return [found[h] for h in hashes]


# ------------------------------------------------------------------------------ labels
def label_row(
    geometry_id: int,
    method_id: int,
    *,
    status: str,
    energy: float | None = None,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    error_class: str | None = None,
    error_msg: str | None = None,
    wall_s: float | None = None,
    cpu_s: float | None = None,
    task_id: int | None = None,
) -> dict[str, Any]:
    return {
        "geometry_id": geometry_id,
        "method_id": method_id,
        "task_id": task_id,
        "status": status,
        "energy": None if energy is None else float(energy),
        "forces": None if forces is None else pack(forces),
        "stress": None if stress is None else pack(stress),
        "error_class": error_class,
        "error_msg": error_msg,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
    }


def write_labels(target: Connection | Session, rows: Sequence[dict[str, Any]]) -> int:
    """Insert labels; a successful label whose (geometry, method) already has one is
    skipped (the idempotency rule). Returns how many rows were inserted."""
    if not rows:
        return 0
    conn = _conn(target)
    if conn.dialect.name == "postgresql":
        return _copy_merge(
            conn, "label", LABEL_COLUMNS, rows, "(geometry_id, method_id) WHERE status = 'ok'"
        )
    stmt = _insert(conn, Label).on_conflict_do_nothing(
        index_elements=["geometry_id", "method_id"], index_where=text("status = 'ok'")
    )
    before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
    conn.execute(stmt, list(rows))
    return conn.exec_driver_sql("SELECT total_changes()").scalar_one() - before


def ensure_oracle_method(target: Connection | Session, record: dict[str, Any]) -> int:
    """Id of the oracle method with this settings hash, inserting it on first use."""
    conn = _conn(target)
    stmt = _insert(conn, OracleMethod).on_conflict_do_nothing(index_elements=["settings_sha256"])
    conn.execute(stmt, [record])
    q = select(OracleMethod.id).where(OracleMethod.settings_sha256 == record["settings_sha256"])
    return conn.execute(q).scalar_one()


# ---------------------------------------------------------------- PostgreSQL COPY path


def _copy_merge(conn: Connection, table: str, columns: Sequence[str], rows, conflict: str) -> int:
    """Binary COPY rows into a temp table shaped like `table`, then one INSERT ... SELECT
    ... ON CONFLICT DO NOTHING. Returns the number of rows inserted."""
    tmp = f"_alflow_in_{table}"
    cols = ", ".join(columns)
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE IF NOT EXISTS {tmp} AS SELECT {cols} FROM {table} WITH NO DATA"
    )
    conn.exec_driver_sql(f"TRUNCATE {tmp}")
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        types = _column_types(cur, tmp, columns)
        with cur.copy(f"COPY {tmp} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row([row[c] for c in columns])
    result = conn.exec_driver_sql(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT {conflict} DO NOTHING"
    )
    return result.rowcount


def _column_types(cur, table: str, columns: Sequence[str]) -> list[str]:
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0",
        (table,),
    )
    found = dict(cur.fetchall())
    return [found[c].split("(")[0] for c in columns]
