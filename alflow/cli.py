"""`alflow` command line (typer).

Every user-facing failure becomes one clear line on stderr and exit code 2: an
`InputError` (bad input), and inside a command also an OSError (a file that cannot be
written) or a database that stops answering. `--debug` (or ALFLOW_DEBUG=1) adds the
traceback behind the line. Nothing else in the CLI decides exit codes; a traceback with
exit 1 is a bug.
"""

from __future__ import annotations

import contextlib
import os
import sys

import typer

app = typer.Typer(help="Active-learning workflows for interatomic potentials.", no_args_is_help=True)
spec_app = typer.Typer(help="Campaign spec files.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


_DEBUG = False
MAX_MESSAGE = 2000  # characters: a message is one line a person reads, never a dump


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback behind an error (or ALFLOW_DEBUG=1)."),
) -> None:
    """alflow: label -> train -> sample -> select, recorded in a provenance database."""
    global _DEBUG
    _DEBUG = debug


def _debug() -> bool:
    return _DEBUG or os.environ.get("ALFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def fail(message: str) -> typer.Exit:
    """Print one error line and return the exit-code-2 signal (bad input)."""
    line = " ".join(str(message).split())
    if len(line) > MAX_MESSAGE:
        line = f"{line[:MAX_MESSAGE]}... ({len(line) - MAX_MESSAGE:,} more characters)"
    typer.echo(f"error: {line}", err=True)
    return typer.Exit(code=2)


def _show_traceback(exc: BaseException) -> None:
    """With --debug: the traceback of `exc` and of what it replaced (`raise ... from None`)."""
    if not _debug():
        return
    import traceback

    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    for item in reversed(chain):
        traceback.print_exception(type(item), item, item.__traceback__, chain=False, file=sys.stderr)


def _console():
    """A rich console; wide when output goes to a file or pipe, so tables are not cut."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


@contextlib.contextmanager
def user_errors():
    """Inside: an `InputError`, an OSError or a database that cannot be used becomes one
    error line and exit code 2."""
    from sqlalchemy.exc import OperationalError

    from alflow.db.session import database_error
    from alflow.errors import InputError, shorten

    try:
        yield
    except InputError as exc:
        _show_traceback(exc)
        raise fail(str(exc)) from None
    except OperationalError as exc:  # the server went away, the disk is full, a lock timed out
        _show_traceback(exc)
        raise fail(str(database_error(exc))) from None
    except OSError as exc:
        _show_traceback(exc)
        where = f"{shorten(str(exc.filename), quote=False)}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}") from None


@spec_app.command("validate")
def spec_validate(path: str = typer.Argument(..., help="Campaign spec YAML file.")) -> None:
    """Check a campaign spec and its geometry files; print a summary."""
    from alflow.engine.preflight import check_campaign
    from alflow.spec import load_spec

    with user_errors():
        loaded = load_spec(path)
        check_campaign(loaded)  # the same checks as `alflow run`: site, oracle, reference
    n_atoms = sum(len(a) for a in loaded.geometries)
    typer.echo(
        f"{path}: valid (campaign {loaded.spec.name!r}, {len(loaded.geometries)} initial "
        f"geometries, {n_atoms} atoms, oracle {loaded.spec.oracle.kind}, "
        f"spec sha256 {loaded.sha256[:12]})"
    )


# --------------------------------------------------------------------------- database
db_app = typer.Typer(help="Provenance database: create and migrate the schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
DbOption = typer.Option(None, "--db", help="Database URL (default: $ALFLOW_DB_URL or sqlite:///alflow.db).")


@db_app.command("upgrade")
def db_upgrade(db: str | None = DbOption, revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Create or migrate the schema to REVISION (default: the newest)."""
    from alflow.db import session

    with user_errors():
        url = session.resolve_url(db)
        session.upgrade(url, revision)
    typer.echo(f"{session.redact(url)}: at revision {session.current_revision(url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base' removes every table)."),
    db: str | None = DbOption,
    yes: bool = typer.Option(False, "--yes", help="Confirm: downgrading deletes data."),
) -> None:
    """Migrate the schema down to REVISION (destructive)."""
    from alflow.db import session
    from alflow.db.queries import require_schema

    if not yes:
        raise fail("downgrading deletes recorded data; pass --yes to confirm")
    with user_errors():
        url = require_schema(db)  # an existing alflow database: downgrading creates none
        session.downgrade(url, revision)
    typer.echo(f"{session.redact(url)}: at revision {session.current_revision(url)}")


@db_app.command("current")
def db_current(db: str | None = DbOption) -> None:
    """Show the schema revision of the database and the newest one alflow knows."""
    from alflow.db import session
    from alflow.db.queries import require_schema

    with user_errors():
        url = require_schema(db)
    cur, head = session.current_revision(url), session.head_revision()
    state = "up to date" if cur == head else f"behind: run `alflow db upgrade` (head is {head})"
    typer.echo(f"{session.redact(url)}: revision {cur} ({state})")


# ------------------------------------------------------------------------------ query

@app.command("query")
def query(
    what: str = typer.Argument(None, help="A named query (see --list) or one read-only SQL statement."),
    db: str | None = DbOption,
    campaign: str | None = typer.Option(None, "--campaign", "-c", help="Only this campaign (named queries)."),
    generation: int | None = typer.Option(None, "--generation", "-g", help="Only this generation (named queries)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    list_: bool = typer.Option(False, "--list", help="List the named queries."),
) -> None:
    """Answer a question about campaigns: a named query or read-only SQL."""
    from alflow.db import queries
    from alflow.db.views import NAMED_QUERIES
    from alflow.errors import InputError

    if list_ or what is None:
        for name, (view, _, about) in NAMED_QUERIES.items():
            typer.echo(f"{name:<16} {about}  [view {view}]")
        return
    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format must be table, csv or json, not {fmt!r}")
    with user_errors():
        if what in NAMED_QUERIES or not any(c.isspace() for c in what.strip()):
            result = queries.named_query(db, what, campaign, generation)
        else:
            if campaign or generation is not None:
                raise InputError("--campaign/--generation apply to named queries; filter in your SQL",
                                 source="query")
            result = queries.raw_query(db, what)
    _print_result(result, fmt)


def _print_result(result, fmt: str) -> None:
    import csv
    import json
    import sys

    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    elif fmt == "json":
        records = [dict(zip(result.columns, row)) for row in result.rows]
        typer.echo(json.dumps(records, indent=1, default=str))
    else:
        from rich.table import Table

        table = Table(*result.columns, show_lines=False)
        for row in result.rows:
            table.add_row(*("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row))
        _console().print(table)
        typer.echo(f"{len(result.rows)} row(s)")


# ------------------------------------------------------------------------------ sites
sites_app = typer.Typer(help="Site configs: where oracle, training and sampling run.", no_args_is_help=True)
app.add_typer(sites_app, name="sites")


@sites_app.command("list")
def sites_list() -> None:
    """Site names alflow can find (./sites and the ones shipped with alflow)."""
    from alflow.engine.sites import find_site, site_names

    for name in site_names():
        typer.echo(f"{name:<16} {find_site(name)}")


@sites_app.command("show")
def sites_show(name: str = typer.Argument(..., help="Site name or YAML path.")) -> None:
    """Print a site's validated settings, defaults filled in."""
    import yaml

    from alflow.engine.sites import load_site

    with user_errors():
        site = load_site(name, origin="NAME")
    typer.echo(yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False).rstrip())


@sites_app.command("check")
def sites_check(name: str = typer.Argument(..., help="Site name or YAML path.")) -> None:
    """Validate a site, check that its tasks fit its blocks, and show the batch headers."""
    from alflow.engine.sites import check_site, render_batch_script, site_roles, workers_per_node

    with user_errors():
        site = check_site(name, origin="NAME")
    for role in site_roles(site):
        ex = site.executors[role]
        typer.echo(f"[{role}] {ex.provider.kind} provider, {workers_per_node(role, ex)} worker(s) per node, "
                   f"{ex.cores_per_worker:g} core(s) each, task limit {ex.task_time_limit_s:.0f} s")
        typer.echo(render_batch_script(site, role))
    typer.echo(f"site {site.name}: OK")


# ---------------------------------------------------------------------- campaigns
def _live_display():
    """A rich Live panel fed by the state machine's Status updates."""
    from rich.live import Live
    from rich.table import Table

    def render(st):
        t = Table.grid(padding=(0, 2))
        t.add_row("campaign", st.campaign, "generation", str(st.generation), "step", st.step)
        t.add_row("tasks done", str(st.done), "running", str(st.running), "failed", str(st.failed))
        mae = "-" if st.force_mae is None else f"{st.force_mae:.4f} eV/Å"
        t.add_row("oracle CPU", f"{st.oracle_cpu_s:.1f} s", "force MAE", mae,
                  "buckets", " ".join(f"{k}={v}" for k, v in st.buckets.items()) or "-")
        if st.message:
            t.add_row("note", st.message)
        return t

    live = Live(refresh_per_second=4, transient=False)
    return live, (lambda st: live.update(render(st)))


def _run_campaign(name: str, url: str, site: str | None, quiet: bool) -> None:
    from alflow.engine.campaign import run_campaign
    from alflow.engine.summary import campaign_summary

    try:
        with user_errors():
            if quiet:
                reason = run_campaign(name, url, site_name=site)
            else:
                live, progress = _live_display()
                with live:
                    reason = run_campaign(name, url, site_name=site, progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: continue with `alflow resume {name}`", err=True)
        raise typer.Exit(130) from None
    _print_summary(campaign_summary(url, name))
    typer.echo(f"stopped: {reason}")


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    t = Table("gen", "state", "labels", "failed %", "force MAE", "accurate", "candidate", "failed", "selected",
              title=f"campaign {summary['name']} ({summary['status']})")
    for g in summary["generations"]:
        t.add_row(str(g["idx"]), g["state"], str(g["n_labels"] or 0),
                  "-" if g["label_failed_fraction"] is None else f"{100 * g['label_failed_fraction']:.0f}",
                  "-" if g["force_mae"] is None else f"{g['force_mae']:.4f}",
                  *(str(g[k] if g[k] is not None else "-") for k in ("n_accurate", "n_candidate", "n_failed", "n_selected")))
    _console().print(t)
    tasks = ", ".join(f"{k} {v}" for k, v in sorted(summary["tasks"].items()))
    typer.echo(f"tasks: {tasks or 'none'}; oracle CPU {summary['oracle_cpu_s']:.1f} s")


@app.command("run")
def run(
    spec: str = typer.Argument(..., help="Campaign spec YAML."),
    site: str | None = typer.Option(None, "--site", help="Site name or YAML (default: the spec's site)."),
    db: str | None = DbOption,
    workdir: str | None = typer.Option(None, "--workdir", help="Run directory (default ./alflow-runs/NAME)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live display."),
) -> None:
    """Start a campaign and run it to its stop rule."""
    from pathlib import Path

    from alflow.db import session
    from alflow.engine.create import create_campaign
    from alflow.engine.preflight import check_campaign, check_writable
    from alflow.spec import load_spec

    with user_errors():
        # every input is checked before anything is written, even the schema
        loaded = load_spec(spec)
        check_campaign(loaded, site)  # the site (--site or the spec's), the oracle, the reference
        wd = check_writable(workdir or Path("alflow-runs") / loaded.spec.name, "--workdir")
        url = session.check_connection(db)  # last: for SQLite this creates the empty file
        session.upgrade(url)
        create_campaign(loaded, url, site=site or loaded.spec.site, workdir=wd)
    typer.echo(f"campaign {loaded.spec.name!r} created in {session.redact(url)}")
    _run_campaign(loaded.spec.name, url, site, quiet)


@app.command("resume")
def resume(
    name: str = typer.Argument(..., help="Campaign name."),
    site: str | None = typer.Option(None, "--site", help="Run on another site than recorded."),
    db: str | None = DbOption,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    max_generations: int | None = typer.Option(
        None, "--max-generations", help="Raise the stop rule to N generations (recorded) and continue."),
    oracle_budget: int | None = typer.Option(
        None, "--oracle-budget", help="Raise the oracle budget to N calls (recorded) and continue."),
) -> None:
    """Continue a stopped or crashed campaign where it left off (no oracle call repeated);
    with --max-generations / --oracle-budget, continue a finished one past its stop rule."""
    from alflow.db.queries import require_schema
    from alflow.engine.extend import extend_campaign

    with user_errors():
        url = require_schema(db)
        for field, old, new in extend_campaign(url, name, max_generations=max_generations,
                                               oracle_budget=oracle_budget):
            typer.echo(f"{name}: stopping.{field} raised from {old} to {new} (recorded)")
    _run_campaign(name, url, site, quiet)


@app.command("status")
def status(name: str | None = typer.Argument(None, help="Campaign name (default: list all)."), db: str | None = DbOption) -> None:
    """Show campaigns, or one campaign's generations, tasks and oracle cost."""
    import sqlalchemy as sa

    from alflow.db.models import Campaign
    from alflow.db.queries import require_schema
    from alflow.db.session import get_engine
    from alflow.engine.summary import campaign_summary

    with user_errors():
        url = require_schema(db)
        if name is None:
            with get_engine(url).connect() as c:
                rows = c.execute(sa.select(Campaign.name, Campaign.status, Campaign.stop_reason)
                                 .order_by(Campaign.id)).all()
            for n, st, why in rows:
                typer.echo(f"{n:<32} {st:<9} {why or ''}")
            return
        _print_summary(campaign_summary(url, name))
        from alflow.report import oracle_utilisation

        from alflow.utilisation import campaign_utilisation

        whole = campaign_utilisation(url, name)
        for r in whole["roles"].values():
            if r.utilisation is not None:
                typer.echo(f"{r.role} utilisation (whole campaign): {100 * r.utilisation:.1f} % of "
                           f"{r.workers} worker(s) over {whole['wall_s']:.0f} s")
        util = oracle_utilisation(url, name)
        if util.get("utilisation") is not None:
            typer.echo(f"  (oracle utilisation during labelling windows only: {100 * util['utilisation']:.1f} %)")


@app.command("export")
def export(
    name: str = typer.Argument(..., help="Campaign name."),
    out: str = typer.Option(..., "--out", "-o", help="Output file (missing directories are created)."),
    fmt: str = typer.Option("extxyz", "--format", "-f", help="extxyz or ase-db."),
    db: str | None = DbOption,
) -> None:
    """Write every successfully labelled geometry of a campaign, with energy and forces."""
    from pathlib import Path

    from alflow.db.queries import require_schema
    from alflow.engine.export import FORMATS, export_campaign
    from alflow.engine.preflight import check_writable
    from alflow.errors import InputError

    with user_errors():
        if fmt not in FORMATS:
            raise InputError(f"must be one of {', '.join(FORMATS)}, not {fmt!r}", source="--format")
        check_writable(out, "--out", directory=False)  # before the database is asked anything
        n = export_campaign(require_schema(db), name, out, fmt)
        if not Path(out).is_file():  # never say "wrote" about a file that is not there
            raise InputError("the export finished but the file is not there", source=out)
    typer.echo(f"wrote {n} labelled geometries to {out}")



@app.command("report")
def report(
    name: str = typer.Argument(..., help="Campaign name."),
    out: str = typer.Option(None, "--out", "-o", help="Output directory (default ./report-NAME; created if missing)."),
    db: str | None = DbOption,
) -> None:
    """Write a self-contained HTML report (and PNG figures) from the provenance database."""

    from alflow.db.queries import require_schema
    from alflow.engine.preflight import check_writable
    from alflow.report import write_report

    with user_errors():
        target = check_writable(out or f"report-{name}", "--out")  # before the database is asked
        html = write_report(require_schema(db), name, target)
    typer.echo(f"report written to {html}")


# ------------------------------------------------------------------------------ models
model_app = typer.Typer(help="Trained ensembles: list generations, export one.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("list")
def model_list(name: str = typer.Argument(..., help="Campaign name."), db: str | None = DbOption) -> None:
    """Generations with trained members, their held-out errors and validation figures."""
    from rich.table import Table

    from alflow.db.queries import require_schema
    from alflow.engine.model_export import generations

    def f(v, fmt=".4f"):
        return "-" if v is None else format(v, fmt)

    with user_errors():
        _, gens = generations(require_schema(db), name)
    t = Table("gen", "state", "members", "force MAE", "energy MAE/atom", "test frames", "calib. scale",
              "stability fs", "h(r) error", title=f"campaign {name}: ensembles (held-out errors in eV/Å, eV)")
    for g in gens:
        t.add_row(str(g.idx), g.state, str(len(g.members)), f(g.force_mae), f(g.energy_mae),
                  "-" if g.n_test is None else str(g.n_test), f(g.calibration_scale, ".3g"),
                  f(g.stability_time_fs, ".0f"), f(g.hr_error, ".3g"))
    _console().print(t)
    scored = [g for g in gens if g.members and g.force_mae is not None]
    if scored:
        best = min(scored, key=lambda g: (g.force_mae, -g.idx))
        typer.echo(f"best (lowest held-out force MAE): generation {best.idx}")


@model_app.command("export")
def model_export(
    name: str = typer.Argument(..., help="Campaign name."),
    generation: str = typer.Option("best", "--generation", "-g", help="A generation index, 'best' or 'last'."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (new or empty)."),
    no_torchscript: bool = typer.Option(False, "--no-torchscript", help="Skip the TorchScript files."),
    db: str | None = DbOption,
) -> None:
    """Write a generation's members as SchNetPack models (+ TorchScript) with a manifest."""
    from alflow.db.queries import require_schema
    from alflow.engine.model_export import export_model
    from alflow.engine.preflight import check_writable

    with user_errors():
        check_writable(out, "--out")
        manifest = export_model(require_schema(db), name, generation, out, torchscript=not no_torchscript)
    typer.echo(f"exported generation {manifest['generation']} of {name} ({manifest['n_members']} members, "
               f"torchscript: {manifest['torchscript'][:80]}) to {out}; chosen by {manifest['chosen_by'][:60]}")


@app.command("md")
def md(
    start: str = typer.Argument(..., help="Start geometry (any file ASE reads; its first frame)."),
    model: str | None = typer.Option(None, "--model", "-m", help="An `alflow model export` directory (or its manifest.json)."),
    campaign: str | None = typer.Option(None, "--campaign", "-c", help="Use this campaign's recorded ensemble (with --db)."),
    generation: str = typer.Option("last", "--generation", "-g", help="With --campaign: index, 'best' or 'last'."),
    out: str = typer.Option(..., "--out", "-o", help="Trajectory file to write (.traj, .extxyz, ...)."),
    steps: int = typer.Option(1000, "--steps", min=1),
    timestep: float = typer.Option(0.5, "--timestep", help="fs"),
    temperature: float = typer.Option(300.0, "--temperature", "-T", help="K (NVT bath; NVE start velocities)"),
    ensemble_kind: str = typer.Option("nvt", "--ensemble", help="nvt (Langevin) or nve."),
    friction: float = typer.Option(0.01, "--friction", help="Langevin friction, 1/fs (NVT)."),
    save_every: int = typer.Option(1, "--save-every", min=1, help="Write every N-th step (flagged steps always)."),
    max_uncertainty: float | None = typer.Option(
        None, "--max-uncertainty", help="Calibrated σ_F threshold, eV/Å (default: the model generation's trust_hi)."),
    on_uncertain: str = typer.Option("stop", "--on-uncertain", help="stop or flag, at the threshold."),
    bond_guard: float = typer.Option(0.5, "--bond-guard", help="Stop when a bond leaves its start length by this (Å)."),
    feed: str | None = typer.Option(None, "--feed", help="Record flagged frames as candidates of this campaign."),
    charge: int | None = typer.Option(None, "--charge", help="Default: the file's, else 0."),
    multiplicity: int | None = typer.Option(None, "--multiplicity", min=1, help="Default: the file's, else 1."),
    seed: int = typer.Option(0, "--seed", min=0),
    db: str | None = DbOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Production NN-MD with a trained ensemble: a trajectory with per-step uncertainty,
    stopping (or flagging) where the calibrated uncertainty passes a threshold."""
    from pathlib import Path

    from alflow.errors import InputError

    with user_errors():
        if ensemble_kind not in ("nvt", "nve"):
            msg = ("NPT is not available: alflow's MD (run_md) is batched Langevin at fixed cell"
                   if ensemble_kind == "npt" else f"must be nvt or nve, not {ensemble_kind!r}")
            raise InputError(msg, source="--ensemble")
        if on_uncertain not in ("stop", "flag"):
            raise InputError(f"must be stop or flag, not {on_uncertain!r}", source="--on-uncertain")
        if (model is None) == (campaign is None) and not (model is None and feed):
            raise InputError("give one of --model (an export) or --campaign (a recorded ensemble)", source="md")
        if timestep <= 0 or temperature <= 0 or friction < 0 or bond_guard <= 0:
            raise InputError("--timestep and --temperature must be positive, --friction not negative", source="md")
        from alflow.engine.preflight import check_writable

        check_writable(out, "--out", directory=False)
        if Path(out).exists():
            raise InputError("exists; choose another name", source=out)
        from alflow.spec import GeometrySource
        from alflow.structures import read_geometries

        if charge is None or multiplicity is None:
            import ase.io

            try:
                info = ase.io.read(start, 0).info
            except Exception:  # noqa: BLE001 - read_geometries below names the problem
                info = {}
            charge = int(info.get("charge", 0)) if charge is None else charge
            multiplicity = int(info.get("multiplicity", 1)) if multiplicity is None else multiplicity
        atoms = read_geometries(GeometrySource(path=str(Path(start).resolve()), index="0", charge=charge,
                                               multiplicity=multiplicity), ".")[0]
        url = None
        if campaign is not None or feed is not None:
            from alflow.db.queries import require_schema

            url = require_schema(db)
        from alflow.engine.model_export import load_ensemble

        if model is not None:
            ens, scale, info = load_ensemble(model)
        else:
            ens, scale, info = load_ensemble(url, campaign or feed, generation)
        from alflow.potentials.model import check_elements

        try:
            check_elements(atoms.numbers, ens.elements)
        except ValueError as exc:
            raise InputError(str(exc), source=start) from None
        threshold = max_uncertainty if max_uncertainty is not None else info.get("trust_hi")
        if threshold is None and (campaign or feed):
            from alflow.db.session import session_factory

            import sqlalchemy as sa

            from alflow.db import models as m

            with session_factory(url)() as s:
                cid = s.scalar(sa.select(m.Campaign.id).where(m.Campaign.name == (campaign or feed)))
                threshold = s.scalar(sa.select(m.Generation.trust_hi).where(
                    m.Generation.campaign_id == cid, m.Generation.idx == info["generation"]))
        if threshold is None:
            raise InputError("no threshold: give --max-uncertainty (eV/Å, calibrated σ_F)", source="md")
        from alflow.spec import MDSettings

        settings = MDSettings(temperature_K=temperature, timestep_fs=timestep, steps=steps,
                              friction_per_fs=0.0 if ensemble_kind == "nve" else friction,
                              save_every=save_every, bond_guard=bond_guard)
        from alflow.sampling.production import run_production_md

        if quiet:
            result = run_production_md(ens, atoms, settings, rng_seed=seed, threshold=threshold,
                                       calibration_scale=scale or 1.0, on_uncertain=on_uncertain)
        else:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("MD"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                          TextColumn("σ_cal {task.fields[sigma]:.3f} eV/Å"), TimeRemainingColumn(),
                          transient=False) as bar:
                task = bar.add_task("md", total=steps, sigma=0.0)
                result = run_production_md(
                    ens, atoms, settings, rng_seed=seed, threshold=threshold, calibration_scale=scale or 1.0,
                    on_uncertain=on_uncertain,
                    progress=lambda step, sig: bar.update(task, completed=step, sigma=sig))
        from ase.io import write

        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.partial{out_path.suffix}")
        write(tmp, result.frames)
        tmp.replace(out_path)
        fed = None
        if feed is not None:
            from alflow.engine.feed import feed_frames

            params = {"trajectory": str(out_path.resolve()), "threshold_eV_A": threshold,
                      "on_uncertain": on_uncertain, "steps": result.steps, "stop_reason": result.stop_reason,
                      "settings": settings.model_dump(mode="json"), "model": info, "seed": seed}
            fed = feed_frames(url, feed, atoms, result.flagged, params,
                              info.get("generation") if info.get("campaign") == feed else None)
    typer.echo(f"wrote {len(result.frames)} frames ({result.steps} steps, {result.steps * timestep:g} fs) to {out}; "
               f"stopped: {result.stop_reason}; {len(result.flagged)} frame(s) at or above "
               f"σ_cal {threshold:.3g} eV/Å" + ("" if fed is None else f"; {fed} queued as candidates of {feed}"))


@sites_app.command("init")
def sites_init(
    name: str = typer.Argument(..., help="Name of the new site."),
    out: str = typer.Option(None, "--out", "-o", help="File to write (default sites/NAME.yaml)."),
) -> None:
    """Draft a site file from this cluster's `sinfo` and `scontrol show partition`."""
    from pathlib import Path

    from alflow.engine.sites_init import collect_cluster_info, draft_site
    from alflow.errors import InputError

    path = Path(out or f"sites/{name}.yaml")
    if path.exists():
        raise fail(f"{path} exists; choose another name or --out")
    try:
        sinfo, partitions = collect_cluster_info()
    except (InputError, OSError) as exc:
        raise fail(f"cannot read the cluster's partitions: {exc}") from None
    with user_errors():
        text = draft_site(sinfo, partitions, name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    typer.echo(f"drafted {path}: edit account and worker_init, then `alflow sites check {path}`")

if __name__ == "__main__":
    app()
