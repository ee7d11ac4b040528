"""The validation metrics of `alflow.validation` (Fu et al. protocol): collapse against the
reference's mean bond lengths, h(r) on (0, 10] Å, profile errors, and walkers that tell a
right potential from a wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from alflow.potentials.calculator import CalculatorModel
from alflow.potentials.ensemble import Prediction
from alflow.spec import ValidationSpec
from alflow.validation import (bond_pairs, collapse_index, distance_histogram, hr_mae,
                               profile_errors, reference_trajectory, validate)


def _water() -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


@pytest.mark.parametrize("stretch, collapsed", [(0.49, False), (0.51, True)])
def test_collapse_at_half_an_angstrom_from_the_reference_mean(stretch, collapsed):
    w = _water()
    pairs = bond_pairs(w)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2)]  # natural cutoffs: no H-H
    means = np.linalg.norm(w.positions[pairs[:, 1]] - w.positions[pairs[:, 0]], axis=1)
    frames = np.repeat(w.positions[None], 6, axis=0)
    u = w.positions[1] / np.linalg.norm(w.positions[1])
    frames[3:, 1] += stretch * u  # O-H1 stretched from frame 3 on
    got = collapse_index(frames, pairs, means, 0.5)
    assert got == (3 if collapsed else None)
    # compressing counts as well, and the deviation is from the *mean*, not the first frame
    frames2 = np.repeat(w.positions[None], 4, axis=0)
    frames2[2:, 2] -= stretch * (w.positions[2] / np.linalg.norm(w.positions[2]))
    assert collapse_index(frames2, pairs, means, 0.5) == (2 if collapsed else None)
    # against a reference mean 0.2 Å longer, the stretched bond deviates only stretch − 0.2
    assert collapse_index(frames, pairs, means + 0.2, 0.5) is None


def test_h_of_r_is_the_normalised_distance_histogram():
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 7, size=(5, 9, 3))
    frames[0, 1] = frames[0, 0] + [10.0, 0, 0]  # exactly r_max: counted in the last bin
    frames[1, 1] = frames[1, 0] + [11.0, 0, 0]  # beyond r_max: not counted
    h = distance_histogram(frames)
    d = np.concatenate([[np.linalg.norm(f[i] - f[j]) for i in range(9) for j in range(i + 1, 9)]
                        for f in frames])
    d = d[d <= 10.0]
    direct, edges = np.histogram(d, bins=500, range=(0.0, 10.0))
    assert len(h) == 500
    np.testing.assert_allclose(h, direct / (direct.sum() * 0.02), rtol=0, atol=1e-12)
    assert h.sum() * 0.02 == pytest.approx(1.0)
    assert hr_mae(h, h) == 0.0
    assert hr_mae(h, np.zeros(500)) == pytest.approx(np.mean(h))


def test_profile_errors_on_an_analytic_path():
    s = np.linspace(-1, 1, 21)
    ref = 0.5 * (1 - s**2) ** 2 - 3.0  # double well, barrier 0.5 eV, arbitrary offset
    pred = 0.4 * (1 - s**2) ** 2 + 7.0 + 0.01 * s  # barrier 0.4, tilted, another offset
    err = profile_errors(pred, ref)
    rp, rr = pred - pred.min(), ref - ref.min()
    assert err.mae == pytest.approx(np.mean(np.abs(rp - rr)))
    assert err.barrier_ref == pytest.approx(0.5)
    assert err.barrier_pred == pytest.approx(pred.max() - pred.min())
    assert err.barrier_error == pytest.approx(err.barrier_pred - 0.5)
    exact = profile_errors(ref + 12.0, ref)  # a constant offset is no error
    assert exact.mae == pytest.approx(0.0, abs=1e-12) and exact.barrier_error == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        profile_errors(pred[:5], ref)


class Exploding:
    """EMT plus a 2 eV/Å push of every atom away from the centre: a potential that falls apart."""

    def __init__(self):
        self.emt = CalculatorModel(lambda a: EMT())

    def predict(self, atoms_list, *, batch_size=0):
        p = self.emt.predict(atoms_list)
        forces = []
        for a, f in zip(atoms_list, p.forces, strict=True):
            r = a.positions - a.positions.mean(0)
            forces.append(f + 2.0 * r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-9))
        return Prediction(p.energy, p.energy_std, p.sigma_f2, forces, p.atomic_uncertainty)


def test_walkers_tell_the_reference_potential_from_a_broken_one(tmp_path):
    start = Icosahedron("Cu", noshells=2)
    v = ValidationSpec(enabled=True, temperature_K=300, timestep_fs=2.0, steps=150, walkers=8,
                       reference="emt", reference_steps=400)
    ref = reference_trajectory(start, v, lambda: CalculatorModel(lambda a: EMT()), {"calculator": "emt"},
                               rng_seed=1, cache_dir=tmp_path)
    assert ref.positions.shape == (41, 13, 3) and len(ref.pairs) > 0
    again = reference_trajectory(start, v, lambda: pytest.fail("not cached"), {"calculator": "emt"},
                                 rng_seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.positions, ref.positions)
    assert again.sha256 == ref.sha256

    good = validate(CalculatorModel(lambda a: EMT()), ref, v, rng_seed=2)
    bad = validate(Exploding(), ref, v, rng_seed=2)
    assert len(good.walkers) == 8 and len({w.start_frame for w in good.walkers}) == 8
    assert good.survival_fraction == 1.0 and good.stability_median_fs == 300.0
    assert bad.survival_fraction == 0.0 and bad.stability_median_fs < 150.0
    assert bad.hr_error > 2 * good.hr_error
