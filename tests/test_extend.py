"""`alflow resume NAME --max-generations N / --oracle-budget N` (issue 16): a finished
campaign's stop rule raised, recorded with the old and new value, and the campaign goes on
from its last generation without repeating an oracle call."""

from __future__ import annotations

import sqlalchemy as sa
from engine_helpers import run_alflow
from model_helpers import cu_campaign, inline_run

from alflow.db import models as m
from alflow.db.session import get_engine
from alflow.engine.extend import extend_campaign


def test_raised_max_generations_continues_from_the_last_generation(tmp_path, sqlite_url):
    url = sqlite_url
    assert cu_campaign(tmp_path, url, "ext", generations=1) == "max_generations reached (1)"
    with get_engine(url).connect() as c:
        sha0, labels0 = c.execute(sa.select(m.Campaign.spec_sha256)).scalar_one(), \
            c.execute(sa.text("SELECT COUNT(*) FROM label")).scalar_one()
        selected0 = c.execute(sa.select(m.Generation.n_selected).where(m.Generation.idx == 0)).scalar_one()
    # bad input first: nothing is changed
    r = run_alflow("resume", "ext", "--max-generations", "1", "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "1 does not raise the campaign's max_generations (1)" in r.stderr
    r = run_alflow("resume", "ext", "--oracle-budget", "5", "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "no oracle_budget (it is unlimited already)" in r.stderr
    r = run_alflow("resume", "nope", "--max-generations", "3", "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "no campaign named 'nope'" in r.stderr
    with get_engine(url).connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM campaign_change")).scalar_one() == 0
        assert c.execute(sa.select(m.Campaign.status)).scalar_one() == "finished"

    assert extend_campaign(url, "ext", max_generations=2) == [("max_generations", 1, 2)]
    with get_engine(url).connect() as c:
        camp = c.execute(sa.select(m.Campaign)).one()
        change = c.execute(sa.select(m.CampaignChange)).one()
    assert camp.status == "stopped" and camp.spec["stopping"]["max_generations"] == 2
    assert change.field == "stopping.max_generations" and change.old_value == {"value": 1}
    assert change.new_value == {"value": 2} and change.at_generation == 0
    assert change.old_spec_sha256 == sha0 != camp.spec_sha256 == change.new_spec_sha256

    assert inline_run(url, "ext") == "max_generations reached (2)"
    with get_engine(url).connect() as c:
        gens = c.execute(sa.select(m.Generation.idx, m.Generation.state).order_by(m.Generation.idx)).all()
        assert [tuple(g) for g in gens] == [(0, "done"), (1, "done")]
        gen1 = c.execute(sa.select(m.Generation.id).where(m.Generation.idx == 1)).scalar_one()
        new_labels = c.execute(sa.text("SELECT COUNT(*) FROM label l JOIN task t ON t.id = l.task_id "
                                       "WHERE t.generation_id = :g"), {"g": gen1}).scalar_one()
        total = c.execute(sa.text("SELECT COUNT(*) FROM label")).scalar_one()
        dup = c.execute(sa.text("SELECT COUNT(*) FROM (SELECT geometry_id FROM label GROUP BY geometry_id "
                                "HAVING COUNT(*) > 1) x")).scalar_one()
        assert c.execute(sa.select(m.Campaign.status)).scalar_one() == "finished"
    assert new_labels == selected0 > 0 and total == labels0 + new_labels and dup == 0
