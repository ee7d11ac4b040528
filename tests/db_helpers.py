"""A populated provenance database for query and bad-input tests, and a row-count snapshot."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from ase.build import molecule
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import get_engine


def populate(url: str) -> None:
    """A two-generation campaign with labels, models, evals and one adversarial run."""
    engine = get_engine(url)
    with Session(engine) as s, s.begin():
        camp = m.Campaign(name="eth", spec={"name": "eth"}, spec_sha256="0" * 64,
                          alflow_version="test", status="running")
        s.add(camp)
        s.flush()
        gens = [m.Generation(campaign_id=camp.id, idx=i, state="done") for i in range(2)]
        s.add_all(gens)
        s.flush()
        method = writers.ensure_oracle_method(s, {
            "code": "pyscf", "version": "x", "method": "HF", "basis": "sto-3g",
            "settings": {}, "settings_sha256": "a" * 64})
        frames = []
        for i in range(6):
            a = molecule("CH3CH2OH")
            a.positions += np.random.default_rng(i).normal(0, 0.05, a.positions.shape)
            frames.append(a)
        gids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in frames])
        tasks = [m.Task(campaign_id=camp.id, generation_id=g.id, kind="label", status="done")
                 for g in gens]
        s.add_all(tasks)
        s.flush()
        # gen 0 labels 4 frames (one failed), gen 1 labels 2 more
        rows = [writers.label_row(gids[i], method, status="ok", energy=-1.0, forces=np.zeros((9, 3)), cpu_s=2.0,
                                  wall_s=1.0, task_id=tasks[0].id) for i in range(3)]
        rows.append(writers.label_row(gids[3], method, status="failed", error_class="timeout",
                                      cpu_s=10.0, wall_s=10.0, task_id=tasks[0].id))
        rows += [writers.label_row(gids[i], method, status="ok", energy=-1.0, forces=np.zeros((9, 3)), cpu_s=3.0,
                                   wall_s=1.5, task_id=tasks[1].id) for i in (4, 5)]
        writers.write_labels(s, rows)
        label_ids = dict(s.execute(sa.select(m.Label.geometry_id, m.Label.id).where(m.Label.status == "ok")).tuples().all())
        for g, members in ((gens[0], [gids[0], gids[1], gids[2]]), (gens[1], [gids[0], gids[1], gids[2], gids[4], gids[5]])):
            ts = m.TrainingSet(campaign_id=camp.id, generation_id=g.id, sha256=str(g.idx) * 64,
                               n_train=len(members) - 1, n_val=1)
            s.add(ts)
            s.flush()
            s.add_all([m.TrainingSetLabel(training_set_id=ts.id, label_id=label_ids[x],
                                          split="val" if k == 0 else "train")
                       for k, x in enumerate(members)])
            s.add_all([m.Model(generation_id=g.id, member=k, training_set_id=ts.id, seed=k,
                               config={}) for k in range(3)])
            s.add(m.ModelEval(generation_id=g.id, n_frames=10, force_mae=0.5 / (g.idx + 1),
                              energy_mae=0.01))
        run = m.SamplingRun(generation_id=gens[1].id, kind="adversarial", params={"kT_eV": 1.0})
        s.add(run)
        s.flush()
        s.add_all([m.Sample(sampling_run_id=run.id, geometry_id=gids[k], sigma_f2_initial=0.01,
                            sigma_f2=0.04, bucket="candidate", selected=k == 0) for k in range(2)])
        s.add_all([m.Artifact(sha256=str(k) * 64, uri=f"file:///a/{k}", kind="checkpoint", size_bytes=10)
                   for k in range(3)])


def row_counts(url: str) -> dict[str, int]:
    """Rows of every table (and, on PostgreSQL, of the large-object catalogue)."""
    engine = get_engine(url)
    tables = sorted(sa.inspect(engine).get_table_names())
    with engine.connect() as c:
        counts = {t: c.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar_one() for t in tables}
        if engine.dialect.name == "postgresql":
            counts["pg_largeobject_metadata"] = c.exec_driver_sql(
                "SELECT COUNT(*) FROM pg_largeobject_metadata").scalar_one()
    return counts
