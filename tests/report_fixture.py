"""A small but realistic 3-generation campaign written straight into the provenance
database (ORM + `alflow.db.writers`), so report tests need not run a campaign.

What it writes mirrors `alflow.engine.campaign`:

- generation 0 labels 40 initial water frames (12 of them held out for evaluation), later
  generations label the frames the previous generation selected; labels go through label
  tasks of 4 geometries on 2 oracle workers, with cpu_s/wall_s and a few failures
  (scf_not_converged, timeout, oom) stored as labels;
- 3 ensemble members per generation (train tasks on 1 GPU worker), a training set,
  `model_eval` rows (ensemble row with `details` {"calibration", "sigma_f",
  "frame_error"}, plus one row per member), NN-MD stability time and h(r) error;
- md (2 tasks), adversarial and random sampling runs per generation whose seeds are
  training frames (preferably those the previous generation selected, so the next
  ensemble's σ_F of a selected frame is on record as the seed's `sigma_f2_initial`),
  geometry edges to their seeds, carved clusters in generation 1, buckets and selection;
- task rows with executor, submitted/started/finished timestamps and resources.

Everything is deterministic (seeded) and time-stamped on a simulated clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import numpy as np
import sqlalchemy as sa
from ase.build import molecule
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import get_engine

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
ORACLE_WORKERS = 2
LABEL_BATCH = 4
TRUST_LO, TRUST_HI = 0.05, 0.5
MAX_SELECTED = 8
ENSEMBLE = 3


class _Clock:
    """Seconds since T0 on a simulated timeline; `at(t)` is the timestamp."""

    def __init__(self) -> None:
        self.now = 0.0

    @staticmethod
    def at(t: float) -> dt.datetime:
        return T0 + dt.timedelta(seconds=float(t))


def _water(rng: np.random.Generator, std: float) -> Any:
    a = molecule("H2O")
    a.positions += rng.normal(0.0, std, a.positions.shape)
    return a


def _spec(name: str, generations: int) -> dict[str, Any]:
    return {
        "version": 1, "name": name, "seed": 0,
        "oracle": {"kind": "pyscf", "method": "PBE", "basis": "def2-svp"},
        "model": {"representation": "painn", "ensemble_size": ENSEMBLE},
        "samplers": [{"kind": "md", "walkers": 16}, {"kind": "adversarial", "seeds": 16},
                     {"kind": "random", "seeds": 6, "per_seed": 2}],
        "selection": {"trust_lo": TRUST_LO, "trust_hi": TRUST_HI, "max_per_generation": MAX_SELECTED},
        "stopping": {"max_generations": generations},
    }


def _task(s: Session, camp_id: int, gen_id: int, kind: str, executor: str, submitted: float,
          started: float | None, finished: float | None, *, status: str = "done",
          resources: dict | None = None, key: str | None = None, error_class: str | None = None) -> int:
    t = m.Task(campaign_id=camp_id, generation_id=gen_id, kind=kind, executor=executor, site="local",
               status=status, tries=1, key=key, submitted_at=_Clock.at(submitted),
               started_at=None if started is None else _Clock.at(started),
               finished_at=None if finished is None else _Clock.at(finished),
               resources=resources, error_class=error_class,
               error_msg=None if error_class is None else f"{error_class}: simulated")
    s.add(t)
    s.flush()
    return t.id


def _schedule(durations: list[float], workers: int, start: float, latency: float = 0.4) -> list[tuple[float, float]]:
    """Greedy list scheduling: (start, end) of each job on `workers` identical workers."""
    free = [start + latency * (k + 1) for k in range(workers)]
    spans = []
    for d in durations:
        k = int(np.argmin(free))
        t0 = free[k] + latency
        spans.append((t0, t0 + d))
        free[k] = t0 + d
    return spans


def fill_campaign(url: str, name: str = "water-fixture", *, generations: int = 3,
                  validation: bool = True, seed: int = 0) -> dict[str, Any]:
    """Write a finished `generations`-generation campaign; returns a summary of what was
    written (ids, counts) for assertions."""
    rng = np.random.default_rng(seed)
    clock = _Clock()
    engine = get_engine(url)
    summary: dict[str, Any] = {"name": name, "generations": generations, "label_tasks": 0,
                               "labels": 0, "failed_labels": {}, "oracle_workers": ORACLE_WORKERS}
    with Session(engine) as s, s.begin():
        spec = _spec(name, generations)
        camp = m.Campaign(name=name, spec=spec,
                          spec_sha256=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
                          alflow_version="0.1.0", status="finished",
                          stop_reason=f"max_generations reached ({generations})", site="local",
                          workdir="/scratch/alflow-runs/" + name, created_at=_Clock.at(0))
        s.add(camp)
        s.flush()
        method = writers.ensure_oracle_method(s, {
            "code": "pyscf", "version": "2.8.0", "method": "PBE", "basis": "def2-svp",
            "settings": {"xc": "PBE", "basis": "def2-svp", "max_cycle": 100},
            "settings_sha256": hashlib.sha256(f"pyscf-pbe-{name}".encode()).hexdigest()})

        # generation 0's inputs: 40 initial frames, every third-ish one held out
        initial = [_water(rng, 0.04) for _ in range(40)]
        init_ids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in initial])
        test_ids = set(init_ids[::10] + init_ids[3::10] + init_ids[7::10])  # 12 held out
        to_label = list(init_ids)
        ok_training: list[int] = []   # geometry ids with ok labels, not held out
        selected_prev: list[int] = []
        sigma_after: dict[int, float] = {}  # selected geometry -> σ_F² the next ensemble gives it
        failure_plan = {0: ["scf_not_converged"], 1: ["scf_not_converged", "timeout"], 2: ["oom"]}

        for g in range(generations):
            gen = m.Generation(campaign_id=camp.id, idx=g, state="done", started_at=_Clock.at(clock.now))
            s.add(gen)
            s.flush()
            if g == 0:
                run0 = m.SamplingRun(generation_id=gen.id, kind="initial", n_frames=len(init_ids),
                                     params={"sources": ["water_init.extxyz"]})
                s.add(run0)
                s.flush()
                s.execute(sa.insert(m.Sample), [
                    {"sampling_run_id": run0.id, "geometry_id": gid, "selected": True, "reason": "initial"}
                    for gid in init_ids])

            # ---- label: batches of LABEL_BATCH on ORACLE_WORKERS workers
            batches = [to_label[i:i + LABEL_BATCH] for i in range(0, len(to_label), LABEL_BATCH)]
            failures = list(failure_plan.get(g, []))
            fail_at = {to_label[int(i)]: cls for i, cls in
                       zip(rng.choice(len(to_label), size=len(failures), replace=False), failures)}
            walls = {gid: float(rng.uniform(15.0, 45.0)) * (1.0 + 0.3 * g) for gid in to_label}
            for gid, cls in fail_at.items():
                walls[gid] = {"timeout": 120.0, "oom": 8.0, "scf_not_converged": 70.0}[cls]
            durations = [1.5 + sum(walls[gid] for gid in b) for b in batches]
            spans = _schedule(durations, ORACLE_WORKERS, clock.now)
            label_rows = []
            for b, (t0, t1) in zip(batches, spans):
                tid = _task(s, camp.id, gen.id, "label", "oracle", clock.now, t0, t1,
                            resources={"geometries": len(b)})
                summary["label_tasks"] += 1
                for gid in b:
                    cls = fail_at.get(gid)
                    wall = walls[gid]
                    cpu = wall * float(rng.uniform(1.7, 1.95))  # 2 OpenMP threads per call
                    if cls is None:
                        label_rows.append(writers.label_row(
                            gid, method, status="ok", energy=-2080.0 + float(rng.normal(0, 0.2)),
                            forces=rng.normal(0, 0.5, (3, 3)), wall_s=wall, cpu_s=cpu, task_id=tid))
                        if gid not in test_ids:
                            ok_training.append(gid)
                    else:
                        label_rows.append(writers.label_row(
                            gid, method, status="failed", error_class=cls,
                            error_msg=f"{cls}: simulated", wall_s=wall,
                            cpu_s=None if cls == "oom" else cpu, task_id=tid))
                        summary["failed_labels"][cls] = summary["failed_labels"].get(cls, 0) + 1
            writers.write_labels(s, label_rows)
            summary["labels"] += len(label_rows)
            clock.now = max(t1 for _, t1 in spans) + 2.0
            n_failed = len(fail_at)
            gen.n_labels = len(label_rows)
            gen.label_failed_fraction = n_failed / len(label_rows)

            # ---- train: a training set and ENSEMBLE members on one GPU worker
            label_ids = dict(s.execute(sa.select(m.Label.geometry_id, m.Label.id).where(
                m.Label.status == "ok", m.Label.method_id == method)).tuples().all())
            members = [(label_ids[gid], "test" if gid in test_ids else ("val" if k % 5 == 0 else "train"))
                       for k, gid in enumerate(sorted(label_ids))]
            ts = m.TrainingSet(campaign_id=camp.id, generation_id=gen.id,
                               sha256=hashlib.sha256(repr(members).encode()).hexdigest(),
                               n_train=sum(sp == "train" for _, sp in members),
                               n_val=sum(sp == "val" for _, sp in members),
                               n_test=sum(sp == "test" for _, sp in members))
            s.add(ts)
            s.flush()
            s.execute(sa.insert(m.TrainingSetLabel), [
                {"training_set_id": ts.id, "label_id": lid, "split": sp} for lid, sp in members])
            train_spans = _schedule([float(rng.uniform(50, 80)) for _ in range(ENSEMBLE)], 1, clock.now)
            model_ids = []
            for member, (t0, t1) in enumerate(train_spans):
                tid = _task(s, camp.id, gen.id, "train", "train", clock.now, t0, t1,
                            resources={"member": member})
                mdl = m.Model(generation_id=gen.id, member=member, training_set_id=ts.id,
                              seed=1000 * g + member, config={"model": spec["model"]}, task_id=tid,
                              val_energy_mae=0.004 / (g + 1), val_force_mae=0.12 / (g + 1) ** 0.5,
                              epochs=200, metrics={"epochs": 200})
                s.add(mdl)
                s.flush()
                model_ids.append(mdl.id)
            clock.now = train_spans[-1][1] + 1.0

            # ---- evaluate on the held-out frames, then validate (NN-MD)
            t0 = clock.now + 0.5
            _task(s, camp.id, gen.id, "evaluate", "sample", clock.now, t0, t0 + 4.0)
            clock.now = t0 + 4.5
            n_test = sum(sp == "test" for _, sp in members)
            sig = 0.12 / (g + 1) ** 0.6 * np.exp(rng.normal(0, 0.45, n_test))
            scale_true = 1.4 - 0.15 * g
            err = np.abs(scale_true * sig * np.exp(rng.normal(0, 0.3, n_test)))
            scale = float(np.sqrt(np.sum(err**2) / np.sum(sig**2)))
            k = int(np.ceil((n_test + 1) * 0.9))
            quantile = float(np.sort(err / sig)[k - 1]) if k <= n_test else None
            from scipy.stats import spearmanr

            rho = float(spearmanr(sig, err).statistic)
            cal = {"scale": scale, "quantile": quantile, "coverage": 0.9, "n": n_test,
                   "rmse": float(np.sqrt(np.mean(err**2))), "rms_sigma": float(np.sqrt(np.mean(sig**2))),
                   "spearman": rho}
            force_mae = float(np.mean(err) * 0.8)
            ens_eval = m.ModelEval(
                generation_id=gen.id, model_id=None, eval_set="test", n_frames=n_test,
                energy_mae=0.003 / (g + 1), force_mae=force_mae, force_rmse=float(np.sqrt(np.mean(err**2))),
                calibration_scale=scale, spearman=rho, miscalibration_area=0.12 / (g + 1),
                details={"calibration": cal, "sigma_f": sig.tolist(), "frame_error": err.tolist()})
            s.add(ens_eval)
            for member, mid in enumerate(model_ids):
                s.add(m.ModelEval(generation_id=gen.id, model_id=mid, eval_set="test", n_frames=n_test,
                                  energy_mae=0.004 / (g + 1), force_mae=force_mae * (1.1 + 0.05 * member),
                                  force_rmse=float(np.sqrt(np.mean(err**2))) * 1.1))
            if validation:
                t0 = clock.now + 0.5
                _task(s, camp.id, gen.id, "validate", "sample", clock.now, t0, t0 + 12.0)
                clock.now = t0 + 12.5
                ens_eval.stability_time_fs = [180.0, 420.0, 1000.0, 1000.0, 1000.0][min(g, 4)]
                ens_eval.hr_error = 0.21 / (g + 1) ** 1.3

            # ---- sample: md (2 tasks), adversarial, random; seeds from the training frames
            pool = [gid for gid in ok_training]
            fresh = [gid for gid in selected_prev if gid in pool]
            sample_rows, edges, task_end = [], [], clock.now
            runs: list[tuple[str, int, list[int]]] = []
            plans = [("md", 8), ("md", 8), ("adversarial", 16), ("random", 6)]
            spans = _schedule([float(rng.uniform(8, 20)) for _ in plans], 1, clock.now)
            gen_sigma_scale = 0.06 / (g + 1) ** 1.5  # the ensemble gets more certain
            for j, ((kind, n_seeds), (t0, t1)) in enumerate(zip(plans, spans)):
                tid = _task(s, camp.id, gen.id, "sample", "sample", clock.now, t0, t1,
                            resources={"sampler": kind, "seeds": n_seeds})
                task_end = max(task_end, t1)
                n_fresh = min(len(fresh), n_seeds // 2)
                seeds = list(rng.choice(fresh, size=n_fresh, replace=False)) if n_fresh else []
                seeds += list(rng.choice(pool, size=n_seeds - len(seeds), replace=False))
                seeds = [int(x) for x in seeds]
                run = m.SamplingRun(generation_id=gen.id, kind=kind, task_id=tid, model_generation_id=gen.id,
                                    seed_geometry_id=None,
                                    params={"kind": kind, "rng_seed": 17 * g + j, "seed_geometry_ids": seeds})
                s.add(run)
                s.flush()
                runs.append((kind, run.id, seeds))
                per_seed = {"md": 3, "adversarial": 1, "random": 2}[kind]
                gain = {"md": 2.0, "adversarial": 6.0, "random": 1.5}[kind]
                frames, meta = [], []
                for seed_gid in seeds:
                    s0 = sigma_after.get(seed_gid)
                    if s0 is None:
                        s0 = (gen_sigma_scale * float(np.exp(rng.normal(0, 0.3)))) ** 2
                    for step in range(per_seed):
                        frames.append(_water(rng, 0.08 + 0.04 * step))
                        sf2 = s0 * gain ** (1 + step) * float(np.exp(rng.normal(0, 0.5)))
                        meta.append((seed_gid, step, sf2, s0))
                gids = writers.write_geometries(s, [writers.geometry_row(a, kind) for a in frames])
                for gid, (seed_gid, step, sf2, s0) in zip(gids, meta):
                    sample_rows.append({
                        "sampling_run_id": run.id, "geometry_id": gid, "step": 10 * step if kind == "md" else step,
                        "energy_mean": -2080.0, "sigma_f2": sf2, "sigma_f2_initial": s0,
                        "u_max": 1.5 * sf2, "u_mean": sf2, "log_p": -1.0 if kind == "adversarial" else None,
                        "selected": False, "reason": None})
                    edges.append({"child_id": gid, "parent_id": seed_gid, "relation": kind,
                                  "sampling_run_id": run.id, "info": {"step": step}})
                run.n_frames = len(frames)
                if kind == "md" and g == 1 and j == 0:  # one frame carved into 3 clusters
                    parent = sample_rows[-1]
                    parent["reason"] = "carved"
                    clusters = [_water(rng, 0.05) for _ in range(3)]
                    cids = writers.write_geometries(s, [writers.geometry_row(a, "carved") for a in clusters])
                    for c, cid in enumerate(cids):
                        sample_rows.append({
                            "sampling_run_id": run.id, "geometry_id": cid, "step": parent["step"],
                            "energy_mean": -1040.0, "sigma_f2": parent["sigma_f2"] * (0.6 + 0.5 * c),
                            "sigma_f2_initial": parent["sigma_f2"], "u_max": None, "u_mean": None,
                            "log_p": None, "carve_center": c, "carve_map": np.arange(3, dtype="<i8"),
                            "selected": False, "reason": None})
                        edges.append({"child_id": cid, "parent_id": parent["geometry_id"],
                                      "relation": "carved", "sampling_run_id": run.id,
                                      "info": {"n_caps": 0, "centre": c}})
            clock.now = task_end + 1.0

            # ---- select: buckets on the calibrated σ, the most uncertain candidates
            vals = np.array([scale * np.sqrt(r["sigma_f2"]) if r["reason"] != "carved" else np.nan
                             for r in sample_rows])
            order = np.argsort(-np.nan_to_num(vals, nan=-1.0))
            chosen = []
            for i in order:
                if TRUST_LO <= vals[i] < TRUST_HI and len(chosen) < MAX_SELECTED:
                    chosen.append(int(i))
            for i, (r, v) in enumerate(zip(sample_rows, vals)):
                if r["reason"] == "carved":
                    continue
                r["bucket"] = "accurate" if v < TRUST_LO else ("candidate" if v < TRUST_HI else "failed")
                r["selected"] = i in chosen
                r["reason"] = ("selected" if i in chosen else
                               {"accurate": "below trust_lo", "failed": "above trust_hi"}.get(
                                   r["bucket"], "cap reached"))
            for r in sample_rows:
                r.setdefault("bucket", None)
                r.setdefault("carve_center", None)
                r.setdefault("carve_map", None)
            s.execute(sa.insert(m.Sample), sample_rows)
            ins = writers._insert(s.connection(), m.GeometryEdge).on_conflict_do_nothing()
            s.execute(ins, edges)
            buckets = {b: sum(r["bucket"] == b for r in sample_rows) for b in ("accurate", "candidate", "failed")}
            gen.n_accurate, gen.n_candidate, gen.n_failed = buckets["accurate"], buckets["candidate"], buckets["failed"]
            gen.n_selected = len(chosen)
            gen.trust_lo, gen.trust_hi = TRUST_LO, TRUST_HI
            gen.finished_at = _Clock.at(clock.now)
            selected_prev = [sample_rows[i]["geometry_id"] for i in chosen]
            # once labelled and trained on, the next ensemble is far more certain there
            sigma_after = {gid: sample_rows[i]["sigma_f2"] * float(rng.uniform(0.02, 0.15))
                           for gid, i in zip(selected_prev, chosen)}
            to_label = list(selected_prev)
            clock.now += 1.0
        if generations:
            gen.stop_reason = camp.stop_reason
        camp.updated_at = _Clock.at(clock.now)
        summary["campaign_id"] = camp.id
        summary["end_s"] = clock.now
    return summary


def fill_unfinished_campaign(url: str, name: str = "water-started") -> dict[str, Any]:
    """A campaign still labelling its first generation: initial frames, two label tasks
    (one done with labels, one running) and nothing else."""
    rng = np.random.default_rng(1)
    engine = get_engine(url)
    with Session(engine) as s, s.begin():
        spec = _spec(name, 3)
        camp = m.Campaign(name=name, spec=spec, spec_sha256="ab" * 32, alflow_version="0.1.0",
                          status="running", site="local", created_at=_Clock.at(0))
        s.add(camp)
        s.flush()
        gen = m.Generation(campaign_id=camp.id, idx=0, state="label", started_at=_Clock.at(0))
        s.add(gen)
        s.flush()
        method = writers.ensure_oracle_method(s, {
            "code": "pyscf", "version": "2.8.0", "method": "PBE", "basis": "def2-svp",
            "settings": {}, "settings_sha256": hashlib.sha256(f"pyscf-{name}".encode()).hexdigest()})
        gids = writers.write_geometries(s, [writers.geometry_row(_water(rng, 0.04), "initial") for _ in range(8)])
        run0 = m.SamplingRun(generation_id=gen.id, kind="initial", n_frames=8, params={})
        s.add(run0)
        s.flush()
        s.execute(sa.insert(m.Sample), [{"sampling_run_id": run0.id, "geometry_id": g, "selected": True,
                                         "reason": "initial"} for g in gids])
        done = _task(s, camp.id, gen.id, "label", "oracle", 1.0, 1.5, 60.0, resources={"geometries": 4})
        _task(s, camp.id, gen.id, "label", "oracle", 1.0, None, None, status="running",
              resources={"geometries": 4})
        writers.write_labels(s, [writers.label_row(g, method, status="ok", energy=-2080.0,
                                                   forces=np.zeros((3, 3)), wall_s=14.0, cpu_s=27.0,
                                                   task_id=done) for g in gids[:4]])
        return {"name": name, "campaign_id": camp.id}
