"""Adversarial attacks (Schwalbe-Koda et al. 2021) and the random-displacement baseline.

Gradient: float64 random PaiNN ensembles, autograd ∂log L/∂R against central finite
differences. Behaviour: three tiny PaiNN members trained on rattled water (GFN2-xTB labels
from tblite); from training geometries in the well, attacks raise σ_F² many-fold at a
moderate kT and stay in the well at a small kT.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import new_member

from alflow.sampling.adversarial import attack, log_loss, log_partition
from alflow.sampling.random_displacement import random_displacements
from alflow.spec import AdversarialSampler, RandomSampler

from ensemble_helpers import TINY, random_ensemble, rattled

torch.set_num_threads(1)





# ------------------------------------------------------------------------ the gradient
def test_log_partition_is_stable_and_exact():
    e = np.array([-10.0, -9.9, -9.5, np.nan])
    e_min, log_q = log_partition(e, kT=0.1)
    assert e_min == -10.0
    assert log_q == pytest.approx(np.log(1 + np.exp(-1.0) + np.exp(-5.0)))
    _, log_q_cold = log_partition(np.array([0.0, 100.0]), kT=1e-3)  # exp(-1e5) underflows
    assert log_q_cold == 0.0
    with pytest.raises(ValueError):
        log_partition(np.array([np.nan]), kT=0.1)


def test_attack_gradient_matches_finite_differences():
    """∂ log L/∂R by second-order autograd, two seeds in one batch (float64)."""
    ens = random_ensemble()
    seeds = [rattled(molecule("CH3OH"), 0.05, 1), rattled(molecule("H2O"), 0.05, 2)]
    train = np.array([ens.predict([s]).energy[0] / len(s) for s in seeds]) + np.array([0.0, 0.02])
    kT = 0.05
    e_min, log_q = log_partition(train, kT)
    pos0 = torch.tensor(np.concatenate([s.positions for s in seeds]))

    def objective(pos, create_graph):
        return log_loss(ens, seeds, pos, kT=kT, e_min=e_min, log_q=log_q, create_graph=create_graph)

    pos = pos0.clone().requires_grad_(True)
    out = objective(pos, True)
    (grad,) = torch.autograd.grad(out.log_loss.sum(), pos)
    grad = grad.numpy()
    # log L is log p + log σ_F², log p from the ensemble mean energy per atom
    n = np.array([len(s) for s in seeds])
    pred = ens.predict(seeds)
    np.testing.assert_allclose(out.log_p.detach().numpy(), -(pred.energy / n - e_min) / kT - log_q)
    np.testing.assert_allclose(out.log_loss.detach().numpy(),
                               out.log_p.detach().numpy() + np.log(pred.sigma_f2))
    h = 1e-5
    for flat in np.random.default_rng(0).choice(pos0.numel(), size=10, replace=False):
        i, k = divmod(int(flat), 3)
        p, m = pos0.clone(), pos0.clone()
        p[i, k] += h
        m[i, k] -= h
        fd = (objective(p, False).log_loss.sum() - objective(m, False).log_loss.sum()).item() / (2 * h)
        assert grad[i, k] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert np.abs(grad).max() > 1e-2


# ------------------------------------------------------------------- mechanics (random)
def test_clamp_rigid_removal_batching_and_metadata():
    ens = random_ensemble()
    water = rattled(molecule("H2O"), 0.05, 3)
    water.info.update(charge=0, multiplicity=1)
    ion = rattled(molecule("CH3OH"), 0.05, 4)
    ion.info.update(charge=1, multiplicity=2)
    lone = Atoms("H", positions=[[0.0, 0.0, 0.0]], info={"charge": 0, "multiplicity": 2})
    seeds = [water, ion, lone]
    train = np.array([ens.predict([water]).energy[0] / 3])
    settings = AdversarialSampler(kT_eV=0.5, steps=15, learning_rate=0.05, init_std=0.02, max_displacement=0.2)
    together = attack(ens, seeds, settings, train_energies_per_atom=train, rng_seed=7)
    apart = attack(ens, seeds, settings, train_energies_per_atom=train, rng_seed=7, batch_size=1)
    assert [c.parent for c in together] == [0, 1, 2]
    for a, b, seed in zip(together, apart, seeds):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)  # batching is exact
        assert a.relation == "adversarial"
        assert a.atoms.info["charge"] == seed.info["charge"]
        assert a.atoms.info["multiplicity"] == seed.info["multiplicity"]
        delta = a.atoms.positions - seed.positions
        np.testing.assert_allclose(delta, np.array(a.info["delta"]), atol=1e-12)
        assert np.linalg.norm(delta, axis=1).max() <= 0.2 + 1e-9  # clamp respected
        assert a.info["max_delta"] == pytest.approx(np.linalg.norm(delta, axis=1).max())
        assert a.info["sigma_f2_initial"] == pytest.approx(ens.predict([seed]).sigma_f2[0])
        assert a.sigma_f2 == pytest.approx(ens.predict([a.atoms]).sigma_f2[0], rel=1e-8)
    # the clamp binds for the molecules (lr 0.05 × 15 steps could move atoms 0.75 Å)
    assert together[0].info["max_delta"] == pytest.approx(0.2)
    # a lone atom keeps its displacement (rigid removal would erase all of it)
    assert together[2].info["max_delta"] > 0

    # with a loose clamp, rigid translation and rotation are projected out of δ exactly
    loose = AdversarialSampler(kT_eV=0.5, steps=10, learning_rate=0.05, init_std=0.05, max_displacement=50.0)
    (cand,) = attack(ens, [ion], loose, train_energies_per_atom=train, rng_seed=1)
    d = np.array(cand.info["delta"])
    c = ion.positions - ion.positions.mean(axis=0)
    assert np.abs(d.sum(axis=0)).max() < 1e-10
    assert np.abs(np.cross(c, d).sum(axis=0)).max() < 1e-10
    assert np.abs(d).max() > 0.05
    (kept,) = attack(ens, [ion], loose.model_copy(update={"remove_rigid": False}),
                     train_energies_per_atom=train, rng_seed=1)
    assert np.abs(np.array(kept.info["delta"]).sum(axis=0)).max() > 1e-6


def test_periodic_seed_is_wrapped():
    members = [new_member(dict(TINY), [29], {29: -3.5}, seed=k) for k in range(3)]
    ens = Ensemble(members, device="cpu", dtype=torch.float64)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.positions[0] = [0.01, 0.01, 0.01]  # at the cell corner: any push out must wrap
    (cand,) = attack(ens, [cu], AdversarialSampler(steps=5, learning_rate=0.05, max_displacement=0.3),
                     train_energies_per_atom=np.array([-3.5]), rng_seed=0)
    frac = cand.atoms.get_scaled_positions(wrap=False)
    assert np.all((frac >= 0) & (frac < 1))
    assert cand.atoms.pbc.all() and np.allclose(cand.atoms.cell.array, cu.cell.array)


# ----------------------------------------------------------------- behaviour (trained)


@pytest.mark.slow
def test_attack_from_the_well_raises_uncertainty(water):
    ens, frames, e_pa = water
    seeds = frames[:8]
    base = AdversarialSampler(kT_eV=0.1, steps=30, learning_rate=0.03, init_std=0.01, max_displacement=0.3)
    cands = attack(ens, seeds, base, train_energies_per_atom=e_pa, rng_seed=1)
    gain = np.array([c.sigma_f2 / c.sigma_f2_initial for c in cands])
    assert np.median(gain) > 10 and gain.min() > 1.5, gain  # measured: median ~200, min ~2
    for c, s in zip(cands, seeds):
        assert np.linalg.norm(c.atoms.positions - s.positions, axis=1).max() <= 0.3 + 1e-9
        assert c.log_p < 0 and c.info["log_loss"] >= c.info["log_loss_last"]
        # σ_F² reported for the returned point is the ensemble's
        assert c.sigma_f2 == pytest.approx(ens.predict([c.atoms]).sigma_f2[0], rel=1e-4)
    # kT matters: a cold attack buys probability (lower energy) instead and stays in the well
    cold = attack(ens, seeds, base.model_copy(update={"kT_eV": 0.005}),
                  train_energies_per_atom=e_pa, rng_seed=1)
    cold_gain = np.array([c.sigma_f2 / c.sigma_f2_initial for c in cold])
    assert np.median(cold_gain) < 2 and np.median(cold_gain) * 10 < np.median(gain)  # measured ~0.8
    assert max(c.info["max_delta"] for c in cold) < 0.15


@pytest.mark.slow
def test_best_point_along_the_path_is_kept(water):
    ens, frames, e_pa = water
    seeds = frames[:8]
    cold = AdversarialSampler(kT_eV=0.002, steps=25, learning_rate=0.03, init_std=0.01, max_displacement=0.3)
    cands = attack(ens, seeds, cold, train_energies_per_atom=e_pa, rng_seed=3)
    e_min, log_q = log_partition(e_pa, cold.kT_eV)
    kept_best = [c for c in cands if c.info["kept"] == "best"]
    assert kept_best, "Adam overshoots near a maximum: some path point beats the last"  # measured 7/8
    for c in cands:
        assert c.info["log_loss"] >= c.info["log_loss_last"]
        pos = torch.tensor(c.atoms.positions)
        again = log_loss(ens, [c.atoms], pos, kT=cold.kT_eV, e_min=e_min, log_q=log_q, create_graph=False)
        # float32 members: one frame alone vs in a batch of 8 differ by ~1e-5 relative
        assert again.log_loss.item() == pytest.approx(c.info["log_loss"], rel=1e-4)
    # the kept point is the path's iterate at best_step: the same attack stopped there
    # (same δ₀, same Adam steps) ends on it
    c = kept_best[0]
    short = attack(ens, seeds, cold.model_copy(update={"steps": c.info["best_step"]}),
                   train_energies_per_atom=e_pa, rng_seed=3)
    np.testing.assert_allclose(short[c.parent].atoms.positions, c.atoms.positions, atol=1e-9)
    assert short[c.parent].info["kept"] == "last"


# ----------------------------------------------------------------------- random baseline
def test_random_displacements():
    water = molecule("H2O")
    water.info.update(charge=0, multiplicity=1)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.positions[0] = [0.0, 0.0, 0.0]
    g = random_displacements([water, cu], RandomSampler(scale=0.1), rng_seed=5, per_seed=3)
    assert [c.parent for c in g] == [0, 0, 0, 1, 1, 1] and all(c.relation == "random" for c in g)
    assert g[0].atoms.info["charge"] == 0 and g[0].atoms.info["multiplicity"] == 1
    assert g[0].sigma_f2 is None  # the engine evaluates candidates afterwards
    again = random_displacements([water, cu], RandomSampler(scale=0.1), rng_seed=5, per_seed=3)
    for a, b in zip(g, again):
        np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)
    big = random_displacements([molecule("C60")] * 20, RandomSampler(scale=0.1), rng_seed=1)
    d = np.concatenate([c.atoms.positions - molecule("C60").positions for c in big])
    assert d.std() == pytest.approx(0.1, rel=0.05) and abs(d.mean()) < 0.01
    frac = g[3].atoms.get_scaled_positions(wrap=False)
    assert np.all((frac >= 0) & (frac < 1))  # periodic: wrapped
    # along the axes a field model sees only: same draws, z left alone
    flat = random_displacements([water], RandomSampler(scale=0.1), rng_seed=5, per_seed=3,
                                axes=(True, True, False))
    for a, b in zip(flat, g):
        np.testing.assert_array_equal(a.atoms.positions[:, 2], water.positions[:, 2])
        np.testing.assert_array_equal(a.atoms.positions[:, :2], b.atoms.positions[:, :2])
    uni = random_displacements([molecule("C60")] * 10, RandomSampler(scale=0.2, distribution="uniform"), rng_seed=2)
    du = np.concatenate([c.atoms.positions - molecule("C60").positions for c in uni])
    assert np.abs(du).max() <= 0.2 and du.std() == pytest.approx(0.2 / np.sqrt(3), rel=0.05)
