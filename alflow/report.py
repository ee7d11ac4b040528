"""`alflow report NAME`: one self-contained HTML page about a campaign, from the provenance
database alone.

`write_report(url, campaign, out_dir)` reads the campaign with SQL (the views of
`alflow.db.views` where they fit, plain SELECTs on the tables elsewhere), draws the figures
with matplotlib's Agg renderer (no pyplot state), writes each one as a PNG file in
`out_dir`, and writes `out_dir/report.html` with the same PNGs embedded as base64 data URIs:
no external CSS, JavaScript, fonts or images, so the page can be mailed or archived alone.

Figures (each is skipped, with a sentence on the page saying why, when its data is absent):

- `learning_curves.png`: held-out force MAE, NN-MD stability time and h(r) error of the
  ensemble per generation, against the generation, the cumulative oracle calls and the
  cumulative oracle CPU-hours spent up to and including that generation's labelling;
- `parity.png`: held-out σ_F against the observed frame force error (from
  `model_eval.details`) for the last evaluated generation, with the calibrated line s·σ_F,
  the coverage bound q·σ_F and Spearman's ρ; `parity_all.png`: the same per generation;
- `sigma_distribution.png`: per generation and sampler kind, σ_F of the seeds (before
  sampling), of the candidates, of the selected frames, and of the selected frames under
  the next generation's ensemble (after they were labelled and trained on) where the
  database has it;
- `buckets.png`: accurate / candidate / failed counts per generation, and the selected;
- `oracle_cost.png`: oracle calls (ok / failed), CPU and wall time, and failure classes
  per generation;
- `carving.png` (carving campaigns only): sizes of the labelled carved clusters and the
  oracle spend per generation weighted as Σ n_atoms³ (carved clusters vs other structures);
- `timeline.png`: every timed task, one band per executor (lanes within a band show
  concurrent tasks), coloured by kind, with the labelling windows shaded.

`oracle_utilisation(url, campaign)` is the number `alflow status` prints; its definition
is in its docstring.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from alflow.db import models as m
from alflow.db.queries import require_schema
from alflow.db.session import get_engine
from alflow.errors import InputError

HTML_NAME = "report.html"
FIGURE_NAMES = ("learning_curves", "parity", "parity_all", "sigma_distribution", "buckets",
                "oracle_cost", "timeline")
OPTIONAL_FIGURE_NAMES = ("carving",)  # only for campaigns that labelled carved clusters
DPI = 110

BUCKET_COLOURS = {"accurate": "#4c9a2a", "candidate": "#e69f00", "failed": "#c0392b",
                  "selected": "#0072b2"}
KIND_COLOURS = {"label": "#0072b2", "train": "#e69f00", "evaluate": "#009e73",
                "validate": "#cc79a7", "sample": "#56b4e9"}
OTHER_COLOURS = ["#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#d62728"]
SAMPLER_ORDER = ("md", "adversarial", "random", "carved")
MAX_SIGMA_ROWS = 6
# keys of task.resources that, on a label task, name how many oracle workers were allocated
WORKER_KEYS = ("oracle_workers", "workers")


# ============================================================================ data
@dataclass
class Data:
    campaign: dict[str, Any]
    generations: list[dict[str, Any]]
    errors: dict[int, dict[str, Any]]
    cost: dict[int, dict[str, Any]]
    failures: dict[int, dict[str, int]]
    evals: dict[int, dict[str, Any]]
    samples: list[dict[str, Any]]
    next_sigma: dict[tuple[int, int], float]
    labelled_ok: set[int]
    tasks: list[dict[str, Any]]
    # every oracle call of the campaign: generation, natoms, status, carved (a cluster)
    oracle_calls: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _utc(value: Any) -> dt.datetime | None:
    """A naive UTC datetime from whatever the backend returned (aware on PostgreSQL,
    naive on SQLite, where SQLAlchemy stores UTC wall time without the offset)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _unknown(conn: sa.Connection, name: str) -> InputError:
    known = conn.execute(sa.select(m.Campaign.name).order_by(m.Campaign.name).limit(20)).scalars().all()
    hint = f"; campaigns here: {', '.join(known)}" if known else "; this database has no campaigns"
    return InputError(f"no campaign named {name!r} in this database{hint}", source="campaign")


def _load(url: str | None, name: str) -> Data:
    url = require_schema(url)
    engine = get_engine(url)
    with engine.connect() as conn:
        camp_row = conn.execute(sa.select(
            m.Campaign.id, m.Campaign.name, m.Campaign.status, m.Campaign.stop_reason,
            m.Campaign.spec_sha256, m.Campaign.alflow_version, m.Campaign.site, m.Campaign.workdir,
            m.Campaign.created_at, m.Campaign.updated_at, m.Campaign.spec).where(m.Campaign.name == name)).mappings().first()
        if camp_row is None:
            raise _unknown(conn, name)
        camp = dict(camp_row)
        cid = camp["id"]
        g = m.Generation
        generations = [dict(r) for r in conn.execute(sa.select(
            g.id, g.idx, g.state, g.trust_lo, g.trust_hi, g.n_accurate, g.n_candidate, g.n_failed,
            g.n_selected, g.n_labels, g.label_failed_fraction, g.failed, g.stop_reason, g.started_at,
            g.finished_at).where(g.campaign_id == cid).order_by(g.idx)).mappings()]
        for row in generations:
            row["started_at"], row["finished_at"] = _utc(row["started_at"]), _utc(row["finished_at"])

        # the views: ensemble error per generation, oracle cost per generation
        errors: dict[int, dict[str, Any]] = {}
        for r in conn.execute(sa.text(
                "SELECT * FROM v_error_vs_generation WHERE campaign = :c ORDER BY generation"),
                {"c": name}).mappings():
            merged = errors.setdefault(int(r["generation"]), {})
            for k, v in r.items():  # several ensemble rows (test / validation-md): first non-null
                if merged.get(k) is None:
                    merged[k] = v
        cost = {int(r["generation"]): dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM v_oracle_cost WHERE campaign = :c ORDER BY generation"), {"c": name}).mappings()}

        failures: dict[int, dict[str, int]] = defaultdict(dict)
        for idx, cls, n in conn.execute(
                sa.select(g.idx, m.Label.error_class, sa.func.count())
                .select_from(m.Label).join(m.Task, m.Task.id == m.Label.task_id)
                .join(g, g.id == m.Task.generation_id)
                .where(g.campaign_id == cid, m.Label.status == "failed")
                .group_by(g.idx, m.Label.error_class)):
            failures[int(idx)][cls or "unclassified"] = int(n)

        me = m.ModelEval
        evals: dict[int, dict[str, Any]] = {}
        for r in conn.execute(sa.select(
                g.idx, me.eval_set, me.n_frames, me.calibration_scale, me.spearman,
                me.miscalibration_area, me.details).join(g, g.id == me.generation_id)
                .where(g.campaign_id == cid, me.model_id.is_(None)).order_by(g.idx, me.id)).mappings():
            details = r["details"] or {}
            if details.get("sigma_f") and details.get("frame_error") and int(r["idx"]) not in evals:
                evals[int(r["idx"])] = dict(r)

        sr, smp = m.SamplingRun, m.Sample
        samples = [dict(r) for r in conn.execute(sa.select(
            g.idx.label("generation"), sr.kind, sr.id.label("run_id"), smp.geometry_id, smp.sigma_f2,
            smp.sigma_f2_initial, smp.bucket, smp.selected, smp.reason, smp.carve_center)
            .select_from(smp).join(sr, sr.id == smp.sampling_run_id).join(g, g.id == sr.generation_id)
            .where(g.campaign_id == cid, sr.kind != "initial").order_by(smp.id)).mappings()]

        # σ_F² a generation's ensemble gave to its seeds: the seed is the parent of a sample
        # of that generation's runs (not of a carved cluster, whose "initial" is its frame)
        edge = m.GeometryEdge
        next_sigma: dict[tuple[int, int], float] = {}
        for idx, parent, s0 in conn.execute(sa.select(g.idx, edge.parent_id, smp.sigma_f2_initial)
                .select_from(edge).join(smp, sa.and_(smp.geometry_id == edge.child_id,
                                                     smp.sampling_run_id == edge.sampling_run_id))
                .join(sr, sr.id == edge.sampling_run_id).join(g, g.id == sr.generation_id)
                .where(g.campaign_id == cid, edge.relation != "carved", smp.carve_center.is_(None),
                       smp.sigma_f2_initial.is_not(None))):
            next_sigma.setdefault((int(idx), int(parent)), float(s0))

        labelled_ok = set(conn.execute(sa.select(m.Label.geometry_id).join(m.Task, m.Task.id == m.Label.task_id)
                                       .where(m.Task.campaign_id == cid, m.Label.status == "ok")).scalars())

        # oracle calls with the size of what was labelled, and whether it was a carved cluster
        carved = sa.exists().where(edge.child_id == m.Label.geometry_id, edge.relation == "carved")
        oracle_calls = [dict(r) for r in conn.execute(sa.select(
            g.idx.label("generation"), m.Geometry.natoms, m.Label.status, carved.label("carved"))
            .select_from(m.Label).join(m.Task, m.Task.id == m.Label.task_id)
            .join(g, g.id == m.Task.generation_id).join(m.Geometry, m.Geometry.id == m.Label.geometry_id)
            .where(g.campaign_id == cid).order_by(m.Label.id)).mappings()]

        t = m.Task
        tasks = [dict(r) for r in conn.execute(sa.select(
            t.id, t.kind, t.executor, t.status, t.submitted_at, t.started_at, t.finished_at,
            t.resources, g.idx.label("generation")).outerjoin(g, g.id == t.generation_id)
            .where(t.campaign_id == cid).order_by(t.id)).mappings()]
        for row in tasks:
            for k in ("submitted_at", "started_at", "finished_at"):
                row[k] = _utc(row[k])
    for k in ("created_at", "updated_at"):
        camp[k] = _utc(camp[k])
    return Data(camp, generations, errors, cost, dict(failures), evals, samples, next_sigma,
                labelled_ok, tasks, oracle_calls)


# ==================================================================== utilisation
def _utilisation(tasks: list[dict[str, Any]], cost: dict[int, dict[str, Any]]) -> dict[str, Any]:
    label = [t for t in tasks if t["kind"] == "label"]
    timed = [t for t in label if t["started_at"] and t["finished_at"] and t["finished_at"] >= t["started_at"]]
    timed_ids = {id(t) for t in timed}
    declared = [int(t["resources"][k]) for t in label if isinstance(t["resources"], dict)
                for k in WORKER_KEYS if isinstance(t["resources"].get(k), (int, float))]
    events = sorted([(t["started_at"], 1) for t in timed] + [(t["finished_at"], -1) for t in timed],
                    key=lambda e: (e[0], e[1]))
    running = concurrency = 0
    for _, step in events:
        running += step
        concurrency = max(concurrency, running)
    if declared:
        workers, source = max(declared), "task resources"
    else:
        workers, source = concurrency, "max concurrency observed"
    per_gen = []
    by_gen: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for t in label:
        by_gen[t["generation"]].append(t)
    total_busy = total_span = total_oracle = 0.0
    for gen in sorted(by_gen, key=lambda x: (x is None, x)):
        ts = by_gen[gen]
        starts = [t["submitted_at"] or t["started_at"] for t in ts if (t["submitted_at"] or t["started_at"])]
        ends = [t["finished_at"] for t in ts if t["finished_at"]]
        mine = [t for t in ts if id(t) in timed_ids]
        busy = sum((t["finished_at"] - t["started_at"]).total_seconds() for t in mine)
        span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        oracle_s = float((cost.get(gen) or {}).get("wall_s") or 0.0) if gen is not None else 0.0
        n_timed = len(mine)
        entry = {"generation": gen, "label_tasks": len(ts), "timed_tasks": n_timed, "span_s": span,
                 "busy_s": busy, "oracle_call_s": oracle_s,
                 "utilisation": busy / (workers * span) if workers and span > 0 else None,
                 "oracle_call_utilisation": oracle_s / (workers * span) if workers and span > 0 else None}
        per_gen.append(entry)
        if span > 0 and n_timed:
            total_busy, total_span, total_oracle = total_busy + busy, total_span + span, total_oracle + oracle_s
    ok = workers and total_span > 0
    return {
        "n_oracle_workers": workers or None, "workers_source": source if workers else None,
        "max_concurrency": concurrency, "label_tasks": len(label), "timed_label_tasks": len(timed),
        "busy_s": total_busy, "oracle_call_s": total_oracle, "span_s": total_span,
        "utilisation": total_busy / (workers * total_span) if ok else None,
        "oracle_call_utilisation": total_oracle / (workers * total_span) if ok else None,
        "per_generation": per_gen,
        "definition": UTILISATION_DEFINITION,
    }


UTILISATION_DEFINITION = (
    "utilisation = Σ_g busy_g / (W × Σ_g span_g), where for each generation g, busy_g is the sum "
    "over its label tasks of (finished_at − started_at) (the time a worker spent inside the "
    "labelling app) and span_g runs from the first label task's submission to the last one's end "
    "(the window in which oracle workers were held for labelling); W, the number of oracle "
    "workers, is the largest 'oracle_workers'/'workers' value in a label task's resources JSON, "
    "else the largest number of label tasks observed running at once. oracle_call_utilisation "
    "uses Σ label.wall_s (the oracle calls themselves, without the app's start-up) in place of "
    "busy_g. Generations whose label tasks have no timestamps are left out of both sums."
)


def oracle_utilisation(url: str | None, campaign: str) -> dict[str, Any]:
    """How busy the oracle workers were while the campaign was labelling.

    Returns a dict: `utilisation` (0..1, or None without timed label tasks),
    `oracle_call_utilisation`, `n_oracle_workers` and `workers_source` ('task resources' or
    'max concurrency observed'), `max_concurrency`, `busy_s`, `oracle_call_s`, `span_s`,
    `label_tasks`, `timed_label_tasks`, `per_generation` (a list of the same per
    generation) and `definition`, the text below.

    utilisation = Σ_g busy_g / (W × Σ_g span_g), where, for generation g, busy_g =
    Σ (finished_at − started_at) over its label tasks, span_g = last label task's
    finished_at − first label task's submitted_at, and W = the number of oracle workers:
    the largest `oracle_workers` (or `workers`) in a label task's `resources` JSON if any
    task records it, else the largest number of label tasks seen running at once (which
    overestimates utilisation if the workers were never all busy).
    `oracle_call_utilisation` is the same with Σ label.wall_s as the busy time.
    Raises `InputError` for an unknown campaign.
    """
    data = _load_tasks_only(url, campaign)
    return _utilisation(*data)


def _load_tasks_only(url: str | None, name: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    url = require_schema(url)
    with get_engine(url).connect() as conn:
        cid = conn.execute(sa.select(m.Campaign.id).where(m.Campaign.name == name)).scalar()
        if cid is None:
            raise _unknown(conn, name)
        t, g = m.Task, m.Generation
        tasks = [dict(r) for r in conn.execute(sa.select(
            t.id, t.kind, t.executor, t.status, t.submitted_at, t.started_at, t.finished_at,
            t.resources, g.idx.label("generation")).outerjoin(g, g.id == t.generation_id)
            .where(t.campaign_id == cid, t.kind == "label")).mappings()]
        for row in tasks:
            for k in ("submitted_at", "started_at", "finished_at"):
                row[k] = _utc(row[k])
        cost = {int(r["generation"]): dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM v_oracle_cost WHERE campaign = :c"), {"c": name}).mappings()}
    return tasks, cost


# ======================================================================== figures
@dataclass
class Fig:
    name: str
    title: str
    caption: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.12)
    return buf.getvalue()


def _rc():
    import matplotlib

    return matplotlib.rc_context({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False,
    })


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "h"
    if seconds >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _plain_log(ax, which: str = "both", span: float = 100.0) -> None:
    """Log axes labelled 0.01, 0.02, 0.05 instead of 10⁻², with no minor-tick labels; a
    `span` (max/min of the axis) within one decade gets labels at 1, 2, 3, 5, 7 × 10ⁿ."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if span > 10 else (1.0, 2.0, 3.0, 5.0, 7.0)
    axes = {"x": [ax.xaxis], "y": [ax.yaxis], "both": [ax.xaxis, ax.yaxis]}[which]
    for axis in axes:
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _int_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def cpu_axis(cpu_h: dict[int, float]) -> tuple[str, dict[int, float]]:
    """The oracle-cost axis: CPU-hours, or CPU-seconds for a cheap oracle (an xTB campaign's
    0.0001 h would print as overlapping 0.0000x ticks)."""
    if max(cpu_h.values(), default=0.0) < 0.1:
        return "cumulative oracle CPU-seconds", {g: h * 3600.0 for g, h in cpu_h.items()}
    return "cumulative oracle CPU-hours", cpu_h


def _cumulative(data: Data) -> tuple[dict[int, float], dict[int, float], bool, bool]:
    calls: dict[int, float] = {}
    cpu_h: dict[int, float] = {}
    n = c = 0.0
    has_cpu = any(r.get("cpu_s") is not None for r in data.cost.values())
    for gen in data.generations:
        row = data.cost.get(gen["idx"], {})
        n += float(row.get("n_labels") or 0)
        c += float(row.get("cpu_s") or 0.0) / 3600.0
        calls[gen["idx"]], cpu_h[gen["idx"]] = n, c
    return calls, cpu_h, bool(data.cost), has_cpu


METRICS = (("force_mae", "held-out force MAE (eV/Å)"),
           ("energy_mae", "held-out energy MAE (eV/atom)"),
           ("stability_median_fs", "NN-MD stability time (median, fs)"),
           ("survival_fraction", "NN-MD survival fraction"),
           ("hr_error", "h(r) error (1/Å)"),
           ("profile_mae", "profile MAE (eV)"),
           ("barrier_error", "barrier error (eV)"))
SPREAD = {"hr_error": "hr_error_std"}  # drawn as ± error bars (spread over the walkers)


def fig_learning_curves(data: Data) -> Fig | None:
    notes = data.notes["learning_curves"]
    present = [(k, lab) for k, lab in METRICS if any(e.get(k) is not None for e in data.errors.values())]
    if not data.errors:
        notes.append("No generation's ensemble has been evaluated yet (no model_eval row with "
                     "model_id NULL), so there are no learning curves.")
        return None
    spec = data.campaign.get("spec") or {}
    has_profile = bool((spec.get("evaluation") or {}).get("profile"))
    for k, lab in METRICS:
        if k in ("profile_mae", "barrier_error") and not has_profile:
            continue  # no evaluation.profile in the spec: nothing to say
        if (k, lab) not in present:
            notes.append(f"No {lab.split(' (')[0]} is recorded for any generation "
                         f"(model_eval.{k} is NULL everywhere), so that curve is not drawn.")
    if not present:
        return None
    calls, cpu_h, has_calls, has_cpu = _cumulative(data)
    xs = [("generation", "generation", None)]
    if has_calls:
        xs.append(("calls", "cumulative oracle calls", calls))
    else:
        notes.append("No label is linked to a task of this campaign, so the curves against "
                     "cumulative oracle calls and CPU-hours are not drawn.")
    if has_cpu:
        xs.append(("cpu", *cpu_axis(cpu_h)))
    elif has_calls:
        notes.append("No label records its CPU time (label.cpu_s is NULL everywhere), so the "
                     "curves against cumulative CPU-hours are not drawn.")
    with _rc():
        fig = _figure(3.6 * len(xs) + 0.4, 2.3 * len(present) + 0.5)
        axes = fig.subplots(len(present), len(xs), squeeze=False, sharex="col")
        for r, (key, label) in enumerate(present):
            gens = sorted(gi for gi, e in data.errors.items() if e.get(key) is not None)
            ys = [float(data.errors[gi][key]) for gi in gens]
            for c, (_xkey, xlabel, mapping) in enumerate(xs):
                ax = axes[r][c]
                x = [gi if mapping is None else mapping.get(gi, np.nan) for gi in gens]
                ax.plot(x, ys, marker="o", color="#0072b2", lw=1.6, ms=5)
                if key in SPREAD:
                    err = [data.errors[gi].get(SPREAD[key]) for gi in gens]
                    if all(e is not None for e in err):
                        ax.errorbar(x, ys, yerr=[float(e) for e in err], fmt="none", ecolor="#0072b2",
                                    alpha=0.5, capsize=3)
                if key == "barrier_error":
                    ax.axhline(0.0, color="#999999", lw=0.8)
                if mapping is not None:
                    for xi, yi, gi in zip(x, ys, gens):
                        ax.annotate(f"g{gi}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                                    fontsize=7, color="#555555")
                if c == 0:
                    ax.set_ylabel(label)
                    _int_ticks(ax)
                if r == len(present) - 1:
                    ax.set_xlabel(xlabel)
                if key != "survival_fraction" and len(ys) > 1 and min(ys) > 0 and max(ys) / min(ys) > 20:
                    ax.set_yscale("log")
                    _plain_log(ax, "y")
                ax.margins(x=0.08, y=0.12)
        fig.suptitle("Learning curves (ensemble, fixed held-out set)", fontsize=11)
        png = _png(fig)
    return Fig("learning_curves", "Learning curves",
               "Held-out error and validation figures of each generation's ensemble, against the "
               "generation, the oracle calls and the oracle CPU-hours spent up to and including that "
               "generation's labelling (failed calls count: they cost CPU too). Validation in the "
               "protocol of Fu et al. (TMLR 2023): NN-MD walkers from frames of a reference MD; a "
               "walker collapses when a bond deviates more than 0.5 Å from its mean length in the "
               "reference; stability: median time to collapse; survival: fraction that never "
               "collapsed; h(r) error: MAE of the distance histogram against the reference (± std "
               "over walkers). Profile: MAE of relative energies along the spec's path, and the "
               "barrier (max − min) error.", png)


def _parity_panel(ax, ev: dict[str, Any], lims: tuple[float, float], log: bool,
                  small: bool = False) -> str:
    """Draw one parity panel; returns a short 'n, ρ, s' summary."""
    sig = np.asarray(ev["details"]["sigma_f"], dtype=float)
    err = np.abs(np.asarray(ev["details"]["frame_error"], dtype=float))
    cal = ev["details"].get("calibration") or {}
    scale = ev.get("calibration_scale") or cal.get("scale")
    rho = ev.get("spearman")
    if rho is None:
        rho = cal.get("spearman")
    rho_note = ""
    if rho is None and len(sig) > 1 and np.ptp(sig) > 0 and np.ptp(err) > 0:
        from scipy.stats import spearmanr

        rho, rho_note = float(spearmanr(sig, err).statistic), " (computed here)"
    q = cal.get("quantile")
    cover = cal.get("coverage") or 0.9
    lo, hi = lims
    line = np.geomspace(lo, hi, 50) if log else np.linspace(lo, hi, 50)
    ax.plot(line, line, color="#999999", lw=0.8, ls="-", label="error = σ_F")
    if scale:
        ax.plot(line, scale * line, color="#c0392b", lw=1.6, label=f"calibrated s·σ_F, s = {scale:.2f}")
    if q is not None and math.isfinite(q) and not small:
        ax.plot(line, q * line, color="#c0392b", lw=1.0, ls="--", label=f"{cover:.0%} bound q·σ_F, q = {q:.2f}")
    rho_txt = "n/a" if rho is None or not math.isfinite(rho) else f"{rho:.2f}"
    ax.scatter(sig, err, s=12 if small else 22, color="#0072b2", alpha=0.75, edgecolor="white", lw=0.4,
               label=f"held-out frames (n = {len(sig)}), Spearman ρ = {rho_txt}{rho_note}", zorder=3)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log(ax, span=hi / lo)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    return f"n = {len(sig)}\nρ = {rho_txt}" + (f"\ns = {scale:.2f}" if scale else "")


def _parity_limits(evs: list[dict[str, Any]]) -> tuple[tuple[float, float], bool]:
    vals = np.concatenate([np.r_[np.asarray(e["details"]["sigma_f"], float),
                                 np.abs(np.asarray(e["details"]["frame_error"], float))] for e in evs])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return (0.0, 1.0), False
    # log axes when the values are positive and span more than a decade
    log = bool(np.all(vals > 0) and vals.max() / vals.min() > 10)
    if log:
        lo, hi = vals.min(), vals.max()
        pad = (hi / lo) ** 0.06 if hi > lo else 2.0
        return (lo / pad, hi * pad), True
    hi = float(vals.max()) or 1.0
    return (0.0, hi * 1.08), False


def fig_parity(data: Data) -> Fig | None:
    if not data.evals:
        data.notes["parity"].append(
            "No generation has held-out σ_F and frame errors on record (model_eval.details "
            "'sigma_f'/'frame_error' of the ensemble row), so there is no parity plot.")
        return None
    last = max(data.evals)
    ev = data.evals[last]
    lims, log = _parity_limits([ev])
    with _rc():
        fig = _figure(6.0, 6.6)
        ax = fig.subplots()
        _parity_panel(ax, ev, lims, log)
        ax.set_xlabel("ensemble σ_F (eV/Å)")
        ax.set_ylabel("observed frame force RMSE (eV/Å)")
        area = ev.get("miscalibration_area")
        if area is not None:
            ax.plot([], [], " ", label=f"miscalibration area = {area:.3f}")
        ax.set_title(f"Generation {last}: held-out uncertainty vs error")
        fig.legend(loc="outside lower center", ncol=1, frameon=False)
        png = _png(fig)
    return Fig("parity", f"Uncertainty vs error (generation {last})",
               "Each point is one held-out frame: the ensemble's force uncertainty σ_F against the "
               "observed RMS force-component error of the ensemble mean. The red line is the "
               "calibrated uncertainty s·σ_F used for selection (s = RMS error / RMS σ_F); the "
               "dashed one the coverage bound. Spearman ρ measures whether σ_F ranks frames by error.",
               png)


def fig_parity_all(data: Data) -> Fig | None:
    if len(data.evals) < 2:
        return None
    gens = sorted(data.evals)
    evs = [data.evals[gi] for gi in gens]
    lims, log = _parity_limits(evs)
    ncols = min(4, len(gens))
    nrows = math.ceil(len(gens) / ncols)
    with _rc():
        fig = _figure(3.0 * ncols + 0.3, 3.1 * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for k, (gi, ev) in enumerate(zip(gens, evs)):
            ax = axes[k // ncols][k % ncols]
            summary = _parity_panel(ax, ev, lims, log, small=True)
            ax.set_title(f"generation {gi}")
            ax.text(0.04, 0.96, summary, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="#cccccc", alpha=0.9))
            if k % ncols == 0:
                ax.set_ylabel("frame force RMSE (eV/Å)")
            if k // ncols == nrows - 1:
                ax.set_xlabel("σ_F (eV/Å)")
        for k in range(len(gens), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
        lines = axes[0][0].get_lines()
        fig.legend(lines, ["error = σ_F", "calibrated s·σ_F (s = RMS error / RMS σ_F)"][:len(lines)],
                   loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle("Uncertainty vs error, every evaluated generation (same axes)", fontsize=11)
        png = _png(fig)
    return Fig("parity_all", "Uncertainty vs error, all generations",
               "The parity plot above for each generation on common axes.", png)


def _sampler_group(row: dict[str, Any]) -> str:
    return "carved" if row["carve_center"] is not None else row["kind"]


def fig_sigma_distribution(data: Data) -> Fig | None:
    notes = data.notes["sigma_distribution"]
    rows = [r for r in data.samples if r["reason"] != "carved" or r["carve_center"] is not None]
    rows = [r for r in rows if r["sigma_f2"] is not None]
    if not rows:
        notes.append("No sampler candidates with σ_F are on record yet, so there is no σ_F distribution.")
        return None
    gens = sorted({r["generation"] for r in rows})
    if len(gens) > MAX_SIGMA_ROWS:
        notes.append(f"Only the last {MAX_SIGMA_ROWS} of {len(gens)} generations with samples are drawn.")
        gens = gens[-MAX_SIGMA_ROWS:]
    groups = sorted({_sampler_group(r) for r in rows if r["generation"] in gens},
                    key=lambda k: (SAMPLER_ORDER.index(k) if k in SAMPLER_ORDER else len(SAMPLER_ORDER), k))
    cells: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen_seed: set[tuple[int, float]] = set()
    n_sel = n_after = 0
    for r in rows:
        if r["generation"] not in gens:
            continue
        cell = cells[(r["generation"], _sampler_group(r))]
        cell["candidates"].append(math.sqrt(max(r["sigma_f2"], 0.0)))
        s0 = r["sigma_f2_initial"]
        if s0 is not None and (r["run_id"], s0) not in seen_seed:  # one value per seed and run
            seen_seed.add((r["run_id"], s0))
            cell["seeds"].append(math.sqrt(max(s0, 0.0)))
        if r["selected"]:
            cell["selected"].append(math.sqrt(max(r["sigma_f2"], 0.0)))
            if r["geometry_id"] in data.labelled_ok:
                n_sel += 1
                after = data.next_sigma.get((r["generation"] + 1, r["geometry_id"]))
                if after is not None:
                    n_after += 1
                    cell["after"].append(math.sqrt(max(after, 0.0)))
    if n_after:
        notes.append(f"The next generation's σ_F is on record for {n_after} of {n_sel} labelled selected "
                     "frames (those it reused as sampler seeds, whose σ_F it computed before sampling); "
                     "the green histogram shows them. The others were never re-scored.")
    else:
        notes.append("The next generation's σ_F of the selected, labelled frames is not in the database "
                     "(none was reused as a sampler seed), so the figure compares seeds (before "
                     "sampling) with candidates (after) only.")
    allv = np.array([v for c in cells.values() for vals in c.values() for v in vals])
    pos = allv[allv > 0]
    if pos.size == 0:
        notes.append("Every σ_F is zero; nothing to draw.")
        return None
    lo, hi = pos.min(), pos.max()
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    bins = np.geomspace(lo / 1.05, hi * 1.05, 28)
    styles = [
        ("seeds", "seeds (before sampling)", dict(histtype="stepfilled", color="#bbbbbb", alpha=0.8)),
        ("candidates", "candidates", dict(histtype="stepfilled", facecolor=(0.0, 0.447, 0.698, 0.28),
                                          edgecolor="#0072b2", lw=1.2)),
        ("selected", "selected (this generation's σ_F)", dict(histtype="step", color="#e69f00", lw=1.6)),
        ("after", "selected, after labelling (next generation's σ_F)",
         dict(histtype="step", color="#009e73", lw=1.8, ls="--")),
    ]
    from matplotlib.ticker import MaxNLocator

    with _rc():
        fig = _figure(max(7.0, 2.9 * len(groups) + 0.6), 1.75 * len(gens) + 1.0)
        axes = fig.subplots(len(gens), len(groups), squeeze=False, sharex=True)
        handles = {}
        for r_i, gi in enumerate(gens):
            for c_i, grp in enumerate(groups):
                ax = axes[r_i][c_i]
                ax.set_xscale("log")
                ax.set_xlim(bins[0], bins[-1])
                _plain_log(ax, "x", span=bins[-1] / bins[0])
                cell = cells.get((gi, grp))
                if not cell:
                    ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes,
                            color="#888888")
                else:
                    for key, label, kw in styles:
                        vals = [v for v in cell.get(key, []) if v > 0]
                        if vals:  # bins over this data's range only: no flat line along zero
                            i0 = max(int(np.searchsorted(bins, min(vals), side="right")) - 1, 0)
                            i1 = min(int(np.searchsorted(bins, max(vals), side="left")), len(bins) - 1)
                            own = bins[i0:max(i1, i0 + 1) + 1]
                            if grp == "carved" and key == "seeds":
                                label = "frame before carving"
                            _, _, patches = ax.hist(vals, bins=own, label=label, **kw)
                            handles.setdefault(label, patches[0])
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                if r_i == 0:
                    ax.set_title(grp if grp != "carved" else "carved clusters")
                if c_i == 0:
                    ax.set_ylabel(f"gen {gi}\nframes")
                if r_i == len(gens) - 1:
                    ax.set_xlabel("σ_F (eV/Å)")
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncol=min(3, len(handles)), frameon=False)
        fig.suptitle("Ensemble force uncertainty σ_F per generation and sampler", fontsize=11)
        png = _png(fig)
    return Fig("sigma_distribution", "σ_F before and after sampling and labelling",
               "Rows are generations, columns sampler kinds. σ_F = √σ_F² is the raw ensemble spread "
               "(multiply by the generation's calibration scale s to compare with trust_lo/trust_hi). "
               "Grey: the seeds a sampler started from (one count per seed and run); blue (filled): "
               "every candidate it proposed; orange: the candidates selected for labelling; green dashed: "
               "the same frames as the next generation's ensemble sees them after being labelled and "
               "trained on.", png)


def fig_buckets(data: Data) -> Fig | None:
    gens = [g for g in data.generations if any(g[k] is not None for k in
                                               ("n_accurate", "n_candidate", "n_failed", "n_selected"))]
    missing = [g["idx"] for g in data.generations if g not in gens]
    if missing:
        data.notes["buckets"].append(
            "Generation(s) " + ", ".join(map(str, missing)) + " have not reached selection: no bucket counts yet.")
    if not gens:
        return None
    x = np.array([g["idx"] for g in gens], dtype=float)
    w = 0.38
    with _rc():
        fig = _figure(max(5.0, 0.75 * len(gens) + 3.0), 3.6)
        ax = fig.subplots()
        bottom = np.zeros(len(gens))
        for key in ("accurate", "candidate", "failed"):
            vals = np.array([g[f"n_{key}"] or 0 for g in gens], dtype=float)
            ax.bar(x - w / 2, vals, w, bottom=bottom, color=BUCKET_COLOURS[key], label=key)
            bottom += vals
        sel = np.array([g["n_selected"] or 0 for g in gens], dtype=float)
        bars = ax.bar(x + w / 2, sel, w, color=BUCKET_COLOURS["selected"], label="selected")
        ax.bar_label(bars, fmt="%d", fontsize=7, padding=1)
        for xi, tot in zip(x, bottom):
            ax.annotate(f"{int(tot)}", (xi - w / 2, tot), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
        ax.set_xlim(x.min() - 0.9, x.max() + 0.9)
        ax.set_xticks(x, [str(int(v)) for v in x])
        ax.set_xlabel("generation")
        ax.set_ylabel("sampled frames")
        ax.set_ylim(0, max(bottom.max(), sel.max(), 1) * 1.12)
        fig.legend(loc="outside right upper", frameon=False)
        ax.set_title("Selection buckets per generation")
        png = _png(fig)
    return Fig("buckets", "Selection buckets",
               "Frames each generation's samplers proposed, by the bucket their calibrated σ_F fell in "
               "(accurate < trust_lo ≤ candidate < trust_hi ≤ failed), and how many were selected for "
               "labelling in the next generation.", png)


def fig_oracle_cost(data: Data) -> Fig | None:
    if not data.cost:
        data.notes["oracle_cost"].append("No oracle call (label) is linked to a task of this campaign yet.")
        return None
    gens = sorted(data.cost)
    x = np.array(gens, dtype=float)
    ok = np.array([data.cost[g]["n_ok"] or 0 for g in gens], float)
    bad = np.array([data.cost[g]["n_failed"] or 0 for g in gens], float)
    cpu = np.array([float(data.cost[g]["cpu_s"] or 0.0) for g in gens])
    wall = np.array([float(data.cost[g]["wall_s"] or 0.0) for g in gens])
    div, unit = _time_unit(max(cpu.max(), wall.max(), 1.0))
    classes = sorted({c for f in data.failures.values() for c in f})
    with _rc():
        fig = _figure(max(9.0, 1.2 * len(gens) + 7.0), 3.4)
        ax1, ax2, ax3 = fig.subplots(1, 3)
        ax1.bar(x, ok, 0.6, color=BUCKET_COLOURS["accurate"], label="ok")
        b = ax1.bar(x, bad, 0.6, bottom=ok, color=BUCKET_COLOURS["failed"], label="failed")
        ax1.bar_label(b, labels=[f"{int(o + f)}" for o, f in zip(ok, bad)], fontsize=7, padding=1)
        ax1.set_title("oracle calls")
        ax1.set_ylabel("labels")
        ax1.set_ylim(0, max((ok + bad).max(), 1) * 1.15)
        ax1.legend(frameon=False)
        w = 0.38
        ax2.bar(x - w / 2, cpu / div, w, color="#0072b2", label="CPU time")
        ax2.bar(x + w / 2, wall / div, w, color="#56b4e9", label="wall time")
        ax2.set_title("oracle time (sum over calls)")
        ax2.set_ylabel(f"time ({unit})")
        ax2.legend(frameon=False)
        if classes:
            bottom = np.zeros(len(gens))
            palette = OTHER_COLOURS + list(KIND_COLOURS.values())
            for k, cls in enumerate(classes):
                vals = np.array([data.failures.get(g, {}).get(cls, 0) for g in gens], float)
                ax3.bar(x, vals, 0.6, bottom=bottom, color=palette[k % len(palette)], label=cls)
                bottom += vals
            ax3.set_ylim(0, max(bottom.max(), 1) * 1.25)
            ax3.legend(frameon=False, fontsize=7)
            from matplotlib.ticker import MaxNLocator

            ax3.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax3.text(0.5, 0.5, "no failed oracle calls", ha="center", va="center",
                     transform=ax3.transAxes, color="#555555")
        ax3.set_title("failures by error class")
        ax3.set_ylabel("failed labels")
        for ax in (ax1, ax2, ax3):
            ax.set_xlim(x.min() - 0.9, x.max() + 0.9)
            ax.set_xticks(x, [str(g) for g in gens])
            ax.set_xlabel("generation")
        png = _png(fig)
    return Fig("oracle_cost", "Oracle cost and failures",
               "Oracle calls made by each generation's label tasks (failures are labels too), the "
               "CPU and wall time they took (sums of label.cpu_s and label.wall_s), and the failed "
               "calls by error class.", png)


def carving_summary(calls: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per generation: sizes of the carved clusters labelled ok, and the oracle spend of all
    calls (ok and failed) as counts, atoms and cost Σ n_atoms³ (how the DFT codes users pay
    for scale), split into carved clusters and everything else."""
    out: dict[int, dict[str, Any]] = {}
    for c in calls:
        row = out.setdefault(int(c["generation"]), {
            "sizes": [], "n_carved": 0, "n_other": 0, "atoms_carved": 0, "atoms_other": 0,
            "cost_carved": 0.0, "cost_other": 0.0})
        n, kind = int(c["natoms"]), "carved" if c["carved"] else "other"
        row[f"n_{kind}"] += 1
        row[f"atoms_{kind}"] += n
        row[f"cost_{kind}"] += float(n) ** 3
        if c["carved"] and c["status"] == "ok":
            row["sizes"].append(n)
    return dict(sorted(out.items()))


def fig_carving(data: Data) -> Fig | None:
    summary = carving_summary(data.oracle_calls)
    if not any(r["n_carved"] for r in summary.values()):
        data.notes["carving"].append("No carved cluster was labelled: not a carving campaign "
                                     "(or none has reached labelling yet).")
        return None
    gens = list(summary)
    x = np.array(gens, dtype=float)
    with _rc():
        fig = _figure(max(9.0, 1.2 * len(gens) + 6.0), 3.6)
        ax1, ax2 = fig.subplots(1, 2)
        sizes = [summary[g]["sizes"] for g in gens]
        have = [k for k, s in enumerate(sizes) if s]
        ax1.boxplot([sizes[k] for k in have], positions=x[have], widths=0.5, showfliers=False,
                    medianprops={"color": "#d55e00"})
        rng = np.random.default_rng(0)
        for k in have:
            ax1.scatter(x[k] + rng.uniform(-0.18, 0.18, len(sizes[k])), sizes[k], s=8,
                        color="#0072b2", alpha=0.6, zorder=3)
            ax1.annotate(f"n={len(sizes[k])}", (x[k], max(sizes[k])), ha="center", va="bottom",
                         fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax1.set_title("labelled carved clusters")
        ax1.set_ylabel("atoms per cluster")
        carved = np.array([summary[g]["cost_carved"] for g in gens])
        other = np.array([summary[g]["cost_other"] for g in gens])
        ax2.bar(x, carved, 0.6, color="#0072b2", label="carved clusters")
        bars = ax2.bar(x, other, 0.6, bottom=carved, color="#999999", label="other structures")
        labels = [f"{summary[g]['n_carved'] + summary[g]['n_other']} labels\n"
                  f"{summary[g]['atoms_carved'] + summary[g]['atoms_other']} atoms" for g in gens]
        ax2.bar_label(bars, labels=labels, fontsize=6, padding=1)
        ax2.set_ylim(0, max((carved + other).max(), 1.0) * 1.3)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax2.set_title("oracle spend, cost = Σ n_atoms³")
        ax2.set_ylabel("Σ n_atoms³")
        ax2.legend(frameon=False, fontsize=7, loc="upper left")
        for ax in (ax1, ax2):
            ax.set_xlim(x.min() - 0.9, x.max() + 0.9)
            ax.set_xticks(x, [str(g) for g in gens])
            ax.set_xlabel("generation")
        png = _png(fig)
    return Fig("carving", "Carved clusters and cost-weighted oracle spend",
               "Left: sizes (atoms, H caps included) of the carved clusters each generation "
               "labelled successfully. Right: the oracle spend of each generation's calls (ok and "
               "failed) weighted as Σ n_atoms³, carved clusters and other structures stacked, "
               "with plain label and atom counts.", png)


def _carving_table(data: Data) -> str:
    summary = carving_summary(data.oracle_calls)
    if not any(r["n_carved"] for r in summary.values()):
        return ""
    head = ["gen", "carved labels", "median atoms", "max atoms", "other labels", "atoms (all)",
            "Σ n³ carved", "Σ n³ other"]
    rows = []
    for g, r in summary.items():
        med = f"{np.median(r['sizes']):.0f}" if r["sizes"] else "–"
        top = str(max(r["sizes"])) if r["sizes"] else "–"
        rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in (
            g, r["n_carved"], med, top, r["n_other"], r["atoms_carved"] + r["atoms_other"],
            f"{r['cost_carved']:.3g}", f"{r['cost_other']:.3g}")) + "</tr>")
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _lanes(intervals: list[tuple[float, float]]) -> list[int]:
    """Greedy interval colouring: the lane of each interval (input sorted by start)."""
    ends: list[float] = []
    out = []
    for s, e in intervals:
        for k, end in enumerate(ends):
            if end <= s:
                ends[k] = e
                out.append(k)
                break
        else:
            ends.append(e)
            out.append(len(ends) - 1)
    return out


def fig_timeline(data: Data, util: dict[str, Any]) -> Fig | None:
    timed = [t for t in data.tasks if t["started_at"] and t["finished_at"]]
    untimed = len(data.tasks) - len(timed)
    if untimed:
        data.notes["timeline"].append(
            f"{untimed} task(s) have no start or end time (still running, lost, or never started) "
            "and are not drawn.")
    if not timed:
        data.notes["timeline"].append("No task has both a start and an end time yet.")
        return None
    t0 = min(min(t["submitted_at"] or t["started_at"] for t in timed), min(t["started_at"] for t in timed))
    rel = lambda d: (d - t0).total_seconds()  # noqa: E731
    t_end = max(rel(t["finished_at"]) for t in timed)
    div, unit = _time_unit(t_end)
    order = ["oracle", "train", "sample"]
    executors = sorted({t["executor"] or "?" for t in timed},
                       key=lambda e: (order.index(e) if e in order else len(order), e))
    lanes_of: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for ex in executors:
        ts = sorted((t for t in timed if (t["executor"] or "?") == ex), key=lambda t: t["started_at"])
        lanes = _lanes([(rel(t["started_at"]), rel(t["finished_at"])) for t in ts])
        lanes_of[ex] = list(zip(ts, lanes))
    n_lanes = {ex: max(lane for _, lane in v) + 1 for ex, v in lanes_of.items()}
    total = sum(n_lanes.values()) + 0.6 * (len(executors) - 1)
    kinds = sorted({t["kind"] for t in timed}, key=lambda k: (list(KIND_COLOURS).index(k)
                                                               if k in KIND_COLOURS else 99, k))
    colour = {k: KIND_COLOURS.get(k) or OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, k in enumerate(kinds)}
    with _rc():
        fig = _figure(10.0, min(9.0, max(2.8, 1.3 + 0.24 * total)))
        ax = fig.subplots()
        ax.grid(axis="y", visible=False)
        y = 0.0
        centres, lane_h = [], 0.8
        min_w = t_end / div * 0.0015  # a task too short to see still gets a sliver
        for ex in executors:
            base = y
            bars: dict[tuple[str, bool, int], list[tuple[float, float]]] = defaultdict(list)
            for t, lane in lanes_of[ex]:
                s, e = rel(t["started_at"]) / div, rel(t["finished_at"]) / div
                bars[(t["kind"], t["status"] != "done", lane)].append((s, max(e - s, min_w)))
            for (kind, failed, lane), spans in bars.items():  # one artist per lane and kind
                ax.broken_barh(spans, (base + lane + (1 - lane_h) / 2, lane_h), facecolors=colour[kind],
                               edgecolors="#c0392b" if failed else "white",
                               linewidth=1.2 if failed else 0.5)
            centres.append(base + n_lanes[ex] / 2)
            y = base + n_lanes[ex] + 0.6
            if ex != executors[-1]:
                ax.axhline(y - 0.3, color="#cccccc", lw=0.8)
        # labelling windows on the oracle band
        for ex in executors:
            if not any(t["kind"] == "label" for t, _ in lanes_of[ex]):
                continue
            base = sum(n_lanes[e] + 0.6 for e in executors[:executors.index(ex)])
            by_gen: dict[Any, list[dict[str, Any]]] = defaultdict(list)
            for t, _ in lanes_of[ex]:
                if t["kind"] == "label":
                    by_gen[t["generation"]].append(t)
            for ts in by_gen.values():
                s = min(rel(t["submitted_at"] or t["started_at"]) for t in ts) / div
                e = max(rel(t["finished_at"]) for t in ts) / div
                ax.axvspan(s, e, ymin=0, ymax=1, color="#0072b2", alpha=0.06, lw=0)
        # generation starts
        starts: dict[int, float] = {}
        for t in timed:
            if t["generation"] is not None:
                s = rel(t["submitted_at"] or t["started_at"])
                starts[t["generation"]] = min(starts.get(t["generation"], s), s)
        for gi, s in sorted(starts.items()):
            ax.axvline(s / div, color="#555555", lw=0.8, ls=":")
            ax.text(s / div, 1.0, f" g{gi}", transform=ax.get_xaxis_transform(), va="bottom",
                    ha="left", fontsize=8, color="#333333")
        ax.set_yticks(centres, [f"{ex}\n({n_lanes[ex]} lane{'s' if n_lanes[ex] > 1 else ''})"
                                for ex in executors])
        ax.set_ylim(y - 0.6 + 0.2, -0.2)
        ax.set_xlim(0, t_end / div * 1.01)
        ax.set_xlabel(f"time since the first task was submitted ({unit})")
        from matplotlib.patches import Patch

        handles = [Patch(color=colour[k], label=k) for k in kinds]
        if any(t["status"] != "done" for t in timed):
            handles.append(Patch(facecolor="white", edgecolor="#c0392b", label="failed"))
        handles.append(Patch(color="#0072b2", alpha=0.15, label="labelling window"))
        fig.legend(handles=handles, loc="outside right upper", frameon=False, title="task kind")
        from alflow.utilisation import utilisation_of

        oracle = utilisation_of(data.tasks)["roles"].get("oracle")
        whole = None if oracle is None else oracle.utilisation
        u = util.get("utilisation")
        util_txt = "" if whole is None else f"; oracle busy {whole:.0%} of the whole campaign"
        if u is not None:
            util_txt += f" ({u:.0%} within labelling windows)"
        ax.set_title(f"Tasks per executor{util_txt}", pad=14)
        png = _png(fig)
    return Fig("timeline", "Task timeline",
               "Every task with a start and end time, one band per executor; tasks that ran at the same "
               "time sit in separate lanes, so a band's lane count is its largest observed concurrency. "
               "Dotted lines mark the first task of each generation; the shading marks labelling "
               "windows (first label submission to last label end).", png)


# ========================================================================== page
CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 1.2em 1.6em 3em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.45em; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; white-space: normal; vertical-align: bottom; }
td.text, th.text { text-align: left; white-space: normal; }
table.meta td { text-align: left; white-space: normal; }
table.meta th { text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.note { background: #fff8e1; border-left: 4px solid #e6a700; padding: 0.4em 0.8em; margin: 0.5em 0;
        font-size: 0.9em; }
.missing { background: #fdecea; border-left-color: #c0392b; }
code { font-size: 0.95em; }
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else format(v, spec)
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def _notes_html(notes: list[str], cls: str = "note") -> str:
    return "".join(f'<p class="{cls}">{_e(n)}</p>' for n in notes)


def _figure_html(fig: Fig) -> str:
    b64 = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{fig.name}"><img src="data:image/png;base64,{b64}" '
            f'alt="{_e(fig.title)}" data-file="{fig.name}.png">'
            f"<figcaption>{_e(fig.caption)} (also <code>{fig.name}.png</code>)</figcaption></figure>")


def _duration(g: dict[str, Any]) -> str | None:
    if not (g["started_at"] and g["finished_at"]):
        return None
    secs = (g["finished_at"] - g["started_at"]).total_seconds()
    div, unit = _time_unit(secs)
    return f"{secs / div:.3g} {unit}"


def _generation_table(data: Data) -> str:
    calls, cpu_h, _, _ = _cumulative(data)
    head = ["gen", "state", "labels", "failed %", "oracle CPU h", "accurate", "candidate", "failed",
            "selected", "trust lo / hi", "force MAE (eV/Å)", "energy MAE (eV/atom)", "calib. s",
            "Spearman ρ", "stability (fs)", "h(r) error", "started (UTC)", "took"]
    rows = []
    for g in data.generations:
        e = data.errors.get(g["idx"], {})
        c = data.cost.get(g["idx"], {})
        trust = "–" if g["trust_lo"] is None else f"{g['trust_lo']:.3g} / {g['trust_hi']:.3g}"
        cpu = c.get("cpu_s")
        cells = [g["idx"], g["state"], c.get("n_labels", g["n_labels"]),
                 None if g["label_failed_fraction"] is None else f"{100 * g['label_failed_fraction']:.1f}",
                 None if cpu is None else f"{float(cpu) / 3600:.3f}",
                 g["n_accurate"], g["n_candidate"], g["n_failed"], g["n_selected"], trust,
                 e.get("force_mae"), e.get("energy_mae"), e.get("calibration_scale"), e.get("spearman"),
                 e.get("stability_median_fs"), e.get("hr_error"), g["started_at"], _duration(g)]
        rows.append("<tr>" + "".join(f'<td class="{"text" if k == 1 else ""}">{_e(_fmt(v))}</td>'
                                     for k, v in enumerate(cells)) + "</tr>")
        if g["stop_reason"]:
            rows.append(f'<tr><td></td><td class="text" colspan="{len(head) - 1}">stop: '
                        f"{_e(g['stop_reason'])}</td></tr>")
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _whole_campaign_html(tasks: list[dict[str, Any]]) -> str:
    """Per role, busy over allocated worker time for the whole campaign (alflow.utilisation)."""
    from alflow.utilisation import utilisation_of

    whole = utilisation_of(tasks)
    rows = "".join(
        f"<tr><td>{_e(r.role)}</td><td>{r.workers}</td><td>{r.tasks}</td><td>{r.busy_s:.1f}</td>"
        f"<td>{r.allocated_s:.1f}</td><td>{'–' if r.utilisation is None else f'{100 * r.utilisation:.1f} %'}</td></tr>"
        for r in whole["roles"].values())
    if not rows:
        return ""
    head = ["role", "workers", "timed tasks", "busy (s)", "allocated (s)", "utilisation"]
    return (f"<p><b>Whole-campaign utilisation</b> over {whole['wall_s']:.1f} s of orchestrator time "
            f"({whole['runs']} run(s)):</p>"
            '<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + rows + "</tbody></table></div>"
            + f'<p class="note">Definition: {_e(whole["definition"])}</p>')


def _utilisation_html(util: dict[str, Any]) -> str:
    if util["utilisation"] is None:
        return _notes_html(["Oracle utilisation cannot be computed: no label task has both a start "
                            "and an end time yet."])
    rows = []
    for p in util["per_generation"]:
        rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in (
            _fmt(p["generation"]), p["label_tasks"], f"{p['span_s']:.1f}", f"{p['busy_s']:.1f}",
            f"{p['oracle_call_s']:.1f}",
            "–" if p["utilisation"] is None else f"{100 * p['utilisation']:.1f} %",
            "–" if p["oracle_call_utilisation"] is None else f"{100 * p['oracle_call_utilisation']:.1f} %"))
            + "</tr>")
    head = ["gen", "label tasks", "window (s)", "task run time (s)", "oracle call time (s)",
            "utilisation", "oracle-call utilisation"]
    return (f"<p><b>Oracle utilisation during labelling windows only {100 * util['utilisation']:.1f} %</b> "
            f"(oracle calls alone: {100 * util['oracle_call_utilisation']:.1f} %) of "
            f"{util['n_oracle_workers']} oracle worker(s) ({_e(util['workers_source'])}), over "
            f"{util['timed_label_tasks']} timed label tasks.</p>"
            '<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
            + f'<p class="note">Definition: {_e(util["definition"])}</p>')


def _page(data: Data, figs: dict[str, Fig], util: dict[str, Any], missing: list[str]) -> str:
    from alflow import __version__

    c = data.campaign
    meta = [("campaign", c["name"]), ("status", c["status"]), ("stop reason", c["stop_reason"] or "–"),
            ("spec sha256", c["spec_sha256"]), ("alflow version (campaign)", c["alflow_version"]),
            ("alflow version (report)", __version__), ("site", c["site"] or "–"),
            ("created (UTC)", _fmt(c["created_at"])), ("updated (UTC)", _fmt(c["updated_at"])),
            ("generations", str(len(data.generations))),
            ("report generated (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"))]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>alflow report: {_e(c['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Campaign <code>{_e(c['name'])}</code></h1>",
        '<table class="meta"><tbody>' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta)
        + "</tbody></table>",
        _notes_html(missing, "note missing"),
        "<h2>Generations</h2>",
        _generation_table(data) if data.generations else _notes_html(["No generation is recorded."]),
    ]
    sections = [
        ("Learning curves", ["learning_curves"]),
        ("Uncertainty and error", ["parity", "parity_all"]),
        ("Sampling: σ_F before and after", ["sigma_distribution"]),
        ("Selection", ["buckets"]),
        ("Oracle cost", ["oracle_cost"]),
        ("Carving (condensed phase)", ["carving"]),
        ("Tasks and oracle utilisation", ["timeline"]),
    ]
    for title, names in sections:
        parts.append(f"<h2>{_e(title)}</h2>")
        for name in names:
            parts.append(_notes_html(data.notes.get(name, [])))
            if name in figs:
                parts.append(_figure_html(figs[name]))
        if names == ["carving"]:
            parts.append(_carving_table(data))
        if names == ["timeline"]:
            parts.append(_whole_campaign_html(data.tasks))
            parts.append(_utilisation_html(util))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(url: str | None, campaign: str, out_dir: Path | str) -> Path:
    """Write `out_dir/report.html` (self-contained) and one PNG per figure into `out_dir`;
    return the HTML path. Raises `InputError` for an unknown campaign or a database without
    the alflow schema. A campaign with no finished generation still gets a page, which says
    what is missing."""
    data = _load(url, campaign)
    util = _utilisation(data.tasks, data.cost)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    if not any(g["state"] == "done" for g in data.generations):
        where = (f"generation {data.generations[-1]['idx']} is at step '{data.generations[-1]['state']}'"
                 if data.generations else "no generation has started")
        missing.append(f"No generation has finished yet ({where}): learning curves, parity plot, "
                       "σ_F distributions and bucket counts need at least one finished generation; "
                       "what exists so far is shown below.")
    builders = [fig_learning_curves, fig_parity, fig_parity_all, fig_sigma_distribution, fig_buckets,
                fig_oracle_cost, fig_carving, lambda d: fig_timeline(d, util)]
    figs: dict[str, Fig] = {}
    for build in builders:
        fig = build(data)
        if fig is not None:
            figs[fig.name] = fig
    for name in FIGURE_NAMES + OPTIONAL_FIGURE_NAMES:  # never leave a stale figure from an earlier report beside this one
        path = out / f"{name}.png"
        if name in figs:
            path.write_bytes(figs[name].png)
        elif path.exists():
            path.unlink()
    page = out / HTML_NAME
    page.write_text(_page(data, figs, util, missing), encoding="utf-8")
    return page
