"""How fast labelled frames reach the provenance database: bulk path vs naive ORM.

Writes N (geometry + successful label) pairs per configuration — PostgreSQL and SQLite,
ethanol-sized (9 atoms) and 200-atom frames — through `alflow.db.writers` (one COPY or
executemany per batch, one transaction per batch) and through a naive per-row ORM loop
(`session.add` + `flush` per row), side by side in one run. Prints labels/s and ratios.

    python benchmarks/db_write.py [--n 20000] [--naive-n 1000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _db import scratch_database

from alflow.db import writers
from alflow.db.models import Geometry, Label
from alflow.db.session import get_engine, session_factory

TARGET_PG_ETHANOL = 10_000.0  # labels/s


def frames(kind: str, n: int, rng: np.random.Generator) -> list[Atoms]:
    base = molecule("CH3CH2OH") if kind == "ethanol" else _cluster_200()
    out = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        out.append(a)
    return out


def _cluster_200() -> Atoms:
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)[:200]
    return Atoms(numbers=rng.choice([1, 6, 8], 200), positions=grid * 1.6)


def _method(session) -> int:
    return writers.ensure_oracle_method(
        session,
        {"code": "bench", "version": "0", "method": "none", "basis": None,
         "settings": {}, "settings_sha256": "b" * 64},
    )


def bulk(url: str, atoms: list[Atoms], forces: list[np.ndarray], batch: int) -> float:
    """Seconds to write all frames through the bulk writers (hashing included)."""
    Session = session_factory(url)
    with Session.begin() as s:
        method = _method(s)
    t0 = time.perf_counter()
    for i in range(0, len(atoms), batch):
        with Session.begin() as s:
            rows = [writers.geometry_row(a, "bench") for a in atoms[i : i + batch]]
            ids = writers.write_geometries(s, rows)
            labels = [
                writers.label_row(g, method, status="ok", energy=-1.0, forces=f, wall_s=0.1)
                for g, f in zip(ids, forces[i : i + batch])
            ]
            writers.write_labels(s, labels)
    return time.perf_counter() - t0


def naive(url: str, atoms: list[Atoms], forces: list[np.ndarray]) -> float:
    """Seconds for the per-row ORM loop a first draft would write."""
    Session = session_factory(url)
    with Session.begin() as s:
        method = _method(s)
    t0 = time.perf_counter()
    with Session.begin() as s:
        for a, f in zip(atoms, forces):
            geo = Geometry(**writers.geometry_row(a, "bench"))
            s.add(geo)
            s.flush()
            s.add(Label(geometry_id=geo.id, method_id=method, status="ok", energy=-1.0,
                        forces=f, wall_s=0.1))
            s.flush()
    return time.perf_counter() - t0


def count_labels(url: str) -> int:
    with get_engine(url).connect() as c:
        return c.exec_driver_sql("SELECT COUNT(*) FROM label").scalar_one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="ethanol frames per bulk run")
    ap.add_argument("--n-large", type=int, default=2_000, help="200-atom frames per bulk run")
    ap.add_argument("--naive-n", type=int, default=1_000, help="frames per naive run")
    ap.add_argument("--batch", type=int, default=5_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results: dict[tuple[str, str], tuple[float, float]] = {}
    print(f"{'backend':<11}{'frames':<9}{'bulk labels/s':>15}{'naive labels/s':>16}{'ratio':>8}")
    for kind, n in (("ethanol", args.n), ("200-atom", args.n_large)):
        atoms = frames(kind, n, rng)
        forces = [rng.normal(size=(len(a), 3)) for a in atoms]
        n_naive = min(args.naive_n, n)
        for backend in ("postgresql", "sqlite"):
            with scratch_database(backend) as url:
                t_bulk = bulk(url, atoms, forces, args.batch)
                assert count_labels(url) == n, "bulk path lost rows"
            with scratch_database(backend) as url:
                t_naive = naive(url, atoms[:n_naive], forces[:n_naive])
                assert count_labels(url) == n_naive, "naive path lost rows"
            rb, rn = n / t_bulk, n_naive / t_naive
            results[(backend, kind)] = (rb, rn)
            print(f"{backend:<11}{kind:<9}{rb:>15,.0f}{rn:>16,.0f}{rb / rn:>7.1f}x")
    pg = results[("postgresql", "ethanol")][0]
    verdict = "PASS" if pg >= TARGET_PG_ETHANOL else "MISS"
    print(f"TARGET pg_ethanol_labels_per_s {pg:.0f} {TARGET_PG_ETHANOL:.0f} {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
