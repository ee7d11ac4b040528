"""NN-MD walkers: the batched BAOAB integrator and the stop rules.

Most tests use three tiny PaiNN members trained on rattled water (GFN2-xTB labels from
tblite), a physical potential with a well; NVE conservation uses the same members in
float64. Stop tests replay a walker with the same rng_seed and a threshold placed on its
recorded uncertainty, so they know exactly where it must stop.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk

from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import new_member

from alflow.bonds import bond_list
from alflow.sampling.md import run_md
from alflow.spec import MDSampler

from ensemble_helpers import TINY

torch.set_num_threads(1)





def first_crossing(values: np.ndarray, threshold: float) -> int:
    return int(np.flatnonzero(values >= threshold)[0])


@pytest.mark.slow
def test_stops_at_trust_hi_and_frames_match_the_ensemble(water):
    ens, frames, _ = water
    seeds = frames[:4]
    hot = MDSampler(temperature_K=1000, steps=300, save_every=50)
    free = run_md(ens, seeds, hot, trust_hi=np.inf, rng_seed=0)
    assert all(w.stop_reason == "max_steps" and w.steps == 300 for w in free.walkers)
    sigma = [np.sqrt(w.u_mean) for w in free.walkers]
    k = int(np.argmax([s.max() / s[0] for s in sigma]))  # the walker whose σ_F grows most
    trust = 0.5 * (sigma[k][0] + sigma[k].max())
    assert sigma[k].max() > 2 * sigma[k][0]  # measured: 0.05 -> 0.68 eV/Å
    stop = first_crossing(sigma[k], trust)

    res = run_md(ens, seeds, hot, trust_hi=trust, rng_seed=0)  # the same trajectories, cut
    w = res.walkers[k]
    assert w.stop_reason == "trust_hi" and w.stop_step == stop == w.steps
    assert w.sigma_f_stop == pytest.approx(sigma[k][stop], rel=1e-6)
    np.testing.assert_allclose(w.u_mean, free.walkers[k].u_mean[: stop + 1], rtol=1e-6)
    mine = {c.info["event"]: c for c in res.candidates if c.info["walker"] == k}
    assert mine["trust_hi"].step == stop and mine["last_below_trust_hi"].step == stop - 1
    assert np.sqrt(mine["trust_hi"].sigma_f2) >= trust > np.sqrt(mine["last_below_trust_hi"].sigma_f2)
    periodic = sorted(c.step for c in res.candidates if c.info["walker"] == k and c.info["event"] == "periodic")
    assert periodic == list(range(50, stop, 50))

    # every frame's uncertainty is what the ensemble says about that frame
    pred = ens.predict([c.atoms for c in res.candidates])
    for c, s2, u, e in zip(res.candidates, pred.sigma_f2, pred.atomic_uncertainty, pred.energy):
        assert c.relation == "md" and c.parent == c.info["walker"] and c.step > 0
        assert c.sigma_f2 == pytest.approx(s2, rel=1e-4)
        np.testing.assert_allclose(c.atomic_uncertainty, u, rtol=1e-4, atol=1e-9)
        assert c.energy_mean == pytest.approx(e, abs=1e-4)
        assert c.sigma_f2_initial == pytest.approx(free.walkers[c.parent].u_mean[0], rel=1e-6)
        assert c.atoms.info["charge"] == 0 and c.atoms.info["multiplicity"] == 1
        np.testing.assert_allclose(
            res.walkers[c.info["walker"]].u_max[c.step], np.max(c.atomic_uncertainty), rtol=1e-6)

    # per-atom rule: sqrt(max u_i) reaches the threshold no later than the frame σ_F
    atom = run_md(ens, seeds, hot.model_copy(update={"stop_on": "atom"}), trust_hi=trust, rng_seed=0)
    wa = atom.walkers[k]
    assert wa.stop_reason == "trust_hi"
    assert wa.stop_step == first_crossing(np.sqrt(free.walkers[k].u_max), trust) <= stop

    # a seed already beyond trust_hi stops at once and returns nothing
    none = run_md(ens, seeds[:1], hot, trust_hi=1e-6, rng_seed=0)
    assert none.walkers[0].stop_reason == "trust_hi" and none.walkers[0].steps == 0
    assert none.candidates == []


@pytest.mark.slow
def test_physical_guards_stop_before_broken_frames(water):
    ens, frames, _ = water
    seed = frames[0]
    bonds = bond_list(seed).unique()
    assert sorted(zip(bonds.i.tolist(), bonds.j.tolist())) == [(0, 1), (0, 2)]  # O-H, O-H; not H-H
    b0 = seed.get_distances(0, [1, 2])

    # hot walkers break the learned water (energy guard off to isolate the geometric ones)
    res = run_md(ens, [seed] * 6, MDSampler(temperature_K=8000, steps=300, save_every=1000,
                                            energy_blowup_per_atom=100.0),
                 trust_hi=np.inf, rng_seed=1)
    reasons = [w.stop_reason for w in res.walkers]
    assert reasons.count("bond_guard") >= 2 and "min_distance" in reasons, reasons  # measured 3, 2
    for w in res.walkers:
        if w.stop_reason == "min_distance":
            (last,) = [c for c in res.candidates if c.info["walker"] == w.walker]
            assert last.info["event"] == "before_min_distance" and last.step == w.stop_step - 1
            assert min(last.atoms.get_all_distances()[np.triu_indices(3, 1)]) >= 0.6
    for w in res.walkers:
        if w.stop_reason != "bond_guard":
            continue
        assert w.steps == w.stop_step - 1 and len(w.u_mean) == w.stop_step
        (last,) = [c for c in res.candidates if c.info["walker"] == w.walker]
        assert last.info["event"] == "before_bond_guard" and last.step == w.stop_step - 1
        assert np.all(np.abs(last.atoms.get_distances(0, [1, 2]) - b0) <= 0.5)  # still intact

    # energy guard: |E - E0| per atom beyond the limit; the frame before is returned
    res = run_md(ens, [seed] * 4, MDSampler(temperature_K=1000, steps=200, save_every=1000,
                                            energy_blowup_per_atom=0.05),
                 trust_hi=np.inf, rng_seed=2)
    blown = [w for w in res.walkers if w.stop_reason == "energy_blowup"]
    assert len(blown) >= 2 and max(w.stop_step for w in blown) > 5  # measured: steps 13, 3, 2, 3
    for w in blown:
        assert np.all(np.abs(w.epot - w.epot[0]) / 3 <= 0.05)
        frames_w = [c for c in res.candidates if c.info["walker"] == w.walker]
        if w.steps > 0:
            assert [c.info["event"] for c in frames_w] == ["before_energy_blowup"]
            assert frames_w[0].step == w.steps

    # atoms too close in the seed: stopped before any step, nothing evaluated or returned
    bad = seed.copy()
    bad.positions[1] = bad.positions[0] + 0.5 * (bad.positions[1] - bad.positions[0]) / b0[0]
    res = run_md(ens, [bad], MDSampler(), trust_hi=np.inf, rng_seed=0)
    (w,) = res.walkers
    assert w.stop_reason == "min_distance" and w.stop_step == 0 and len(w.u_mean) == 0
    assert res.candidates == []


@pytest.mark.slow
def test_nve_conserves_energy_and_langevin_holds_temperature(water):
    ens, frames, _ = water
    ens64 = Ensemble(ens.members, device="cpu", dtype=torch.float64)
    drift = {}
    for dt in (0.5, 0.25):
        settings = MDSampler(temperature_K=300, timestep_fs=dt, steps=int(100 / dt), save_every=10_000,
                             friction_per_fs=0.0)
        res = run_md(ens64, frames[:2], settings, trust_hi=np.inf, rng_seed=0)
        dev = []
        for w in res.walkers:
            assert w.stop_reason == "max_steps"
            total = w.epot + w.ekin
            dev.append(np.abs(total - total[0]).max() / w.ekin.std())
        drift[dt] = max(dev)
    assert drift[0.25] < 0.05  # measured 0.019 (0.5 fs: 0.075)
    assert drift[0.5] / drift[0.25] > 2.5  # error ∝ dt² for a symplectic integrator (~4)

    # strong friction: the time-averaged kinetic temperature matches the target
    settings = MDSampler(temperature_K=500, friction_per_fs=0.1, steps=300, save_every=10_000)
    res = run_md(ens, frames[:16], settings, trust_hi=np.inf, rng_seed=3)
    ekin = np.concatenate([w.ekin[50:] for w in res.walkers])
    temperature = 2 * ekin.mean() / (3 * 3 * units.kB)  # 3 atoms, 9 degrees of freedom
    assert temperature == pytest.approx(500, rel=0.1)


@pytest.mark.slow
def test_reproducible_and_batching_independent(water):
    ens, frames, _ = water
    ens64 = Ensemble(ens.members, device="cpu", dtype=torch.float64)
    settings = MDSampler(temperature_K=600, steps=60, save_every=20)
    a = run_md(ens64, frames[:3], settings, trust_hi=np.inf, rng_seed=11)
    b = run_md(ens64, frames[:3], settings, trust_hi=np.inf, rng_seed=11)
    c = run_md(ens64, frames[:3], settings, trust_hi=np.inf, rng_seed=12)
    assert len(a.candidates) == len(b.candidates) == 9
    for x, y in zip(a.candidates, b.candidates):
        np.testing.assert_array_equal(x.atoms.positions, y.atoms.positions)
        assert x.step == y.step and x.info == y.info
    assert not np.allclose(a.candidates[0].atoms.positions, c.candidates[0].atoms.positions)
    # walker 0 alone follows the same trajectory as in the batch (per-walker noise streams)
    alone = run_md(ens64, frames[:1], settings, trust_hi=np.inf, rng_seed=11)
    for x, y in zip(alone.candidates, [c for c in a.candidates if c.info["walker"] == 0]):
        np.testing.assert_allclose(x.atoms.positions, y.atoms.positions, atol=1e-8)


def test_periodic_walkers_run_nvt_at_fixed_cell():
    members = [new_member(dict(TINY), [29], {29: -3.5}, seed=k, energy_scale=0.05) for k in range(3)]
    ens = Ensemble(members, device="cpu")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    cu.positions[0] = [0.001, 0.001, 0.001]  # on the corner: a step outwards must wrap
    res = run_md(ens, [cu, cu], MDSampler(steps=12, save_every=4), trust_hi=np.inf, rng_seed=0)
    assert [w.stop_reason for w in res.walkers] == ["max_steps", "max_steps"]
    assert [c.step for c in res.candidates] == [4, 8, 12, 4, 8, 12]
    pred = ens.predict([c.atoms for c in res.candidates])
    for c, s2 in zip(res.candidates, pred.sigma_f2):
        assert np.allclose(c.atoms.cell.array, cu.cell.array) and c.atoms.pbc.all()
        frac = c.atoms.get_scaled_positions(wrap=False)
        assert np.all((frac >= 0) & (frac < 1))
        assert c.sigma_f2 == pytest.approx(s2, rel=1e-4)
    assert run_md(ens, [], MDSampler(), trust_hi=1.0, rng_seed=0).candidates == []
