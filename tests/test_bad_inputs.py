"""Bad inputs, one table row each: the command, the exit code, a word the one-line message
must contain, and what must stay unchanged (row counts of every table of a populated
PostgreSQL or SQLite database, or an SQLite file that must never appear).

Every row fails before anything runs (no campaign is started), so the file stays fast.
The CLI runs in-process through typer's CliRunner (an unhandled exception would be exit
code 1, so exit 2 means the failure was handled); the --debug switch and the absence of a
traceback are checked in real subprocesses at the end.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ase.io
import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from ase import Atoms
from db_helpers import populate, row_counts
from engine_helpers import run_alflow, write_site, write_spec
from typer.testing import CliRunner

from alflow.cli import app

runner = CliRunner()
PASSWORD = "hunter2-not-shown"
WATER_XYZ = "3\n\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"


# ------------------------------------------------------------------------ the world
@dataclass
class World:
    """Files and databases shared by the rows (rows never change them; that is checked)."""

    root: Path
    pg: str  # populated PostgreSQL database URL
    sqlite: str  # populated SQLite database URL
    text_file: Path  # a file that is not a database

    def case_dir(self) -> Path:
        d = self.root / uuid.uuid4().hex[:8]
        d.mkdir()
        return d

    def cu_spec(self, mutate: Callable[[dict], None] | None = None, name: str = "cu") -> str:
        """The engine tests' EMT Cu13 campaign, changed by `mutate`."""
        d = self.case_dir()
        path = write_spec(d, name)
        if mutate:
            data = yaml.safe_load(path.read_text())
            mutate(data)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def water_spec(self, **oracle) -> str:
        """A PySCF water campaign with `oracle` settings."""
        d = self.case_dir()
        (d / "water.xyz").write_text(WATER_XYZ)
        data = {"name": "w", "initial_geometries": [{"path": "water.xyz"}],
                "oracle": {"kind": "pyscf", **oracle}, "samplers": [{"kind": "random"}]}
        (d / "w.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return str(d / "w.yaml")

    def spec_text(self, text: str, files: dict[str, str] | None = None) -> str:
        d = self.case_dir()
        for fname, content in (files or {}).items():
            (d / fname).write_text(content)
        (d / "s.yaml").write_text(text)
        return str(d / "s.yaml")

    def site(self, **changes) -> str:
        d = self.case_dir()
        path = write_site(d)
        data = yaml.safe_load(path.read_text())
        for key, value in changes.items():
            if key in ("oracle", "train", "sample"):
                data["executors"][key].update(value)
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def new_sqlite(self) -> str:
        """A path for an SQLite file that must not come to exist."""
        return str(self.case_dir() / "never.db")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import PG_ADMIN_URL, _pg_admin

    from alflow.db.session import get_engine, upgrade

    root = tmp_path_factory.mktemp("bad_inputs")
    name = f"alflow_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    pg = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    sqlite = f"sqlite:///{root / 'populated.db'}"
    for url in (pg, sqlite):
        upgrade(url)
        populate(url)
    text_file = root / "notes.txt"
    text_file.write_text("these are my notes, not a database\n")
    yield World(root=root, pg=pg, sqlite=sqlite, text_file=text_file)
    get_engine.cache_clear()
    sa.create_engine(pg).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


# --------------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[World], list[str]]  # the command line after `alflow`
    word: str  # the message must contain this
    unchanged: str = "none"  # "pg", "sqlite": row counts; "absent": the last --db file; "none"
    code: int = 2


def _set(path: str, value):
    """A mutate function setting a dotted field ("samplers.0.kT_eV") of a spec dict."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def mutate(data: dict) -> None:
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
        node[keys[-1]] = value
    return mutate


def _both(*mutations):
    def mutate(data):
        for m in mutations:
            m(data)
    return mutate


def _alias_bomb() -> str:
    lines = ["name: bomb", "initial_geometries: [{path: water.xyz}]", "samplers: [{kind: random}]",
             "oracle:", "  kind: ase", "  calculator: emt", "  settings:",
             "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, 9):
        lines.append(f"    a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n    bomb: *a8\n"


def _run(spec: Callable[[World], str], db: str = "absent", site: Callable[[World], str] | None = None,
         extra: Callable[[World], list[str]] | None = None) -> Callable[[World], list[str]]:
    """`alflow run SPEC -q --db ...` against a fresh SQLite path (absent), or a populated db."""
    def args(w: World) -> list[str]:
        url = {"absent": None, "pg": w.pg, "sqlite": w.sqlite}[db] or f"sqlite:///{w.new_sqlite()}"
        out = ["run", spec(w), "-q", "--db", url]
        if site:
            out += ["--site", site(w)]
        return out + (extra(w) if extra else [])
    return args


def _validate(spec: Callable[[World], str]) -> Callable[[World], list[str]]:
    return lambda w: ["spec", "validate", spec(w)]


AU_H = "2\n\nAu 0 0 0\nH 0 0 1.52\n"

CASES = [
    # --- numbers that must be finite, counts that must be >= 1 (spec and site files)
    Case("spec-learning-rate-inf", _validate(lambda w: w.cu_spec(_set("training.learning_rate", float("inf")))),
         "training.learning_rate': Input should be a finite number"),
    Case("spec-kT-inf", _validate(lambda w: w.cu_spec(_set("samplers", [{"kind": "adversarial", "kT_eV": float("inf")}]))),
         "samplers[0].kT_eV': Input should be a finite number"),
    Case("run-learning-rate-inf", _run(lambda w: w.cu_spec(_set("training.learning_rate", float("-inf")))),
         "training.learning_rate", "absent"),
    Case("site-workers-0", _run(lambda w: w.cu_spec(), "pg", lambda w: w.site(oracle={"workers_per_node": 0})),
         "workers_per_node': must be 'auto' or a whole number of at least 1", "pg"),
    Case("site-workers-negative", _run(lambda w: w.cu_spec(), "absent", lambda w: w.site(train={"workers_per_node": -3})),
         "got -3", "absent"),
    Case("site-heartbeat-threshold-below-period",
         _run(lambda w: w.cu_spec(), "absent", lambda w: w.site(heartbeat_period_s=10, heartbeat_threshold_s=4)),
         "heartbeat_threshold_s': 4 s must be above heartbeat_period_s", "absent"),
    Case("site-cores-inf", lambda w: ["sites", "check", w.site(sample={"cores_per_worker": float("inf")})],
         "cores_per_worker': Input should be a finite number"),
    # --- oracle settings checked up front, by `spec validate` as by `run`
    Case("ase-unknown-setting-validate", _validate(lambda w: w.cu_spec(_set("oracle.settings", {"asap_cutof": True}))),
         "field 'oracle.settings': calculator 'emt' takes no setting 'asap_cutof' (did you mean 'asap_cutoff'?)"),
    Case("ase-unknown-setting-run", _run(lambda w: w.cu_spec(_set("oracle.settings", {"foo": 1})), "pg"),
         "oracle.settings", "pg"),
    Case("ase-unknown-calculator", _validate(lambda w: w.cu_spec(_set("oracle.calculator", "nosuchcalc"))),
         "field 'oracle.calculator': unknown calculator 'nosuchcalc'"),
    Case("ase-unknown-module", _validate(lambda w: w.cu_spec(_set("oracle.calculator", "nosuch.module:Calc"))),
         "field 'oracle.calculator': calculator 'nosuch.module:Calc': cannot import nosuch.module"),
    Case("pyscf-unknown-basis", _validate(lambda w: w.water_spec(basis="sto-42g")),
         "field 'oracle.basis': unknown basis set 'sto-42g'"),
    Case("pyscf-unknown-functional", _validate(lambda w: w.water_spec(method="B3LYPP")),
         "field 'oracle.method': unknown functional 'B3LYPP'"),
    Case("pyscf-unknown-functional-run", _run(lambda w: w.water_spec(method="B3LYPP"), "sqlite"),
         "field 'oracle.method'", "sqlite"),
    Case("pyscf-basis-without-element",
         _validate(lambda w: w.spec_text(
             "name: auh\ninitial_geometries: [{path: auh.xyz}]\noracle: {kind: pyscf, basis: 6-31g}\n"
             "samplers: [{kind: random}]\n", {"auh.xyz": AU_H})),
         "field 'oracle.basis': basis set '6-31g' has no functions for element Au"),
    Case("pyscf-basis-100k-characters", _validate(lambda w: w.water_spec(basis="x" * 100_000)),
         "(100,000 characters)"),
    Case("reference-md-frames-without-validation",
         _validate(lambda w: w.spec_text(
             "name: w\ninitial_geometries: [{path: water.xyz}]\noracle: {kind: pyscf}\n"
             "samplers: [{kind: random}]\nevaluation: {reference_md_frames: 4}\n",
             {"water.xyz": WATER_XYZ})),
         "field 'evaluation.reference_md_frames': frames come from the validation's reference trajectory"),
    Case("reference-unknown-calculator", _validate(lambda w: w.cu_spec(_set("validation.reference", "nosuchcalc"))),
         "field 'validation.reference': unknown calculator 'nosuchcalc'"),
    Case("reference-unknown-setting",
         _validate(lambda w: w.cu_spec(_set("validation.reference_settings", {"sigmaa": 1.0}))),
         "field 'validation.reference_settings': calculator 'emt' takes no setting 'sigmaa'"),
    # --- sites named by the spec or by --site, and what is wrong inside a site file
    Case("spec-site-unknown", _validate(lambda w: w.cu_spec(_set("site", "nosuchsite"))),
         "field 'site': unknown site 'nosuchsite'"),
    Case("spec-site-unknown-run", _run(lambda w: w.cu_spec(_set("site", "nosuchsite")), "pg"),
         "field 'site': unknown site 'nosuchsite'", "pg"),
    Case("option-site-unknown", lambda w: ["run", w.cu_spec(), "-q", "--site", "nosuchsite", "--db", w.sqlite],
         "--site: unknown site 'nosuchsite'", "sqlite"),
    # --- geometry files and YAML
    Case("geometry-is-a-directory",
         _validate(lambda w: w.cu_spec(_set("initial_geometries", [{"path": "."}]))),
         "is a directory, not a geometry file"),
    Case("alias-bomb-in-oracle-settings", _validate(lambda w: w.spec_text(_alias_bomb(), {"water.xyz": WATER_XYZ})),
         "aliases expand to more than 100,000 values"),
    Case("alias-bomb-run", _run(lambda w: w.spec_text(_alias_bomb(), {"water.xyz": WATER_XYZ}), "pg"),
         "aliases expand", "pg"),
    # --- --db
    Case("run-db-in-missing-directory", lambda w: ["run", w.cu_spec(), "-q", "--site", w.site(),
                                                   "--db", f"sqlite:///{w.root / 'nodir' / 'x.db'}"],
         "directory", "absent"),
    Case("upgrade-db-in-missing-directory", lambda w: ["db", "upgrade", "--db", f"sqlite:///{w.root / 'nodir2' / 'x.db'}"],
         "does not exist", "absent"),
    Case("db-is-a-text-file", lambda w: ["db", "upgrade", "--db", f"sqlite:///{w.text_file}"],
         "is not an SQLite database"),
    Case("query-db-is-a-text-file", lambda w: ["query", "errors", "--db", f"sqlite:///{w.text_file}"],
         "is not an SQLite database"),
    Case("db-is-a-directory", lambda w: ["db", "upgrade", "--db", f"sqlite:///{w.root}"], "is a directory"),
    Case("postgres-unreachable", lambda w: ["db", "upgrade", "--db", "postgresql://alflow@127.0.0.1:1/alflow"],
         "port 1 failed"),
    Case("postgres-unreachable-with-password",
         lambda w: ["status", "--db", f"postgresql://alflow:{PASSWORD}@127.0.0.1:1/alflow"], "alflow:***@"),
    Case("postgres-unreachable-run",
         lambda w: ["run", w.cu_spec(), "-q", "--site", w.site(), "--db", f"postgresql://a:{PASSWORD}@127.0.0.1:1/x"],
         "Connection refused"),
    Case("postgres-database-missing",
         lambda w: ["db", "upgrade", "--db", sa.engine.make_url(w.pg).set(database="alflow_no_such_db")
                    .render_as_string(hide_password=False)], 'database "alflow_no_such_db" does not exist'),
    Case("db-path-100k-characters", lambda w: ["query", "errors", "--db", "sqlite:///" + "d" * 100_000],
         "(100,000 characters)"),
    Case("run-db-path-100k-characters",
         lambda w: ["run", w.cu_spec(), "-q", "--site", w.site(), "--db", "sqlite:///" + "d" * 100_000],
         "too long (100,000 characters)"),
    Case("downgrade-unknown-revision-pg", lambda w: ["db", "downgrade", "nosuchrev", "--yes", "--db", w.pg],
         "unknown revision 'nosuchrev'", "pg"),
    Case("downgrade-unknown-revision-sqlite", lambda w: ["db", "downgrade", "0002x", "--yes", "--db", w.sqlite],
         "unknown revision '0002x'", "sqlite"),
    Case("upgrade-unknown-revision", lambda w: ["db", "upgrade", "--revision", "zzz", "--db", f"sqlite:///{w.new_sqlite()}"],
         "unknown revision 'zzz'", "absent"),
    Case("downgrade-missing-database", lambda w: ["db", "downgrade", "base", "--yes", "--db", f"sqlite:///{w.new_sqlite()}"],
         "no database file", "absent"),
    # --- run: nothing written before every input is checked
    Case("run-workdir-unwritable-pg", _run(lambda w: w.cu_spec(name="fresh"), "pg", lambda w: w.site(),
                                           lambda w: ["--workdir", str(w.text_file / "run")]),
         "--workdir: cannot create", "pg"),
    Case("run-workdir-in-proc", _run(lambda w: w.cu_spec(name="fresh"), "absent", lambda w: w.site(),
                                     lambda w: ["--workdir", "/proc/alflow-no-such/run"]),
         "--workdir: cannot write", "absent"),
    Case("run-workdir-unwritable-sqlite", _run(lambda w: w.cu_spec(name="fresh"), "sqlite", lambda w: w.site(),
                                               lambda w: ["--workdir", str(w.text_file)]),
         "exists and is not a directory", "sqlite"),
    # --- outputs
    Case("export-unwritable", lambda w: ["export", "eth", "-o", str(w.text_file / "out.xyz"), "--db", w.pg],
         "--out: cannot create", "pg"),
    Case("export-into-proc", lambda w: ["export", "eth", "-o", "/proc/alflow-no-such/out.xyz", "--db", w.sqlite],
         "--out: cannot write", "sqlite"),
    Case("report-unwritable", lambda w: ["report", "eth", "-o", str(w.text_file / "report"), "--db", w.sqlite],
         "--out: cannot create", "sqlite"),
    Case("report-onto-a-file", lambda w: ["report", "eth", "-o", str(w.text_file), "--db", w.pg],
         "exists and is not a directory", "pg"),
    Case("export-bad-format", lambda w: ["export", "eth", "-o", str(w.case_dir() / "x"), "-f", "cif", "--db", w.pg],
         "--format: must be one of extxyz, ase-db", "pg"),
    # --- query
    Case("query-comment-in-string-injection-pg",
         lambda w: ["query", "SELECT '/*'; COMMIT; DELETE FROM artifact; SELECT '*/'", "--db", w.pg],
         "one SQL statement at a time", "pg"),
    Case("query-dashes-in-string-injection-sqlite",
         lambda w: ["query", "SELECT '--'; COMMIT; DELETE FROM artifact; SELECT '--'", "--db", w.sqlite],
         "one SQL statement at a time", "sqlite"),
    Case("query-explain-delete-sqlite", lambda w: ["query", "EXPLAIN DELETE FROM label", "--db", w.sqlite],
         "EXPLAIN DELETE is not a read statement", "sqlite"),
    Case("query-explain-analyze-insert-pg",
         lambda w: ["query", "EXPLAIN ANALYZE INSERT INTO artifact (sha256, uri, kind, size_bytes) "
                    "VALUES ('x', 'y', 'z', 1)", "--db", w.pg], "EXPLAIN INSERT", "pg"),
    # --- inputs that are fine after all
    Case("valid-spec", _validate(lambda w: w.cu_spec()), "valid (campaign 'cu'", code=0),
]


def _snapshot(w: World, unchanged: str):
    if unchanged == "pg":
        return row_counts(w.pg)
    if unchanged == "sqlite":
        return row_counts(w.sqlite)
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(world, case):
    args = case.args(world)
    text_before = world.text_file.read_bytes()
    before = _snapshot(world, case.unchanged)
    start = time.perf_counter()
    result = runner.invoke(app, args)
    elapsed = time.perf_counter() - start
    assert result.exit_code == case.code, (result.exit_code, result.output[-2000:], result.exception)
    assert elapsed < 20, f"{case.id} took {elapsed:.1f} s"
    if case.code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
        assert len(lines[0]) < 700, f"{len(lines[0])} characters"
        assert case.word in lines[0], lines[0]
        assert "Traceback" not in result.output
    else:
        assert case.word in result.stdout
    assert PASSWORD not in result.output
    if case.unchanged in ("pg", "sqlite"):
        assert _snapshot(world, case.unchanged) == before
    elif case.unchanged == "absent":
        db = args[args.index("--db") + 1] if "--db" in args else ""
        path = Path(sa.engine.make_url(db).database)
        assert not path.exists(), f"{path} was created"
    assert world.text_file.read_bytes() == text_before


def test_run_with_sqlite_in_missing_directory_leaves_no_file_or_workdir(world, tmp_path):
    """Refused runs write nothing anywhere: no database file, no run directory."""
    wd = tmp_path / "runs"
    r = runner.invoke(app, ["run", world.cu_spec(_set("training.learning_rate", float("inf"))), "-q",
                            "--db", f"sqlite:///{tmp_path / 'a.db'}", "--workdir", str(wd)])
    assert r.exit_code == 2
    assert not (tmp_path / "a.db").exists() and not wd.exists()


def test_export_into_a_missing_directory_creates_it_and_the_file(world, tmp_path):
    """Decided: export creates missing directories (as `report -o` does), and says "wrote"
    only about a file that is there, with as many frames as it says."""
    out = tmp_path / "new" / "deeper" / "out.xyz"
    r = runner.invoke(app, ["export", "eth", "-o", str(out), "--db", world.pg])
    assert r.exit_code == 0, r.output
    assert out.is_file() and not out.with_name("out.xyz.partial").exists()
    n = int(r.stdout.split("wrote ")[1].split()[0])
    frames = ase.io.read(out, index=":")
    assert n == len(frames) >= 1
    assert np.isfinite(frames[0].get_potential_energy())


def test_export_of_a_label_without_forces_keeps_its_energy(world, tmp_path):
    """An ok label may carry no forces (an energy-only oracle): export writes its energy
    instead of crashing on it."""
    import sqlite3

    db = tmp_path / "energy_only.db"
    with sqlite3.connect(world.sqlite.removeprefix("sqlite:///")) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # with what is still in the WAL
    with sqlite3.connect(db) as c:
        (lid,) = c.execute("SELECT MIN(id) FROM label WHERE status = 'ok'").fetchone()
        c.execute("UPDATE label SET forces = NULL WHERE id = ?", (lid,))
    out = tmp_path / "out.xyz"
    r = runner.invoke(app, ["export", "eth", "-o", str(out), "--db", f"sqlite:///{db}"])
    assert r.exit_code == 0, r.output
    frames = ase.io.read(out, index=":")
    bare = [f for f in frames if f.info["label_id"] == lid]
    assert len(bare) == 1 and np.isfinite(bare[0].get_potential_energy())
    assert "forces" not in bare[0].calc.results
    assert all(f.get_forces().shape == (len(f), 3) for f in frames if f.info["label_id"] != lid)


def test_big_frame_validates_in_seconds(world):
    d = world.case_dir()
    side = 22
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:10_000]
    ase.io.write(d / "big.xyz", Atoms("Ar10000", positions=grid * 1.5))
    (d / "big.yaml").write_text("name: big\ninitial_geometries: [{path: big.xyz}]\n"
                                "oracle: {kind: ase, calculator: emt}\nsamplers: [{kind: random}]\n")
    start = time.perf_counter()
    r = runner.invoke(app, ["spec", "validate", str(d / "big.yaml")])
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - start < 5


# --------------------------------------------------------- real processes: --debug
def test_no_traceback_without_debug_and_one_with_it(tmp_path, monkeypatch):
    bad = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    plain = run_alflow("db", "upgrade", "--db", bad, cwd=tmp_path, timeout=60)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"error: --db: cannot create '{tmp_path / 'missing' / 'x.db'}': directory "
        f"'{tmp_path / 'missing'}' does not exist"]

    debug = run_alflow("--debug", "db", "upgrade", "--db", bad, cwd=tmp_path, timeout=60)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "check_sqlite_path" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()

    monkeypatch.setenv("ALFLOW_DEBUG", "1")
    env_debug = run_alflow("spec", "validate", str(tmp_path / "none.yaml"), cwd=tmp_path, timeout=60)
    assert env_debug.returncode == 2 and "Traceback" in env_debug.stderr
    assert env_debug.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "missing").exists()


def test_unreachable_postgres_in_a_real_process_is_one_line(tmp_path):
    r = run_alflow("query", "errors", "--db", f"postgresql://alflow:{PASSWORD}@127.0.0.1:1/alflow",
                   cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: --db: cannot use database postgresql+psycopg://alflow:***@127.0.0.1:1/alflow")
    assert PASSWORD not in r.stderr + r.stdout
