"""Attribution of the ensemble force variance to atoms (Roy et al. 2024).

Derivatives: float64 random PaiNN ensembles against central finite differences of
S = Σ_i u_i. Behaviour: an ensemble trained on rattled fcc Cu (EMT labels, periodic 32-atom
box) flags the one atom pushed towards a neighbour (and that neighbour), by attribution
and by force variance.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from alflow.potentials.ensemble import Ensemble

from alflow.potentials.train import train_member
from alflow.sampling.attribution import attribute, attribute_batch, uncertain_atoms
from alflow.spec import ModelSpec, TrainingSpec

from ensemble_helpers import TINY, random_ensemble, rattled

torch.set_num_threads(1)
WATER_BOX = Path(__file__).resolve().parent.parent / "workflows" / "geometries" / "water_box_64.extxyz"





def test_attribution_matches_finite_differences_of_total_variance():
    ens = random_ensemble(seed=200)
    atoms = rattled(molecule("CH3CH2OH"), 0.05, 0)
    a = attribute(ens, atoms)
    assert a.shape == (len(atoms),) and np.all(a >= 0)

    def total_variance(pos):
        b = atoms.copy()
        b.positions = pos
        return float(np.sum(ens.predict([b]).atomic_uncertainty[0]))

    h = 1e-5
    for j in (0, 2, 5):  # C, O, H
        grad = np.zeros(3)
        for k in range(3):
            p, m = atoms.positions.copy(), atoms.positions.copy()
            p[j, k] += h
            m[j, k] -= h
            grad[k] = (total_variance(p) - total_variance(m)) / (2 * h)
        assert a[j] == pytest.approx(np.mean(np.abs(grad)), rel=1e-5)
    assert a.max() > 1e-4  # non-trivial
    # s_i is the ensemble's per-atom u_i: the force-variance option returns it directly
    u = attribute(ens, atoms, method="force_variance")
    np.testing.assert_allclose(u, ens.predict([atoms]).atomic_uncertainty[0])


def test_batched_attribution_equals_one_frame_at_a_time():
    ens = random_ensemble(seed=200)
    frames = [rattled(molecule("CH3CH2OH"), 0.05, 1), rattled(molecule("H2O"), 0.05, 2),
              rattled(molecule("CH4"), 0.05, 3)]
    batch = attribute_batch(ens, frames)
    assert [len(x) for x in batch] == [9, 3, 5]
    for frame, got in zip(frames, batch):
        np.testing.assert_allclose(got, attribute(ens, frame), rtol=1e-10, atol=1e-14)
    assert attribute_batch(ens, []) == []
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(ens, frames[0], method="shap")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_lean_chunked_attribution_equals_plain_autograd_on_periodic_frame(dtype, tol):
    """The lean pair path (chunks of 100 pairs: many per pass, the last one short) gives the
    plain double-backward ∂S/∂R of a periodic water box, to round-off of the dtype."""
    from ase.io import read

    from alflow.potentials.ensemble import ATTRIBUTION_PAIR_CHUNK

    box = rattled(read(WATER_BOX), 0.02, 0)
    ens = random_ensemble(seed=210, dtype=dtype)
    plain = ens.variance_gradient([box], pair_chunk=None)
    assert plain.abs().max() > 1e-6
    assert len(ens.graph([box]).idx_i) % 100 != 0
    for chunk in (100, ATTRIBUTION_PAIR_CHUNK):
        lean = ens.variance_gradient([box], pair_chunk=chunk)
        torch.testing.assert_close(lean, plain, rtol=0, atol=tol * plain.abs().max().item())
    # attribute takes the lean path by default: its scores are the plain path's
    want = plain.abs().mean(dim=1).to(torch.float64).numpy()
    np.testing.assert_allclose(attribute(ens, box), want, rtol=0, atol=tol * want.max())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_graphs_above_lean_pairs_are_predicted_through_the_lean_path_with_the_same_result(
        dtype, tol, monkeypatch):
    """Large frames take the lean pair path in prediction and MD too (memory, speed): the
    energies, forces, stress and σ of a periodic water box are the plain path's to round-off."""
    from ase.io import read

    from alflow.potentials import ensemble as ensemble_module
    from alflow.potentials import fast_painn

    box = rattled(read(WATER_BOX), 0.02, 0)
    ens = random_ensemble(seed=211, dtype=dtype)
    plain = ens.predict([box], stress=True)
    monkeypatch.setattr(ensemble_module, "LEAN_PAIRS", 1000)  # the 192-atom box is above it now
    calls = []
    real = fast_painn._lean_representation
    monkeypatch.setattr(fast_painn, "_lean_representation", lambda *a: calls.append(1) or real(*a))
    lean = ens.predict([box], stress=True)
    assert len(calls) == ens.size  # every member went the lean way
    for name in ("energy", "energy_std", "sigma_f2", "forces", "atomic_uncertainty", "stress"):
        want, got = np.asarray(getattr(plain, name)), np.asarray(getattr(lean, name))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(np.abs(want).max(), 1.0))


def test_uncertain_atoms_threshold_rule():
    values = np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 5.0])
    assert uncertain_atoms(values).tolist() == [7]
    thr = values.mean() + 1.0 * values.std()
    assert uncertain_atoms(values, z=1.0).tolist() == np.flatnonzero(values >= thr).tolist()
    assert uncertain_atoms(np.ones(6)).size == 0  # nothing stands out
    assert uncertain_atoms(np.array([3.0])).size == 0  # one atom: no environment to blame
    with_nan = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0, np.nan])
    assert uncertain_atoms(with_nan).tolist() == [8]


@pytest.fixture(scope="module")
def copper_ensemble(tmp_path_factory):
    """Three tiny PaiNN members trained on rattled fcc Cu (EMT), a 32-atom periodic box."""
    rng = np.random.default_rng(0)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    frames, energies, forces = [], [], []
    for _ in range(30):
        a = base.copy()
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        a.calc = EMT()
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
        a.calc = None
        frames.append(a)
    model = ModelSpec(**{**TINY, "cutoff": 3.2}, ensemble_size=3)  # first shell only: fast
    training = TrainingSpec(max_epochs=30, batch_size=8, learning_rate=5e-3, patience=60, val_fraction=0.1)
    root = tmp_path_factory.mktemp("cu")
    results = [train_member(frames, energies, forces, None, model, training, seed=s,
                            workdir=root / f"m{s}", export=False) for s in range(3)]
    return Ensemble.load([r.checkpoint for r in results], device="cpu"), frames


@pytest.mark.slow
def test_displaced_atom_in_periodic_box_is_flagged(copper_ensemble):
    ens, frames = copper_ensemble
    frame = frames[0].copy()
    centre = 5
    d = frame.get_distances(centre, range(len(frame)), mic=True)
    d[centre] = np.inf
    partner = int(np.argmin(d))
    vec = frame.get_distance(centre, partner, mic=True, vector=True)
    frame.positions[centre] += 0.35 * vec / np.linalg.norm(vec)  # 2.55 -> ~2.2 Å
    pred = ens.predict([frames[1], frame])
    assert pred.sigma_f2[1] > 3 * pred.sigma_f2[0]  # measured: 5.7x
    scores = attribute(ens, frame)
    flagged = set(uncertain_atoms(scores).tolist())
    assert centre in flagged and flagged <= {centre, partner}, flagged  # measured: {5, 22}
    by_variance = set(uncertain_atoms(pred.atomic_uncertainty[1]).tolist())
    assert by_variance & {centre, partner} and by_variance <= {centre, partner}, by_variance
    # an undistorted training frame has no atom that stands out by much
    assert attribute(ens, frames[1]).max() < 0.5 * scores[centre]
