"""SQL views that answer the standard questions about a campaign, and the named queries
`alflow query NAME` maps onto them.

The SQL is portable (SQLite and PostgreSQL). Migrations create the views by calling
`create_views(op, VIEWS_V1)`; a later schema change adds a new frozen dict here and a new
migration, so history stays reproducible.
"""

from __future__ import annotations

VIEWS_V1: dict[str, str] = {
    # Held-out error of the ensemble (and validation figures) per generation.
    "v_error_vs_generation": """
        SELECT c.name AS campaign, g.idx AS generation, me.eval_set, me.n_frames,
               me.energy_mae, me.force_mae, me.force_rmse, me.calibration_scale,
               me.spearman, me.miscalibration_area, me.stability_time_fs, me.hr_error
        FROM model_eval me
        JOIN generation g ON g.id = me.generation_id
        JOIN campaign c ON c.id = g.campaign_id
        WHERE me.model_id IS NULL
    """,
    # Oracle calls, failures and CPU/wall time per generation (labels made by its tasks).
    "v_oracle_cost": """
        SELECT c.name AS campaign, g.idx AS generation, COUNT(l.id) AS n_labels,
               SUM(CASE WHEN l.status = 'ok' THEN 1 ELSE 0 END) AS n_ok,
               SUM(CASE WHEN l.status = 'failed' THEN 1 ELSE 0 END) AS n_failed,
               SUM(l.cpu_s) AS cpu_s, SUM(l.wall_s) AS wall_s
        FROM label l
        JOIN task t ON t.id = l.task_id
        JOIN generation g ON g.id = t.generation_id
        JOIN campaign c ON c.id = g.campaign_id
        GROUP BY c.name, g.idx
    """,
    # Which labels (and geometries) trained the models of each generation, with their split.
    "v_training_labels": """
        SELECT DISTINCT c.name AS campaign, g.idx AS generation,
               ts.id AS training_set_id, tsl.split, l.id AS label_id,
               l.geometry_id, geo.formula, geo.origin, l.energy
        FROM model m
        JOIN generation g ON g.id = m.generation_id
        JOIN campaign c ON c.id = g.campaign_id
        JOIN training_set ts ON ts.id = m.training_set_id
        JOIN training_set_label tsl ON tsl.training_set_id = ts.id
        JOIN label l ON l.id = tsl.label_id
        JOIN geometry geo ON geo.id = l.geometry_id
    """,
    # What each sampling run found: uncertainty before (seed) and after, buckets, picks.
    "v_sampling_findings": """
        SELECT c.name AS campaign, g.idx AS generation, sr.id AS sampling_run_id,
               sr.kind, COUNT(s.id) AS n_frames,
               AVG(s.sigma_f2_initial) AS mean_sigma_f2_initial,
               AVG(s.sigma_f2) AS mean_sigma_f2, MAX(s.sigma_f2) AS max_sigma_f2,
               AVG(s.sigma_f2) / NULLIF(AVG(s.sigma_f2_initial), 0) AS uncertainty_gain,
               SUM(CASE WHEN s.bucket = 'accurate' THEN 1 ELSE 0 END) AS n_accurate,
               SUM(CASE WHEN s.bucket = 'candidate' THEN 1 ELSE 0 END) AS n_candidate,
               SUM(CASE WHEN s.bucket = 'failed' THEN 1 ELSE 0 END) AS n_failed,
               SUM(CASE WHEN s.selected THEN 1 ELSE 0 END) AS n_selected
        FROM sampling_run sr
        JOIN generation g ON g.id = sr.generation_id
        JOIN campaign c ON c.id = g.campaign_id
        LEFT JOIN sample s ON s.sampling_run_id = sr.id
        GROUP BY c.name, g.idx, sr.id, sr.kind
    """,
    # One row per generation: state, buckets, selection and why the campaign stopped.
    "v_generations": """
        SELECT c.name AS campaign, g.idx AS generation, g.state, g.n_accurate,
               g.n_candidate, g.n_failed, g.n_selected, g.trust_lo, g.trust_hi,
               g.stop_reason, g.started_at, g.finished_at
        FROM generation g
        JOIN campaign c ON c.id = g.campaign_id
    """,
}

# v2 (migration "validation_protocol"): the errors view also returns the walkers' spread and
# survival and the profile errors.
VIEWS_V2: dict[str, str] = {
    **VIEWS_V1,
    "v_error_vs_generation": """
        SELECT c.name AS campaign, g.idx AS generation, me.eval_set, me.n_frames,
               me.energy_mae, me.force_mae, me.force_rmse, me.calibration_scale,
               me.spearman, me.miscalibration_area,
               me.stability_time_fs AS stability_median_fs, me.stability_iqr_fs,
               me.survival_fraction, me.hr_error, me.hr_error_std,
               me.profile_mae, me.barrier_error
        FROM model_eval me
        JOIN generation g ON g.id = me.generation_id
        JOIN campaign c ON c.id = g.campaign_id
        WHERE me.model_id IS NULL
    """,
}

# name used on the command line -> (view, ORDER BY, what it answers)
NAMED_QUERIES: dict[str, tuple[str, str, str]] = {
    "errors": ("v_error_vs_generation", "campaign, generation",
               "held-out force/energy error, calibration, NN-MD stability (median, survival), "
               "h(r) error and profile errors of the ensemble per generation"),
    "oracle-cost": ("v_oracle_cost", "campaign, generation",
                    "oracle calls, failures and CPU/wall seconds per generation"),
    "training-labels": ("v_training_labels", "campaign, generation, label_id",
                        "which labels trained each generation's models"),
    "sampling": ("v_sampling_findings", "campaign, generation, sampling_run_id",
                 "what each MD/adversarial/random run found (uncertainty before/after)"),
    "generations": ("v_generations", "campaign, generation",
                    "state, bucket counts and stop reason per generation"),
}


def create_views(op, views: dict[str, str]) -> None:
    for name, sql in views.items():
        op.execute(f"CREATE VIEW {name} AS {sql.strip()}")


def drop_views(op, views: dict[str, str]) -> None:
    for name in reversed(list(views)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
