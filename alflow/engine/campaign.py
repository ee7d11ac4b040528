"""The campaign state machine: label -> train -> evaluate -> sample -> select -> stop-check.

The orchestrator (this module) is the only database writer. Each step dispatches Parsl apps
(`apps.py`), writes their results as they arrive (one transaction per finished task), and
then advances `generation.state`, so a killed orchestrator resumes at the step it was in
and re-dispatches only what is missing:

- a geometry that has any label for the campaign's oracle method is never sent again
  (labels are keyed by geometry content hash and method settings hash);
- an ensemble member with a model row is not retrained;
- a sampling batch whose task finished is not rerun.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from alflow import __version__
from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import session_factory
from alflow.engine import apps
from alflow.engine.artifacts import ArtifactStore
from alflow.engine.datasets import Frames, save_frames
from alflow.engine.preflight import preflight
from alflow.errors import InputError
from alflow.spec import CampaignSpec, LoadedSpec, parse_spec, spec_json

STATES = ("label", "train", "evaluate", "validate", "sample", "select", "done")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def in_test_set(content_hash: str, fraction: float) -> bool:
    """Held out for evaluation iff hash bits 64..127 / 2⁶⁴ < fraction: fixed for a geometry
    and independent of the train/validation split, which uses bits 0..63."""
    return int(content_hash[16:32], 16) / 2.0**64 < fraction


@dataclass
class Status:
    """What the live display shows; updated by the state machine as it goes."""

    campaign: str = ""
    generation: int = 0
    step: str = ""
    done: int = 0
    running: int = 0
    failed: int = 0
    oracle_cpu_s: float = 0.0
    force_mae: float | None = None
    buckets: dict[str, int] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[Status], None]


# ============================================================================ starting
def create_campaign(loaded: LoadedSpec, url: str, *, site: str | None, workdir: str | Path) -> int:
    """Record a new campaign, its initial geometries and generation 0 in one transaction."""
    spec = loaded.spec
    preflight(loaded)
    Session = session_factory(url)
    with Session.begin() as s:
        if s.scalar(sa.select(m.Campaign.id).where(m.Campaign.name == spec.name)) is not None:
            raise InputError(
                f"campaign {spec.name!r} already exists in this database; "
                f"continue it with `alflow resume {spec.name}` or rename it", source=str(loaded.path))
        camp = m.Campaign(
            name=spec.name, spec=json.loads(spec_json(spec)), spec_sha256=loaded.sha256,
            alflow_version=__version__, status="created", site=site or spec.site,
            workdir=str(Path(workdir).resolve()))
        s.add(camp)
        s.flush()
        gen = m.Generation(campaign_id=camp.id, idx=0, state="label")
        s.add(gen)
        s.flush()
        ids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in loaded.geometries])
        run = m.SamplingRun(generation_id=gen.id, kind="initial", n_frames=len(ids),
                            params={"sources": [g.path for g in spec.initial_geometries]})
        s.add(run)
        s.flush()
        carve = spec.carving.enabled
        samples, edges = [], []
        seen: set[int] = set()
        for atoms, gid in zip(loaded.geometries, ids):
            if gid in seen:  # the same geometry listed twice is one sample
                continue
            seen.add(gid)
            if not (carve and atoms.pbc.any()):
                samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": True,
                                "reason": "initial"})
                continue
            # a periodic frame is labelled as clusters carved from it (see CarvingSpec)
            samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": False,
                            "reason": "carved"})
            for cl, cid in _initial_clusters(s, atoms, spec):
                samples.append({"sampling_run_id": run.id, "geometry_id": cid, "selected": True,
                                "reason": "initial cluster", "carve_center": int(cl.centre),
                                "carve_map": np.asarray(cl.source_indices, dtype=np.int64)})
                edges.append({"child_id": cid, "parent_id": gid, "relation": "carved",
                              "sampling_run_id": run.id, "info": {"centre": int(cl.centre)}})
        s.execute(sa.insert(m.Sample), samples)
        if edges:
            s.execute(sa.insert(m.GeometryEdge), edges)
        return camp.id


def _initial_clusters(s: Session, frame, spec: CampaignSpec):
    """Clusters carved around `initial_centres` heavy atoms spread over a periodic frame."""
    from alflow.engine.apps import carve_options
    from alflow.sampling.carving import carve_clusters

    heavy = np.flatnonzero(frame.numbers > 1)
    pool = heavy if len(heavy) else np.arange(len(frame))
    rng = np.random.default_rng(spec.seed)
    centres = rng.choice(pool, size=min(spec.carving.initial_centres, len(pool)), replace=False)
    clusters = carve_clusters(frame, [int(c) for c in centres], spec.carving_radius,
                              options=carve_options(spec.carving.model_dump())).clusters
    ids = writers.write_geometries(s, [writers.geometry_row(c.atoms, "initial-carved") for c in clusters])
    return list(zip(clusters, ids))


# ======================================================================== the machine
class CampaignRunner:
    """Runs one campaign to its stop rule on a loaded Parsl config."""

    def __init__(self, url: str, name: str, progress: Progress | None = None):
        self.url = url
        self.Session: sessionmaker[Session] = session_factory(url)
        with self.Session() as s:
            camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
            if camp is None:
                raise InputError(f"no campaign named {name!r} in this database", source="campaign")
            self.campaign_id = camp.id
            self.spec: CampaignSpec = parse_spec(camp.spec, source=f"campaign {name}")
            self.site_name = camp.site or self.spec.site
            self.workdir = Path(camp.workdir or Path.cwd() / "alflow-runs" / name)
        self.store = ArtifactStore(self.workdir / "artifacts")
        self.status = Status(campaign=name)
        self._progress = progress or (lambda st: None)
        from alflow.oracles import make_oracle

        oracle = make_oracle(self.spec.oracle)  # identity only; workers build their own
        self.method_record = oracle.method_record()
        oracle.close()
        self._apps: dict[str, Callable[..., Future]] = {}
        self.oracle_workers: int | None = None  # allocated oracle workers (set from the site)

    # ------------------------------------------------------------------ plumbing
    def _emit(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.status, k, v)
        self._progress(self.status)

    def bind_apps(self) -> None:
        from parsl import python_app

        self._apps = {
            **{f"warmup-{role}": python_app(apps.warm_up, executors=[role])
               for role in ("oracle", "train", "sample")},
            "label": python_app(apps.label_batch, executors=["oracle"]),
            "train": python_app(apps.train_member_app, executors=["train"]),
            "evaluate": python_app(apps.evaluate_app, executors=["sample"]),
            "validate": python_app(apps.validate_app, executors=["sample"]),
            "sample": python_app(apps.sample_app, executors=["sample"]),
        }

    def _submit(self, kind: str, gen: m.Generation, key: str, executor: str,
                resources: dict | None, *args: Any) -> tuple[int, Future]:
        (task_id, fut), = self._submit_many(kind, gen, executor, [(key, resources, args)])
        return task_id, fut

    def _submit_many(self, kind: str, gen: m.Generation, executor: str,
                     jobs: list[tuple[str, dict | None, tuple]]) -> list[tuple[int, Future]]:
        """Dispatch apps, then record their task rows in one transaction. A crash between
        the two loses nothing: no result could have been recorded either, and resume
        re-dispatches whatever has no recorded result."""
        submitted = _now()
        futures = [self._apps[kind](*args) for _, _, args in jobs]
        rows = [{"campaign_id": self.campaign_id, "generation_id": gen.id, "kind": kind, "key": key,
                 "site": self.site_name, "executor": executor, "status": "running",
                 "submitted_at": submitted, "resources": resources,
                 "parsl_task_id": getattr(fut, "tid", None)}
                for (key, resources, _), fut in zip(jobs, futures)]
        with self.Session.begin() as s:
            ids = [s.scalar(sa.insert(m.Task).values(**row).returning(m.Task.id)) for row in rows] \
                if len(rows) < 2 else list(s.scalars(sa.insert(m.Task).returning(m.Task.id, sort_by_parameter_order=True), rows))
        return list(zip(ids, futures))

    def _task_outcome(self, task_id: int, fut: Future, result: dict | None,
                      exc: BaseException | None) -> dict[str, Any]:
        """The task row's final values: when and where it ran, how often, how it ended."""
        record = getattr(fut, "task_record", None) or {}
        values: dict[str, Any] = {"id": task_id, "finished_at": _now(), "started_at": None,
                                  "tries": int(record.get("try_id", 0)) + 1, "slurm_job_id": None,
                                  "error_class": None, "error_msg": None}
        if result is not None:
            values.update(status="done", started_at=_ts(result.get("started")),
                          finished_at=_ts(result.get("finished")),
                          slurm_job_id=result.get("slurm_job_id"))
        else:
            values.update(status="failed", error_class=type(exc).__name__,
                          error_msg=str(exc)[:2000])
        return values

    def _finish_tasks(self, s: Session, outcomes: list[dict[str, Any]]) -> None:
        if outcomes:
            s.execute(sa.update(m.Task), outcomes)  # one executemany, by primary key

    def _finish_task(self, s: Session, task_id: int, fut: Future, result: dict | None,
                     exc: BaseException | None) -> None:
        self._finish_tasks(s, [self._task_outcome(task_id, fut, result, exc)])

    def _wait_batches(self, futures: dict[Future, Any]) -> Iterable[list[tuple[Future, Any, dict | None, BaseException | None]]]:
        """Yield finished tasks in batches: everything that has completed since the last
        batch, so that under load many results share one database transaction."""
        self._emit(running=len(futures))
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            batch = []
            for fut in done:
                try:
                    result, exc = fut.result(), None
                except Exception as e:  # noqa: BLE001 - every failure is recorded, none is fatal
                    result, exc = None, e
                batch.append((fut, futures[fut], result, exc))
            n_failed = sum(exc is not None for *_, exc in batch)
            self._emit(running=len(pending), done=self.status.done + len(batch) - n_failed,
                       failed=self.status.failed + n_failed)
            yield batch

    def _wait(self, futures: dict[Future, Any]) -> Iterable[tuple[Future, Any, dict | None, BaseException | None]]:
        for batch in self._wait_batches(futures):
            yield from batch

    def _generation(self, s: Session) -> m.Generation:
        return s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == self.campaign_id)
                         .order_by(m.Generation.idx.desc()).limit(1)).one()

    def _set_state(self, gen_id: int, state: str, **values: Any) -> None:
        with self.Session.begin() as s:
            s.execute(sa.update(m.Generation).where(m.Generation.id == gen_id).values(state=state, **values))

    # ------------------------------------------------------------------ main loop
    def run(self) -> str:
        """Advance generation by generation until a stop rule fires; returns the reason."""
        with self.Session.begin() as s:
            camp = s.get(m.Campaign, self.campaign_id)
            if camp.status == "finished":
                return camp.stop_reason or "finished"
            stale = s.execute(sa.update(m.Task).where(
                m.Task.campaign_id == self.campaign_id, m.Task.status.in_(("pending", "running"))
            ).values(status="failed", error_class="orchestrator_lost", finished_at=_now(),
                     error_msg="the orchestrator stopped before this task reported back"))
            if stale.rowcount:
                self._emit(message=f"{stale.rowcount} task(s) from an interrupted run marked lost")
            camp.status, camp.updated_at = "running", _now()
            method_id = writers.ensure_oracle_method(s, self.method_record)
        self.method_id = method_id
        with self.Session.begin() as s:
            self.status.oracle_cpu_s = float(s.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(m.Label.cpu_s), 0.0))
                .join(m.Task, m.Task.id == m.Label.task_id)
                .where(m.Task.campaign_id == self.campaign_id)) or 0.0)
        self._warm_up()
        steps = {"label": self.label, "train": self.train, "evaluate": self.evaluate,
                 "validate": self.validate, "sample": self.sample, "select": self.select, "done": self.stop_check}
        while True:
            with self.Session() as s:
                gen = self._generation(s)
                s.expunge(gen)
            self._emit(generation=gen.idx, step=gen.state)
            reason = steps[gen.state](gen)
            if reason:
                with self.Session.begin() as s:
                    s.execute(sa.update(m.Campaign).where(m.Campaign.id == self.campaign_id).values(
                        status="finished", stop_reason=reason, updated_at=_now()))
                    s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(
                        stop_reason=reason))
                self._emit(step="finished", message=reason)
                return reason

    def _warm_up(self) -> None:
        """One warm-up task per executor, in parallel, recorded (kind 'warmup'): workers
        start and import their science code before the first step is timed."""
        if not self._apps:
            return
        self._emit(step="starting workers")
        oracle_spec = self.spec.oracle.model_dump(mode="json")
        futures = {}
        with self.Session() as s:
            gen = self._generation(s)
            s.expunge(gen)
        for role in ("oracle", "train", "sample"):
            n = self.oracle_workers if role == "oracle" and self.oracle_workers else 1
            args = (role, oracle_spec if role == "oracle" else None)
            for (task_id, fut) in self._submit_many(f"warmup-{role}", gen, role,
                                                    [(None, {"role": role}, args)] * n):
                futures[fut] = task_id
        for finished in self._wait_batches(futures):
            with self.Session.begin() as s:
                for fut, task_id, result, exc in finished:
                    self._finish_task(s, task_id, fut, result, exc)
        self._emit(done=0, failed=0)

    def mark_interrupted(self) -> None:
        with self.Session.begin() as s:
            s.execute(sa.update(m.Campaign).where(m.Campaign.id == self.campaign_id)
                      .values(status="stopped", updated_at=_now()))
            s.execute(sa.update(m.Task).where(
                m.Task.campaign_id == self.campaign_id, m.Task.status.in_(("pending", "running"))
            ).values(status="cancelled", finished_at=_now()))

    # ------------------------------------------------------------------ queries
    def _selected_geometry_ids(self, s: Session, gen: m.Generation) -> list[int]:
        """Geometries this generation must label: the initial ones in generation 0, later
        the frames the previous generation selected."""
        q = (sa.select(m.Sample.geometry_id).join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
             .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
             .where(m.Generation.campaign_id == self.campaign_id, m.Sample.selected.is_(True)))
        if gen.idx == 0:
            q = q.where(m.SamplingRun.kind == "initial", m.Generation.idx == 0)
        else:
            q = q.where(m.Generation.idx == gen.idx - 1, m.SamplingRun.kind != "initial")
        return list(dict.fromkeys(s.scalars(q.order_by(m.Sample.id))))

    def _campaign_labels(self, s: Session) -> list[tuple[m.Label, m.Geometry, str]]:
        """Every successful label of a geometry this campaign chose to label, with its
        geometry and origin sampler, in content-hash order: label ids follow the order in
        which oracle tasks finished, and seeds and training batches drawn from this list
        must not, or one campaign seed gives different campaigns."""
        chosen = (sa.select(m.Sample.geometry_id).join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
                  .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
                  .where(m.Generation.campaign_id == self.campaign_id, m.Sample.selected.is_(True)))
        rows = s.execute(
            sa.select(m.Label, m.Geometry).join(m.Geometry, m.Geometry.id == m.Label.geometry_id)
            .where(m.Label.method_id == self.method_id, m.Label.status == "ok",
                   m.Label.geometry_id.in_(chosen)).order_by(m.Geometry.content_hash)).all()
        return [(lab, geo, geo.origin) for lab, geo in rows]

    def _recent_label_geometry_ids(self, s: Session) -> set[int]:
        """Geometries of the latest selection that has been labelled: the frontier of the
        training set (before any: the initial geometries)."""
        rows = s.execute(
            sa.select(m.Generation.idx, m.SamplingRun.kind != "initial", m.Sample.geometry_id)
            .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
            .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
            .join(m.Label, m.Label.geometry_id == m.Sample.geometry_id)
            .where(m.Generation.campaign_id == self.campaign_id, m.Sample.selected.is_(True),
                   m.Label.method_id == self.method_id, m.Label.status == "ok")).all()
        # generation 0 holds both the initial geometries and its own selections: the
        # latter are newer
        latest = max(((idx, sampled) for idx, sampled, _ in rows), default=None)
        return {gid for idx, sampled, gid in rows if (idx, sampled) == latest}

    # ================================================================== 1. label
    def label(self, gen: m.Generation) -> str | None:
        self._emit(step="label", done=0, failed=0)
        with self.Session() as s:
            wanted = self._selected_geometry_ids(s, gen)
            have = set(s.scalars(sa.select(m.Label.geometry_id).where(
                m.Label.method_id == self.method_id, m.Label.geometry_id.in_(wanted))))
            todo = [g for g in wanted if g not in have]
            geos = {g.id: g for g in s.scalars(sa.select(m.Geometry).where(m.Geometry.id.in_(todo)))}
            jobs = [(g, writers.atoms_from_geometry(geos[g])) for g in todo]
        size = self.spec.evaluation.label_batch_size
        oracle_spec = self.spec.oracle.model_dump(mode="json")
        batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        submitted = self._submit_many("label", gen, "oracle", [
            (_key("label", self.method_id, [g for g, _ in b]),
             {"geometries": len(b), "oracle_workers": self.oracle_workers}, (b, oracle_spec))
            for b in batches])
        futures = {fut: (task_id, b) for (task_id, fut), b in zip(submitted, batches)}
        for finished in self._wait_batches(futures):
            with self.Session.begin() as s:
                rows, outcomes = [], []
                for fut, (task_id, batch), result, exc in finished:
                    outcomes.append(self._task_outcome(task_id, fut, result, exc))
                    if result is not None:
                        rows += [writers.label_row(method_id=self.method_id, task_id=task_id, **lab)
                                 for lab in result["labels"]]
                        self.status.oracle_cpu_s += sum(lab["cpu_s"] or 0.0 for lab in result["labels"])
                    else:  # the whole task died (worker lost, retries spent): failures are data
                        rows += [writers.label_row(g, self.method_id, status="failed", task_id=task_id,
                                                   error_class="crash" if "Lost" in type(exc).__name__
                                                   else "task_error",
                                                   error_msg=f"{type(exc).__name__}: {exc}"[:2000])
                                 for g, _ in batch]
                self._finish_tasks(s, outcomes)
                writers.write_labels(s, rows)
        with self.Session() as s:
            statuses = s.execute(sa.select(m.Label.status, sa.func.count()).join(m.Task)
                                 .where(m.Task.generation_id == gen.id).group_by(m.Label.status)).all()
        counts = dict(statuses)
        total = sum(counts.values())
        failed_fraction = counts.get("failed", 0) / total if total else 0.0
        gen_failed = failed_fraction > self.spec.stopping.max_failed_fraction
        self._set_state(gen.id, "train", n_labels=total, label_failed_fraction=failed_fraction,
                        failed=gen_failed)
        if gen_failed and self.spec.stopping.stop_on_failed_generation:
            return (f"generation {gen.idx} failed: {failed_fraction:.0%} of labels failed "
                    f"(max_failed_fraction {self.spec.stopping.max_failed_fraction:.0%})")
        return None

    # ================================================================== 2. train
    def _split(self, geo: m.Geometry) -> str:
        from alflow.potentials import in_validation

        if geo.origin.startswith("initial") and in_test_set(geo.content_hash, self.spec.evaluation.test_fraction):
            return "test"
        return "val" if in_validation(geo.content_hash, self.spec.training.val_fraction) else "train"

    def _frames(self, rows: list[tuple[m.Label, m.Geometry, str]]) -> Frames:
        atoms = [writers.atoms_from_geometry(g) for _, g, _ in rows]
        return Frames(
            atoms=atoms, energies=np.array([lab.energy for lab, _, _ in rows], dtype=float),
            forces=[lab.forces.reshape(-1, 3) for lab, _, _ in rows],
            stresses=[None if lab.stress is None else lab.stress.reshape(3, 3) for lab, _, _ in rows],
            ids=np.array([lab.id for lab, _, _ in rows], dtype=np.int64))

    def _gen_dir(self, gen: m.Generation) -> Path:
        d = self.workdir / f"gen-{gen.idx:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _training_set(self, gen: m.Generation) -> tuple[int, Path, Path]:
        """The generation's training set (recorded once), and its train+val / test files."""
        with self.Session.begin() as s:
            rows = self._campaign_labels(s)
            splits = [self._split(geo) for _, geo, _ in rows]
            members = sorted((lab.id, sp) for (lab, _, _), sp in zip(rows, splits))
            sha = _key("training_set", members)
            ts = s.scalars(sa.select(m.TrainingSet).where(
                m.TrainingSet.generation_id == gen.id, m.TrainingSet.sha256 == sha)).first()
            if ts is None:
                ts = m.TrainingSet(campaign_id=self.campaign_id, generation_id=gen.id, sha256=sha,
                                   n_train=splits.count("train"), n_val=splits.count("val"),
                                   n_test=splits.count("test"))
                s.add(ts)
                s.flush()
                s.execute(sa.insert(m.TrainingSetLabel), [
                    {"training_set_id": ts.id, "label_id": lab_id, "split": sp} for lab_id, sp in members])
            ts_id = ts.id
            fit = [r for r, sp in zip(rows, splits) if sp != "test"]
            test = [r for r, sp in zip(rows, splits) if sp == "test"]
            if not fit:
                raise InputError("no successful labels to train on (every label failed or was held out)",
                                 source=f"campaign {self.spec.name}")
            d = self._gen_dir(gen)
            return ts_id, save_frames(d / "train.npz", self._frames(fit)), save_frames(d / "test.npz", self._frames(test))

    def _member_seed(self, gen_idx: int, member: int) -> int:
        return int(_key("member", self.spec.seed, gen_idx, member)[:8], 16)

    def train(self, gen: m.Generation) -> str | None:
        self._emit(step="train", done=0, failed=0)
        ts_id, train_file, _ = self._training_set(gen)
        with self.Session() as s:
            trained = set(s.scalars(sa.select(m.Model.member).where(m.Model.generation_id == gen.id)))
            previous = {}
            if gen.idx > 0 and self.spec.training.warm_start:
                prev = s.execute(
                    sa.select(m.Model.member, m.Artifact.uri, m.Artifact.sha256)
                    .join(m.Artifact, m.Artifact.id == m.Model.checkpoint_id)
                    .join(m.Generation, m.Generation.id == m.Model.generation_id)
                    .where(m.Generation.campaign_id == self.campaign_id, m.Generation.idx == gen.idx - 1)).all()
                previous = {mem: (self.store.path_for(sha), sha) for mem, _, sha in prev}
        model, training = self.spec.model.model_dump(mode="json"), self.spec.training.model_dump(mode="json")
        futures = {}
        for member in range(self.spec.model.ensemble_size):
            if member in trained:
                continue
            seed = self._member_seed(gen.idx, member)
            init, init_sha = previous.get(member, (None, None))
            workdir = self._gen_dir(gen) / f"member-{member}"
            key = _key("train", ts_id, member, seed)
            task_id, fut = self._submit(
                "train", gen, key, "train", {"member": member}, str(train_file), model, training,
                seed, str(workdir), None if init is None else str(init), init_sha)
            futures[fut] = (task_id, member, seed)
        for fut, (task_id, member, seed), result, exc in self._wait(futures):
            with self.Session.begin() as s:
                self._finish_task(s, task_id, fut, result, exc)
                if result is None:
                    continue
                stored = self.store.put(result["checkpoint"], result["sha256"])
                art_id = self._artifact(s, stored, "checkpoint")
                metrics = result["metrics"]
                s.add(m.Model(generation_id=gen.id, member=member, training_set_id=ts_id, seed=seed,
                              config={"model": model, "training": training}, checkpoint_id=art_id,
                              task_id=task_id, val_energy_mae=metrics.get("val_energy_mae_per_atom"),
                              val_force_mae=metrics.get("val_force_mae"), epochs=metrics.get("epochs"),
                              metrics=metrics))
        with self.Session() as s:
            n = s.scalar(sa.select(sa.func.count()).select_from(m.Model).where(m.Model.generation_id == gen.id))
        if n < 2:
            return f"generation {gen.idx}: only {n} ensemble member(s) trained; an uncertainty needs 2"
        self._set_state(gen.id, "evaluate")
        return None

    def _artifact(self, s: Session, stored, kind: str) -> int:
        ins = (writers._insert(s.connection(), m.Artifact)
               .values(sha256=stored.sha256, uri=stored.uri, kind=kind, size_bytes=stored.size_bytes)
               .on_conflict_do_nothing(index_elements=["sha256"]))
        s.execute(ins)
        return s.scalar(sa.select(m.Artifact.id).where(m.Artifact.sha256 == stored.sha256))

    def _ensemble(self, s: Session, gen_id: int) -> tuple[list[str], list[str], list[int]]:
        rows = s.execute(sa.select(m.Model.id, m.Artifact.sha256).join(
            m.Artifact, m.Artifact.id == m.Model.checkpoint_id).where(
            m.Model.generation_id == gen_id).order_by(m.Model.member)).all()
        return ([str(self.store.path_for(sha)) for _, sha in rows], [sha for _, sha in rows],
                [mid for mid, _ in rows])

    # ================================================================== 3. evaluate
    def evaluate(self, gen: m.Generation) -> str | None:
        self._emit(step="evaluate", done=0, failed=0)
        test_file = self._gen_dir(gen) / "test.npz"
        if not test_file.exists():
            self._training_set(gen)
        with self.Session() as s:
            paths, shas, model_ids = self._ensemble(s, gen.id)
            n_test = s.scalar(sa.select(m.TrainingSet.n_test).where(m.TrainingSet.generation_id == gen.id)
                              .order_by(m.TrainingSet.id.desc()).limit(1))
        if n_test:
            key = _key("evaluate", gen.id, shas)
            task_id, fut = self._submit("evaluate", gen, key, "sample", None, paths, shas, str(test_file))
            for done, _, result, exc in self._wait({fut: None}):
                with self.Session.begin() as s:
                    self._finish_task(s, task_id, done, result, exc)
                    if result is not None:
                        self._record_eval(s, gen, result, model_ids)
        self._set_state(gen.id, "validate")
        return None

    # ================================================================== 3b. validate
    def validate(self, gen: m.Generation) -> str | None:
        """NN-MD stability time and h(r) error of this generation's ensemble."""
        v = self.spec.validation
        if v.enabled:
            self._emit(step="validate", done=0, failed=0)
            with self.Session() as s:
                paths, shas, _ = self._ensemble(s, gen.id)
                rows = self._campaign_labels(s)
                test = [geo for _, geo, _ in rows if self._split(geo) == "test"]
                pool = test or [geo for _, geo, origin in rows if origin == "initial"]
                starts = [writers.atoms_from_geometry(g) for g in pool[: v.starts]]
            settings = v.model_dump(mode="json")
            if settings["reference"] == "oracle":
                if self.spec.oracle.kind != "ase":
                    raise InputError("validation.reference 'oracle' needs an ASE oracle; name a "
                                     "cheap stand-in calculator such as 'tblite' instead",
                                     source=f"campaign {self.spec.name}")
                settings["reference"] = self.spec.oracle.calculator
                settings["reference_settings"] = self.spec.oracle.settings
            key = _key("validate", gen.id, shas)
            task_id, fut = self._submit("validate", gen, key, "sample", None, paths, shas, starts,
                                        settings, str(self.workdir / "validation-reference"),
                                        self.spec.seed)
            for done, _, result, exc in self._wait({fut: None}):
                with self.Session.begin() as s:
                    self._finish_task(s, task_id, done, result, exc)
                    if result is not None:
                        self._record_validation(s, gen, result)
        self._set_state(gen.id, "sample")
        return None

    def _record_validation(self, s: Session, gen: m.Generation, result: dict) -> None:
        row = s.scalars(sa.select(m.ModelEval).where(
            m.ModelEval.generation_id == gen.id, m.ModelEval.model_id.is_(None))).first()
        if row is None:
            row = m.ModelEval(generation_id=gen.id, model_id=None, eval_set="validation-md", n_frames=0)
            s.add(row)
        row.stability_time_fs = result["stability_time_fs"]
        row.hr_error = result["hr_error"]
        row.details = {**(row.details or {}), "validation": result["starts"]}

    def _record_eval(self, s: Session, gen: m.Generation, result: dict, model_ids: list[int]) -> None:
        ens = result["ensemble"]
        cal = ens.get("calibration", {})
        s.execute(sa.delete(m.ModelEval).where(m.ModelEval.generation_id == gen.id))
        s.add(m.ModelEval(generation_id=gen.id, model_id=None, eval_set="test", n_frames=ens["n_frames"],
                          energy_mae=ens["energy_mae"], force_mae=ens["force_mae"],
                          force_rmse=ens["force_rmse"], calibration_scale=cal.get("scale"),
                          spearman=_finite(cal.get("spearman")),
                          miscalibration_area=_finite(ens.get("miscalibration_area")),
                          details={"calibration": cal, "sigma_f": ens["sigma_f"],
                                   "frame_error": ens["frame_error"]}))
        for mid, mem in zip(model_ids, result["members"]):
            s.add(m.ModelEval(generation_id=gen.id, model_id=mid, eval_set="test",
                              n_frames=ens["n_frames"], **mem))
        self._emit(force_mae=ens["force_mae"])

    def _calibration_scale(self, s: Session, gen_id: int) -> float:
        scale = s.scalar(sa.select(m.ModelEval.calibration_scale).where(
            m.ModelEval.generation_id == gen_id, m.ModelEval.model_id.is_(None)))
        return float(scale) if scale and np.isfinite(scale) and scale > 0 else 1.0

    # ================================================================== 4. sample
    def sample(self, gen: m.Generation) -> str | None:
        self._emit(step="sample", done=0, failed=0)
        rng = np.random.default_rng(int(_key("sample", self.spec.seed, gen.idx)[:8], 16))
        with self.Session() as s:
            paths, shas, _ = self._ensemble(s, gen.id)
            rows = self._campaign_labels(s)
            seeds_pool = [(geo.id, writers.atoms_from_geometry(geo), lab.energy)
                          for lab, geo, _ in rows if self._split(geo) != "test"]
            e_pa = np.array([e / len(a) for _, a, e in seeds_pool])
            if self.spec.carving.enabled:
                # condensed phase: sample the periodic frames themselves; what gets labelled
                # are the clusters carved from them
                frames = s.scalars(
                    sa.select(m.Geometry).join(m.Sample, m.Sample.geometry_id == m.Geometry.id)
                    .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
                    .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
                    .where(m.Generation.campaign_id == self.campaign_id,
                           m.SamplingRun.kind == "initial", m.Sample.reason == "carved")).all()
                if frames:
                    seeds_pool = [(g.id, writers.atoms_from_geometry(g), None) for g in frames]
            recent_ids = self._recent_label_geometry_ids(s)
            recent = [i for i, (gid, _, _) in enumerate(seeds_pool) if gid in recent_ids]
            done_keys = set(s.scalars(sa.select(m.Task.key).where(
                m.Task.generation_id == gen.id, m.Task.kind == "sample", m.Task.status == "done")))
            scale = self._calibration_scale(s, gen.id)
        context = {"train_energies_per_atom": e_pa.tolist(),
                   "trust_hi_sigma": self.spec.selection.trust_hi / scale}
        if self.spec.carving.enabled:
            c = self.spec.carving
            context.update(carve=True, radius=self.spec.carving_radius, z_score=c.z_score,
                           use_force_variance=c.use_force_variance, carve_options=c.model_dump())
        futures = {}
        for k, sampler in enumerate(self.spec.samplers):
            n_seeds = sampler.walkers if sampler.kind == "md" else sampler.seeds
            n_recent = round(sampler.recent_seed_fraction * n_seeds) if recent else 0
            picks = rng.choice(len(seeds_pool), size=n_seeds - n_recent,
                               replace=n_seeds - n_recent > len(seeds_pool))
            if n_recent:
                picks = np.concatenate([rng.choice(recent, size=n_recent, replace=n_recent > len(recent)),
                                        picks])
            batch = 8 if sampler.kind == "md" else 16
            for b in range(0, len(picks), batch):
                chosen = [seeds_pool[i] for i in picks[b : b + batch]]
                rng_seed = int(_key("rng", self.spec.seed, gen.idx, k, b)[:8], 16)
                key = _key("sample", gen.id, k, b, shas)
                if key in done_keys:
                    continue
                task_id, fut = self._submit(
                    "sample", gen, key, "sample", {"sampler": sampler.kind, "seeds": len(chosen)},
                    sampler.kind, sampler.model_dump(mode="json"), paths, shas,
                    [a for _, a, _ in chosen], context, rng_seed)
                futures[fut] = (task_id, sampler, [g for g, _, _ in chosen], rng_seed)
        for fut, (task_id, sampler, seed_ids, rng_seed), result, exc in self._wait(futures):
            with self.Session.begin() as s:
                self._finish_task(s, task_id, fut, result, exc)
                if result is not None:
                    self._record_samples(s, gen, task_id, sampler, seed_ids, rng_seed, result)
        self._set_state(gen.id, "select")
        return None

    def _record_samples(self, s: Session, gen: m.Generation, task_id: int, sampler, seed_ids: list[int],
                        rng_seed: int, result: dict) -> None:
        cands = result["candidates"]
        run = m.SamplingRun(generation_id=gen.id, kind=sampler.kind, task_id=task_id,
                            model_generation_id=gen.id, n_frames=len(cands),
                            seed_geometry_id=seed_ids[0] if len(set(seed_ids)) == 1 else None,
                            params={**sampler.model_dump(mode="json"), "rng_seed": rng_seed,
                                    "seed_geometry_ids": seed_ids, "records": result.get("records")})
        s.add(run)
        s.flush()
        if not cands:
            return
        gids = writers.write_geometries(s, [writers.geometry_row(c["atoms"], c["relation"]) for c in cands])
        edges, samples = [], []
        for c, gid in zip(cands, gids):
            parent = gids[c["carved_from"]] if "carved_from" in c else seed_ids[c["parent"]]
            if parent != gid:
                edges.append({"child_id": gid, "parent_id": parent, "relation": c["relation"],
                              "sampling_run_id": run.id, "info": {"step": c["step"], **(c.get("info") or {})}})
            carved_into = c.get("carved_into")
            samples.append({
                "sampling_run_id": run.id, "geometry_id": gid, "step": c["step"],
                "energy_mean": c["energy_mean"], "sigma_f2": c["sigma_f2"],
                "sigma_f2_initial": c["sigma_f2_initial"], "u_max": c["u_max"], "u_mean": c["u_mean"],
                "log_p": c["log_p"], "atomic_uncertainty": c["atomic_uncertainty"],
                "carve_center": c.get("carve_center"), "carve_map": c.get("carve_map"),
                "selected": False, "reason": None if carved_into is None else "carved",
            })
        if edges:
            ins = writers._insert(s.connection(), m.GeometryEdge).on_conflict_do_nothing()
            s.execute(ins, list({(e["child_id"], e["parent_id"]): e for e in edges}.values()))
        s.execute(sa.insert(m.Sample), samples)

    # ================================================================== 5. select
    def select(self, gen: m.Generation) -> str | None:
        from alflow.sampling.selection import select_frames

        self._emit(step="select")
        sel = self.spec.selection
        with self.Session() as s:
            scale = self._calibration_scale(s, gen.id)
            rows = s.execute(
                sa.select(m.Sample, m.Geometry).join(m.Geometry, m.Geometry.id == m.Sample.geometry_id)
                .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id).where(m.SamplingRun.generation_id == gen.id,
                                           m.SamplingRun.kind != "initial")
                .order_by(m.Sample.id)).all()
            rows = [(smp, geo) for smp, geo in rows if smp.reason != "carved"]
            training = [writers.atoms_from_geometry(geo) for _, geo, _ in self._campaign_labels(s)]
            used = self._oracle_calls(s)
            eval_sigma = self._train_sigma(s, gen.id)
        budget = self.spec.stopping.oracle_budget
        cap = sel.max_per_generation if budget is None else max(0, min(sel.max_per_generation, budget - used))
        values = np.array([scale * np.sqrt(max(smp.sigma_f2 or 0.0, 0.0)) for smp, _ in rows])
        verdicts = select_frames(
            [writers.atoms_from_geometry(geo) for _, geo in rows], values,
            trust_lo=sel.trust_lo, trust_hi=sel.trust_hi, thresholds=sel.thresholds,
            training_uncertainty=None if eval_sigma is None else eval_sigma * scale,
            training_frames=training, dedupe_tol=sel.dedupe_tol, max_per_generation=cap,
            strategy=sel.strategy, seed=int(_key("select", self.spec.seed, gen.idx)[:8], 16),
            hashes=[geo.content_hash for _, geo in rows],
        ).verdicts if rows else []
        with self.Session.begin() as s:
            if rows:
                s.execute(sa.update(m.Sample), [
                    {"id": smp.id, "bucket": v.bucket, "selected": v.selected, "reason": v.reason[:80]}
                    for (smp, _), v in zip(rows, verdicts)])
            buckets = {b: sum(v.bucket == b for v in verdicts) for b in ("accurate", "candidate", "failed")}
            n_sel = sum(v.selected for v in verdicts)
            s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(
                state="done", n_accurate=buckets["accurate"], n_candidate=buckets["candidate"],
                n_failed=buckets["failed"], n_selected=n_sel, trust_lo=sel.trust_lo,
                trust_hi=sel.trust_hi, finished_at=_now()))
        self._emit(buckets={**buckets, "selected": n_sel})
        return None

    def _train_sigma(self, s: Session, gen_id: int) -> np.ndarray | None:
        details = s.scalar(sa.select(m.ModelEval.details).where(
            m.ModelEval.generation_id == gen_id, m.ModelEval.model_id.is_(None)))
        if details and details.get("sigma_f"):
            return np.asarray(details["sigma_f"], dtype=float)
        return None

    def _oracle_calls(self, s: Session) -> int:
        return int(s.scalar(sa.select(sa.func.count()).select_from(m.Label).join(m.Task)
                            .where(m.Task.campaign_id == self.campaign_id)) or 0)

    # ================================================================== 6. stop?
    def stop_check(self, gen: m.Generation) -> str | None:
        stop = self.spec.stopping
        with self.Session() as s:
            used = self._oracle_calls(s)
            mae = s.scalar(sa.select(m.ModelEval.force_mae).where(
                m.ModelEval.generation_id == gen.id, m.ModelEval.model_id.is_(None)))
            history = s.execute(sa.select(m.Generation.n_accurate, m.Generation.n_candidate,
                                          m.Generation.n_failed)
                                .where(m.Generation.campaign_id == self.campaign_id)
                                .order_by(m.Generation.idx.desc()).limit(stop.accurate_generations)).all()
            g = s.get(m.Generation, gen.id)
        if stop.target_force_mae is not None and mae is not None and mae <= stop.target_force_mae:
            return f"target force MAE reached: {mae:.4f} <= {stop.target_force_mae} eV/Å"
        if stop.accurate_fraction is not None and len(history) >= stop.accurate_generations:
            fracs = [a / max(1, (a or 0) + (c or 0) + (f or 0)) for a, c, f in history]
            if all(fr >= stop.accurate_fraction for fr in fracs):
                return (f"accurate fraction >= {stop.accurate_fraction:.0%} for "
                        f"{stop.accurate_generations} generations")
        if gen.idx + 1 >= stop.max_generations:
            return f"max_generations reached ({stop.max_generations})"
        if stop.oracle_budget is not None and used >= stop.oracle_budget:
            return f"oracle budget spent ({used} of {stop.oracle_budget} calls)"
        if not g.n_selected:
            return "no new candidates selected: nothing left to label"
        with self.Session.begin() as s:
            s.add(m.Generation(campaign_id=self.campaign_id, idx=gen.idx + 1, state="label"))
        return None


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# ======================================================================== entry points
def retry_cost(exc: BaseException, task_record: dict) -> float:
    """Parsl retry handler: a deterministic Python error will fail again, so it spends the
    whole retry budget at once; a lost worker or block costs one try."""
    name = type(exc).__name__
    if name in ("WorkerLost", "ManagerLost", "ConnectionError", "TimeoutError", "BadStateException"):
        return 1.0
    return 1e6


def run_with_parsl(runner: CampaignRunner, site, run_dir: Path) -> str:
    """Load the site's Parsl config, run the campaign, and always shut Parsl down."""
    import parsl

    from alflow.engine.sites import to_parsl_config

    from alflow.engine.sites import workers_per_node

    config = to_parsl_config(site, run_dir, retry_handler=retry_cost)
    oracle = site.executors["oracle"]
    blocks = getattr(oracle.provider, "max_blocks", 1) * getattr(oracle.provider, "nodes_per_block", 1)
    runner.oracle_workers = workers_per_node("oracle", oracle) * blocks
    runner.bind_apps()
    dfk = parsl.load(config)
    try:
        return runner.run()
    except KeyboardInterrupt:
        runner.mark_interrupted()
        raise
    finally:
        dfk.cleanup()
        parsl.clear()


def run_campaign(name: str, url: str, *, site_name: str | None = None,
                 progress: Progress | None = None) -> str:
    from alflow.engine.sites import load_site

    runner = CampaignRunner(url, name, progress)
    site = load_site(site_name or runner.site_name)
    run_dir = runner.workdir / "runinfo"
    return run_with_parsl(runner, site, run_dir)


def campaign_summary(url: str, name: str) -> dict[str, Any]:
    """Campaign status for `alflow status`: generations, labels, tasks."""
    Session = session_factory(url)
    with Session() as s:
        camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        gens = s.execute(sa.select(m.Generation.idx, m.Generation.state, m.Generation.n_labels,
                                   m.Generation.label_failed_fraction, m.Generation.n_selected,
                                   m.Generation.n_accurate, m.Generation.n_candidate,
                                   m.Generation.n_failed)
                         .where(m.Generation.campaign_id == camp.id).order_by(m.Generation.idx)).all()
        errors = dict(s.execute(sa.select(m.Generation.idx, m.ModelEval.force_mae).join(
            m.Generation, m.Generation.id == m.ModelEval.generation_id).where(
            m.Generation.campaign_id == camp.id, m.ModelEval.model_id.is_(None))).all())
        tasks = dict(s.execute(sa.select(m.Task.status, sa.func.count()).where(
            m.Task.campaign_id == camp.id).group_by(m.Task.status)).all())
        cpu = s.scalar(sa.select(sa.func.sum(m.Label.cpu_s)).join(m.Task).where(m.Task.campaign_id == camp.id))
    return {"name": camp.name, "status": camp.status, "stop_reason": camp.stop_reason,
            "site": camp.site, "workdir": camp.workdir, "tasks": tasks, "oracle_cpu_s": cpu or 0.0,
            "generations": [dict(g._mapping) | {"force_mae": errors.get(g.idx)} for g in gens]}
