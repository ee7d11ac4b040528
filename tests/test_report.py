"""`alflow report`: a self-contained HTML page and PNG figures from the provenance database
alone (both backends), the oracle utilisation number, bad input, a campaign that has not
finished a generation, and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import get_engine
from alflow.errors import InputError
from alflow.report import FIGURE_NAMES, oracle_utilisation, write_report
from report_fixture import ORACLE_WORKERS, fill_campaign, fill_unfinished_campaign

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*data-file="([a-z_]+)\.png"')


def png_size(blob: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    assert blob[:8] == PNG_MAGIC, "not a PNG"
    assert blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def embedded(page: str) -> dict[str, bytes]:
    return {name: base64.b64decode(b64) for b64, name in DATA_URI.findall(page)}


# ------------------------------------------------------------------------ the report
def test_report_has_every_figure_embedded_and_on_disk(db_url, tmp_path):
    summary = fill_campaign(db_url)
    out = tmp_path / "report"
    html_path = write_report(db_url, summary["name"], out)

    assert html_path == out / "report.html" and html_path.is_file()
    page = html_path.read_text(encoding="utf-8")
    figures = embedded(page)
    assert set(figures) == set(FIGURE_NAMES)
    assert page.count("<img ") == len(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        blob = (out / f"{name}.png").read_bytes()
        assert figures[name] == blob, f"{name}: the embedded image is not the PNG file"
        width, height = png_size(blob)
        assert 400 <= width <= 2500 and 250 <= height <= 2500, (name, width, height)
        assert len(blob) > 10_000, f"{name} is suspiciously small ({len(blob)} bytes)"
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"<(script|link)\b", page)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "url(" not in page and "@import" not in page

    # header: name, status, stop reason, spec hash, version; one table row per generation
    with get_engine(db_url).connect() as conn:
        sha = conn.scalar(sa.select(m.Campaign.spec_sha256).where(m.Campaign.name == summary["name"]))
    for text in ("cu-fixture", "finished", "max_generations reached (3)", sha, "0.1.0"):
        assert text in page
    table = page.split("<h2>Generations</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr><td") == summary["generations"] + 1  # + the stop-reason row
    # the fixture reuses selected frames as seeds, so "after labelling" σ_F exists
    assert "The next generation&#x27;s σ_F is on record for" in page
    # utilisation on the page agrees with the function
    util = oracle_utilisation(db_url, summary["name"])
    assert f"Oracle utilisation during labelling windows only {100 * util['utilisation']:.1f} %" in page
    from alflow.utilisation import campaign_utilisation

    whole = campaign_utilisation(db_url, summary["name"])
    assert "Whole-campaign utilisation" in page and page.index("Whole-campaign") < page.index("Oracle utilisation during labelling windows only")
    oracle = whole["roles"]["oracle"]
    assert f"{100 * oracle.utilisation:.1f} %" in page and oracle.workers == 2


def test_null_columns_are_skipped_and_said(sqlite_url, tmp_path):
    from alflow.db.session import upgrade

    upgrade(sqlite_url)
    fill_campaign(sqlite_url, "no-validation", validation=False)
    page = write_report(sqlite_url, "no-validation", tmp_path).read_text(encoding="utf-8")
    assert "No NN-MD stability time is recorded for any generation" in page
    assert "No h(r) error is recorded for any generation" in page
    assert "No held-out force MAE" not in page
    assert "No profile MAE" not in page  # the spec names no profile: nothing to excuse
    assert (tmp_path / "learning_curves.png").is_file()
    # two rows of curves (force and energy MAE) instead of seven
    _, height = png_size((tmp_path / "learning_curves.png").read_bytes())
    assert height < 650


def test_unfinished_campaign_still_gets_a_page(db_url, tmp_path):
    fill_campaign(db_url)
    fill_unfinished_campaign(db_url)
    out = tmp_path / "r"
    write_report(db_url, "cu-fixture", out)  # every figure, then a thinner report on top
    page = write_report(db_url, "cu-started", out).read_text(encoding="utf-8")
    assert "No generation has finished yet (generation 0 is at step &#x27;label&#x27;)" in page
    assert "no model_eval row" in page and "there is no parity plot" in page
    assert "have not reached selection" in page
    assert "1 task(s) have no start or end time" in page
    assert set(embedded(page)) == {"oracle_cost", "timeline"}
    # no stale figure of the other campaign is left beside this page
    assert sorted(p.name for p in out.glob("*.png")) == ["oracle_cost.png", "timeline.png"]


def test_bad_input(sqlite_url, tmp_path):
    from alflow.db.session import upgrade

    with pytest.raises(InputError, match="no database file"):
        write_report(sqlite_url, "x", tmp_path)
    upgrade(sqlite_url)
    with pytest.raises(InputError, match="this database has no campaigns"):
        write_report(sqlite_url, "nope", tmp_path)
    fill_unfinished_campaign(sqlite_url)
    with pytest.raises(InputError, match="no campaign named 'nope'.*cu-started"):
        write_report(sqlite_url, "nope", tmp_path)
    with pytest.raises(InputError, match="no campaign named 'nope'"):
        oracle_utilisation(sqlite_url, "nope")
    assert not list(tmp_path.glob("*.html"))


# --------------------------------------------------------------------- utilisation
def _timed_campaign(url: str, resources: dict | None) -> None:
    """Label tasks with hand-checkable times: generation 0 submitted at t=0, tasks running
    [1, 5], [1, 3], [3, 5] s (2 at a time), labels of 1.5 s each; generation 1 submitted at
    t=100, one task [101, 103] with one label of 1 s; one failed task with no start."""
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    at = lambda s: t0 + dt.timedelta(seconds=s)  # noqa: E731
    with Session(get_engine(url)) as s, s.begin():
        camp = m.Campaign(name="timed", spec={}, spec_sha256="0" * 64, alflow_version="t")
        s.add(camp)
        s.flush()
        gens = [m.Generation(campaign_id=camp.id, idx=i, state="done") for i in range(2)]
        s.add_all(gens)
        s.flush()
        method = writers.ensure_oracle_method(s, {"code": "x", "settings": {}, "settings_sha256": "1" * 64})
        gids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in _atoms(5)])
        spans = [(0, 0, 1, 5), (0, 0, 1, 3), (0, 0, 3, 5), (1, 100, 101, 103)]
        tasks = []
        for gen, sub, start, end in spans:
            t = m.Task(campaign_id=camp.id, generation_id=gens[gen].id, kind="label", executor="oracle",
                       status="done", submitted_at=at(sub), started_at=at(start), finished_at=at(end),
                       resources=resources)
            s.add(t)
            tasks.append(t)
        s.add(m.Task(campaign_id=camp.id, generation_id=gens[0].id, kind="label", executor="oracle",
                     status="failed", submitted_at=at(0), finished_at=at(4), error_class="worker_lost"))
        s.add(m.Task(campaign_id=camp.id, generation_id=gens[0].id, kind="train", executor="train",
                     status="done", submitted_at=at(5), started_at=at(5), finished_at=at(50)))
        s.flush()
        writers.write_labels(s, [
            writers.label_row(gids[k], method, status="ok", energy=0.0, wall_s=1.5, cpu_s=1.5,
                              task_id=tasks[k].id) for k in range(3)
        ] + [writers.label_row(gids[3], method, status="ok", energy=0.0, wall_s=1.0, cpu_s=1.0,
                               task_id=tasks[3].id)])


def _atoms(n):
    from ase import Atoms

    return [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * k]]) for k in range(n)]


def test_oracle_utilisation_by_hand(db_url):
    _timed_campaign(db_url, {"geometries": 1})
    u = oracle_utilisation(db_url, "timed")
    # W = 2 (largest concurrency); busy = 4 + 2 + 2 + 2 = 10 s; windows 5 s + 3 s
    assert u["n_oracle_workers"] == 2 and u["workers_source"] == "max concurrency observed"
    assert u["label_tasks"] == 5 and u["timed_label_tasks"] == 4
    assert u["busy_s"] == pytest.approx(10.0) and u["span_s"] == pytest.approx(8.0)
    assert u["utilisation"] == pytest.approx(10.0 / (2 * 8.0))
    assert u["oracle_call_s"] == pytest.approx(5.5)
    assert u["oracle_call_utilisation"] == pytest.approx(5.5 / 16.0)
    g0, g1 = u["per_generation"]
    assert (g0["generation"], g0["span_s"], g0["utilisation"]) == (0, pytest.approx(5.0), pytest.approx(0.8))
    assert (g1["generation"], g1["span_s"], g1["utilisation"]) == (1, pytest.approx(3.0), pytest.approx(2 / 6))
    assert "observed running at once" in u["definition"]
    json.dumps(u)  # printable by `alflow status --json` as is


def test_oracle_utilisation_reads_workers_from_resources(sqlite_url):
    from alflow.db.session import upgrade

    upgrade(sqlite_url)
    _timed_campaign(sqlite_url, {"geometries": 1, "oracle_workers": 4})
    u = oracle_utilisation(sqlite_url, "timed")
    assert u["n_oracle_workers"] == 4 and u["workers_source"] == "task resources"
    assert u["utilisation"] == pytest.approx(10.0 / (4 * 8.0))


def test_fixture_utilisation_is_sensible(sqlite_url):
    from alflow.db.session import upgrade

    upgrade(sqlite_url)
    summary = fill_campaign(sqlite_url)
    u = oracle_utilisation(sqlite_url, summary["name"])
    assert u["n_oracle_workers"] == ORACLE_WORKERS
    assert u["label_tasks"] == summary["label_tasks"]
    assert 0.0 < u["utilisation"] <= 1.0
    assert 0 < u["oracle_call_utilisation"] <= u["utilisation"]
    assert [p["generation"] for p in u["per_generation"]] == [0, 1, 2]


# ------------------------------------------------------------------ headless Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const out = document.createElement('pre');
  out.id = 'alflow-img-check';
  out.textContent = JSON.stringify(imgs.map(i => ({
    alt: i.alt, complete: i.complete, natural: i.naturalWidth,
    shown: Math.round(i.getBoundingClientRect().width)})));
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    profile.mkdir()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)


def _render(page: Path, tmp: Path) -> tuple[list[dict], list[str]]:
    """(the image check the page's injected script wrote, console messages)."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    proc = _chromium(["--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom",
                      probe.as_uri()], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="alflow-img-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the check script did not run; DOM tail: {proc.stdout[-500:]!r}"
    import html

    images = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if re.search(r"CONSOLE[(:]\d+", line)]
    return images, console


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(sqlite_url, tmp_path):
    from alflow.db.session import upgrade

    # the detector itself: a broken image and a console error must both be caught
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><img alt="broken" src="missing.png">'
                       '<script>console.error("alflow-control-error")</script></body></html>')
    images, console = _render(control, tmp_path)
    assert [(i["alt"], i["natural"]) for i in images] == [("broken", 0)]
    assert any("alflow-control-error" in line for line in console)

    upgrade(sqlite_url)
    fill_campaign(sqlite_url)
    page = write_report(sqlite_url, "cu-fixture", tmp_path / "report")
    images, console = _render(page, tmp_path)
    assert len(images) == len(FIGURE_NAMES)
    for img in images:
        assert img["complete"] and img["natural"] > 300, img
        assert img["shown"] > 300, img  # laid out at a readable size, not collapsed
    assert console == [], console

    shot = tmp_path / "page.png"
    proc = _chromium(["--window-size=1280,3000", "--hide-scrollbars", f"--screenshot={shot}",
                      page.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert png_size(shot.read_bytes()) == (1280, 3000)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        return
    with Image.open(shot) as im:
        colours = im.convert("RGB").resize((64, 150)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"


# ------------------------------------------------------------------ carving campaigns
def test_carving_campaign_report_shows_cluster_sizes_and_cost_weighted_spend(tmp_path, sqlite_url):
    """A real carving campaign (periodic Cu box, EMT on the carved clusters, in-process
    backend): the report's carving figure and table agree with the database."""
    import yaml
    from ase.build import bulk
    from ase.io import write

    from alflow.db.session import upgrade
    from alflow.engine.backends import InlineBackend
    from alflow.engine.campaign import load_context, run
    from alflow.engine.create import create_campaign
    from alflow.engine.scheduler import Limits, Scheduler, TaskLedger
    from alflow.report import carving_summary
    from alflow.spec import load_spec
    from engine_helpers import write_spec

    box = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)  # 108 atoms, 10.8 Å
    box.rattle(0.05, seed=1)
    write(tmp_path / "box.extxyz", box)
    spec = yaml.safe_load(write_spec(tmp_path, "cu_carve_report", max_epochs=10).read_text())
    spec["initial_geometries"] = [{"path": str(tmp_path / "box.extxyz")}]
    spec["samplers"] = [{"kind": "md", "temperature_K": 600, "timestep_fs": 2.0, "steps": 10,
                         "walkers": 1, "save_every": 5}]
    spec["carving"] = {"enabled": True, "initial_centres": 3, "z_score": 1.0}
    spec["validation"] = {"enabled": False}
    spec["evaluation"]["test_fraction"] = 0.25
    path = tmp_path / "carve.yaml"
    path.write_text(yaml.safe_dump(spec))
    upgrade(sqlite_url)
    create_campaign(load_spec(path), sqlite_url, site="inline", workdir=tmp_path / "run")
    ctx = load_context(sqlite_url, "cu_carve_report")
    limits = Limits(time_limit_s={"oracle": 120, "train": 300, "sample": 300}, retries=1,
                    stall_s=60, poll_s=0.05)
    backend = InlineBackend({"oracle": 2, "train": 2, "sample": 1})
    run(ctx, Scheduler(backend, TaskLedger(ctx.Session, ctx.id, "inline"), ctx.run_dir, limits))

    out = tmp_path / "report"
    page = write_report(sqlite_url, "cu_carve_report", out).read_text(encoding="utf-8")
    figures = embedded(page)
    assert "carving" in figures and figures["carving"] == (out / "carving.png").read_bytes()
    width, height = png_size(figures["carving"])
    assert width >= 600 and height >= 250 and len(figures["carving"]) > 10_000

    # the figure's numbers against the database, computed here independently
    with get_engine(sqlite_url).connect() as c:
        rows = c.execute(sa.text("""
            SELECT g.idx, geo.natoms, l.status,
                   EXISTS (SELECT 1 FROM geometry_edge e WHERE e.child_id = geo.id
                           AND e.relation = 'carved') AS carved
            FROM label l JOIN task t ON t.id = l.task_id JOIN generation g ON g.id = t.generation_id
            JOIN geometry geo ON geo.id = l.geometry_id""")).all()
    assert rows and all(carved for *_, carved in rows)  # a periodic frame is never labelled
    summary = carving_summary([{"generation": g, "natoms": n, "status": s, "carved": bool(k)}
                               for g, n, s, k in rows])
    assert len(summary) >= 2  # initial clusters and clusters carved from generation 0's MD
    for gen in summary:
        mine = [(n, s) for g, n, s, _ in rows if g == gen]
        assert summary[gen]["cost_carved"] == sum(float(n) ** 3 for n, _ in mine)
        assert summary[gen]["n_carved"] == len(mine) and summary[gen]["cost_other"] == 0
        assert sorted(summary[gen]["sizes"]) == sorted(n for n, s in mine if s == "ok")
        assert all(1 < n < 108 for n, _ in mine)
    table = page.split("<h2>Carving (condensed phase)</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr><td>") == len(summary)
    first = summary[min(summary)]
    assert f"{first['cost_carved']:.3g}" in table


def test_the_oracle_cost_axis_is_in_seconds_for_a_cheap_oracle_and_hours_otherwise():
    from alflow.report import cpu_axis

    label, values = cpu_axis({0: 1e-4, 1: 2e-4})
    assert label == "cumulative oracle CPU-seconds" and values == pytest.approx({0: 0.36, 1: 0.72})
    assert cpu_axis({0: 0.5, 1: 2.0}) == ("cumulative oracle CPU-hours", {0: 0.5, 1: 2.0})
