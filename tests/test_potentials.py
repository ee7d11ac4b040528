"""SchNetPack ensembles: derivatives, uncertainty formulas, checkpoints, training.

Real (tiny) SchNetPack models throughout. Derivative checks use float64 models and
central finite differences; the training test trains three PaiNN members on tblite
GFN2 ethanol and compares the held-out force error with trivial predictors.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from alflow.potentials.calibration import calibrate, frame_force_rmse
from alflow.potentials.calculator import EnsembleCalculator
from alflow.potentials.checkpoint import (
    CheckpointError,
    export_schnetpack,
    load_member,
    save_member,
    sidecar_path,
)
from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import UnknownElementError, new_member
from alflow.potentials.split import in_validation, split_indices
from alflow.potentials.train import fit_energy_reference, train_member
from alflow.spec import ModelSpec, TrainingSpec

from ensemble_helpers import finite_difference_forces

torch.set_num_threads(1)

TINY = {"representation": "painn", "n_atom_basis": 16, "n_interactions": 2, "n_rbf": 8, "cutoff": 5.0}
HCO_REF = {1: -13.6, 6: -1030.0, 8: -2040.0}


def rattled(atoms: Atoms, scale: float, seed: int) -> Atoms:
    a = atoms.copy()
    a.positions += np.random.default_rng(seed).normal(0.0, scale, a.positions.shape)
    return a


def random_ensemble(m=3, *, elements=(1, 6, 8), reference=None, dtype=torch.float64,
                    config=TINY, strategy="loop") -> Ensemble:
    reference = reference if reference is not None else HCO_REF
    members = [new_member(dict(config), list(elements), reference, seed=100 + k) for k in range(m)]
    return Ensemble(members, device="cpu", dtype=dtype, strategy=strategy)


def emt_labels(atoms_list):
    energies, forces = [], []
    for a in atoms_list:
        b = a.copy()
        b.calc = EMT()
        energies.append(b.get_potential_energy())
        forces.append(b.get_forces())
    return np.array(energies), forces


# ------------------------------------------------------------------- derivatives (float64)
@pytest.mark.parametrize("representation", ["painn", "schnet"])
def test_forces_are_minus_energy_gradient(representation):
    ens = random_ensemble(config={**TINY, "representation": representation})
    atoms = rattled(molecule("CH3CH2OH"), 0.05, 0)
    out = ens.predict([atoms], members=True)
    h = 1e-4
    fd = finite_difference_forces(ens, atoms, h)
    np.testing.assert_allclose(out.forces_members[0], fd, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(out.forces[0], fd.mean(0), atol=1e-6, rtol=1e-6)
    assert np.abs(fd).max() > 1e-2  # a non-trivial check


def test_sigma_f2_gradient_matches_finite_differences():
    """∂σ_F²/∂R by (second-order) autograd, mixed-size batch, both strategies."""
    ens = random_ensemble(dtype=torch.float64)
    ens_vmap = Ensemble(ens.members, device="cpu", dtype=torch.float64, strategy="vmap")
    batch = [rattled(molecule("CH3CH2OH"), 0.05, 1), rattled(molecule("CH3OH"), 0.05, 2)]
    pos0 = torch.tensor(np.concatenate([a.positions for a in batch]))

    def objective(e, pos, create_graph):
        out = e.predict_torch(batch, pos, create_graph=create_graph)
        return (out.sigma_f2 * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum() + 0.01 * out.energy.sum()

    grads = []
    for e in (ens, ens_vmap):
        pos = pos0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(e, pos, True), pos)
        grads.append(grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    h = 1e-5
    rng = np.random.default_rng(0)
    for flat in rng.choice(pos0.numel(), size=8, replace=False):
        i, k = divmod(int(flat), 3)
        p, m = pos0.clone(), pos0.clone()
        p[i, k] += h
        m[i, k] -= h
        fd = (objective(ens, p, False) - objective(ens, m, False)).item() / (2 * h)
        assert grads[0][i, k] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert np.abs(grads[0]).max() > 1e-4


def test_uncertainty_matches_numpy_from_member_forces():
    ens = random_ensemble(m=4, dtype=torch.float32)
    batch = [rattled(molecule("CH3CH2OH"), 0.1, s) for s in range(3)] + [rattled(molecule("H2O"), 0.1, 9)]
    out = ens.predict(batch, members=True, batch_size=3)  # two chunks
    m = ens.size
    for b, atoms in enumerate(batch):
        fm = out.forces_members[b]  # (M, n, 3)
        fbar = fm.mean(0)
        sigma_f2 = sum(((fm[k] - fbar) ** 2).sum() / (3 * len(atoms)) for k in range(m)) / (m - 1)
        u = sum(((fm[k] - fbar) ** 2).sum(-1) for k in range(m)) / (3 * (m - 1))
        assert out.sigma_f2[b] == pytest.approx(sigma_f2, rel=1e-5)
        assert out.sigma_f[b] == pytest.approx(np.sqrt(sigma_f2), rel=1e-5)
        np.testing.assert_allclose(out.atomic_uncertainty[b], u, rtol=1e-5)
        np.testing.assert_allclose(out.forces[b], fbar, rtol=1e-5, atol=1e-6)
        assert out.energy_std[b] == pytest.approx(np.std(out.energy_members[:, b], ddof=1), rel=1e-5)
    # the element reference is added back: energies are absolute
    composition = sum(HCO_REF[int(z)] for z in batch[0].numbers)
    assert abs(out.energy[0] - composition) < 50.0


def test_periodic_stress_matches_numerical_stress_and_calculator():
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
    from ase.stress import full_3x3_to_voigt_6_stress

    cu = rattled(bulk("Cu", "fcc", a=3.6, cubic=True), 0.05, 3)
    cu.set_cell(cu.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 0.98, 0.01], [0.0, 0.0, 1.03]]), scale_atoms=True)
    ens = random_ensemble(elements=(29,), reference={29: -3.5})
    calc = EnsembleCalculator(ens, members=True)
    cu.calc = calc
    stress = cu.get_stress()
    np.testing.assert_allclose(stress, calculate_numerical_stress(cu, eps=1e-5), rtol=1e-5, atol=1e-8)
    assert np.abs(stress).max() > 1e-4
    forces = cu.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(cu, eps=1e-5), atol=1e-6)
    cu.get_potential_energy()  # results of the undisplaced cell again
    for key in ("sigma_f2", "sigma_f", "atomic_uncertainty", "energy_std", "energy_members", "forces_members"):
        assert key in calc.results
    pred = ens.predict([cu])
    assert calc.results["energy"] == pytest.approx(pred.energy[0])
    np.testing.assert_allclose(calc.results["stress"], full_3x3_to_voigt_6_stress(pred.stress[0]))


# -------------------------------------------------------------------------- errors / IO
def test_unknown_element_is_a_clear_error():
    ens = random_ensemble(m=2)
    with pytest.raises(UnknownElementError, match=r"N \(Z=7\)"):
        ens.predict([molecule("NH3")])
    with pytest.raises(UnknownElementError, match="Cu"):
        ens.predict_torch([bulk("Cu")])


def test_checkpoint_roundtrip_and_hash_mismatch(tmp_path):
    member = new_member(dict(TINY), [1, 6, 8], HCO_REF, seed=1)
    path = tmp_path / "m.pt"
    digest = save_member(member, path)
    assert sidecar_path(path).read_text().split()[0] == digest
    loaded = load_member(path, digest)
    atoms = rattled(molecule("CH3CH2OH"), 0.05, 4)
    e1 = Ensemble([member], device="cpu").predict([atoms])
    e2 = Ensemble([loaded], device="cpu").predict([atoms])
    np.testing.assert_array_equal(e1.forces[0], e2.forces[0])
    assert np.isnan(e1.sigma_f2[0])  # one member: no uncertainty

    wrong = "0" * 64
    with pytest.raises(CheckpointError) as info:
        load_member(path, wrong)
    assert str(path) in str(info.value) and wrong in str(info.value) and digest in str(info.value)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_member(path)  # verified against the sidecar
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="no expected sha256"):
        load_member(path)


def test_schnetpack_export_loads_in_spk_calculator(tmp_path):
    import schnetpack as spk

    member = new_member(dict(TINY), [29], {29: -3.5}, seed=2)
    path = tmp_path / "m.spk.pt"
    export_schnetpack(member, path)
    cu = rattled(bulk("Cu", "fcc", a=3.6, cubic=True), 0.05, 5)
    calc = spk.interfaces.SpkCalculator(
        model=str(path), neighbor_list=spk.transform.VesinNeighborList(cutoff=TINY["cutoff"]),
        energy_unit="eV", position_unit="Angstrom", stress_key="stress", dtype=torch.float64,
    )
    cu.calc = calc
    ours = Ensemble([member], device="cpu", dtype=torch.float64).predict([cu])
    assert cu.get_potential_energy() == pytest.approx(ours.energy[0], abs=1e-8)
    np.testing.assert_allclose(cu.get_forces(), ours.forces[0], atol=1e-8)
    np.testing.assert_allclose(calc.results["stress"], ours.stress[0], atol=1e-8)


# ------------------------------------------------------------------------ split / reference
def test_split_is_fixed_by_geometry_hash():
    frames = [rattled(molecule("H2O"), 0.1, s) for s in range(400)]
    train, val = split_indices(frames, 0.2)
    assert 40 <= len(val) <= 120 and sorted(train + val) == list(range(400))
    more = frames + [rattled(molecule("H2O"), 0.1, s) for s in range(400, 600)]
    train2, val2 = split_indices(more, 0.2)
    assert set(val) == set(val2) & set(range(400))  # old geometries never move
    assert set(val) <= set(split_indices(frames, 0.3)[1])  # larger fraction only adds
    assert in_validation("f" * 64, 0.5) is False and in_validation("0" * 64, 0.01) is True


def test_energy_reference_linear_fit_recovers_elements():
    rng = np.random.default_rng(0)
    truth = {1: -13.6, 6: -1030.0, 8: -2040.0}
    numbers = [rng.choice([1, 6, 8], size=rng.integers(2, 9)) for _ in range(50)]
    energies = [sum(truth[int(z)] for z in n) for n in numbers]
    fit = fit_energy_reference(numbers, energies, "linear")
    assert fit == pytest.approx(truth, rel=1e-9)
    mean = fit_energy_reference(numbers, energies, "mean")
    assert set(mean) == {1, 6, 8} and len(set(mean.values())) == 1
    kept = fit_energy_reference(numbers, energies, "linear", fixed={1: -13.6})
    assert kept[1] == -13.6 and kept[8] == pytest.approx(-2040.0)


def test_calibration_scale_and_conformal_coverage():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.5, 4000)
    err = 2.0 * sigma * np.abs(rng.normal(size=sigma.size))
    rec = calibrate(sigma[:2000], err[:2000], coverage=0.9)
    assert rec.scale == pytest.approx(2.0, rel=0.05)
    covered = np.mean(err[2000:] <= rec.error_bound(sigma[2000:]))
    assert 0.87 <= covered <= 0.93
    assert rec.sigma_for_error(0.2) == pytest.approx(0.2 / rec.scale)
    assert rec.spearman > 0.5 and rec.to_dict()["n"] == 2000
    np.testing.assert_allclose(frame_force_rmse([np.ones((2, 3))], [np.zeros((2, 3))]), [1.0])


# ------------------------------------------------------------------------------ training
def test_warm_start_loads_previous_member(tmp_path):
    frames = [rattled(molecule("CH3CH2OH"), 0.05, s) for s in range(24)]
    energies, forces = emt_labels(frames)
    model = ModelSpec(**TINY, ensemble_size=2)
    quick = TrainingSpec(max_epochs=2, batch_size=8, val_fraction=0.2, learning_rate=1e-3)
    first = train_member(frames, energies, forces, None, model, quick, seed=0, workdir=tmp_path / "a")
    assert first.metrics["warm_started"] is False and first.metrics["epochs"] == 2
    frozen = TrainingSpec(max_epochs=1, batch_size=8, val_fraction=0.2, learning_rate=1e-12)
    second = train_member(frames, energies, forces, None, model, frozen, seed=1,
                          workdir=tmp_path / "b", init_checkpoint=first.checkpoint)
    assert second.metrics["warm_started"] is True
    probe = [rattled(molecule("CH3CH2OH"), 0.05, 99)]
    a = Ensemble.load([first.checkpoint], [first.sha256], device="cpu").predict(probe)
    b = Ensemble.load([second.checkpoint], [second.sha256], device="cpu").predict(probe)
    np.testing.assert_allclose(a.forces[0], b.forces[0], atol=1e-4)
    assert a.energy[0] == pytest.approx(b.energy[0], abs=1e-4)
    other = ModelSpec(**{**TINY, "n_atom_basis": 8}, ensemble_size=2)
    with pytest.raises(ValueError, match="architecture"):
        train_member(frames, energies, forces, None, other, frozen, seed=1,
                     workdir=tmp_path / "c", init_checkpoint=first.checkpoint)


def test_training_on_periodic_stress_runs(tmp_path):
    cells = [rattled(bulk("Cu", "fcc", a=3.55 + 0.05 * (s % 3), cubic=True), 0.05, s) for s in range(16)]
    energies, forces = emt_labels(cells)
    stresses = []
    for a in cells:
        b = a.copy()
        b.calc = EMT()
        stresses.append(b.get_stress())  # Voigt, ASE sign
    training = TrainingSpec(max_epochs=3, batch_size=4, val_fraction=0.25, stress_weight=10.0)
    result = train_member(cells, energies, forces, stresses, ModelSpec(**TINY), training,
                          seed=0, workdir=tmp_path)
    assert result.metrics["train_stress_mae"] is not None and np.isfinite(result.metrics["train_stress_mae"])
    out = Ensemble.load([result.checkpoint], device="cpu").predict(cells[:2])
    assert out.stress.shape == (2, 3, 3) and np.all(np.isfinite(out.stress))


@pytest.mark.slow
def test_tiny_painn_ensemble_learns_ethanol(tmp_path):
    """M=3 PaiNN members on 300 GFN2 ethanols beat trivial force predictors on held-out data."""
    tblite = pytest.importorskip("tblite.ase")
    calc = tblite.TBLite(method="GFN2-xTB", verbosity=0)

    def label(n, scale, seed):
        frames, energies, forces = [], [], []
        for s in range(n):
            a = rattled(molecule("CH3CH2OH"), scale, seed + s)
            a.calc = calc
            energies.append(a.get_potential_energy())
            forces.append(a.get_forces())
            a.calc = None
            frames.append(a)
        return frames, np.array(energies), forces

    frames, energies, forces = label(300, 0.06, 0)
    test_frames, test_e, test_f = label(60, 0.06, 10_000)
    model = ModelSpec(representation="painn", n_atom_basis=32, n_interactions=2, n_rbf=16,
                      cutoff=4.0, ensemble_size=3)
    training = TrainingSpec(max_epochs=25, batch_size=16, learning_rate=2e-3, patience=8,
                            val_fraction=0.2, bootstrap=True)
    results = [train_member(frames, energies, forces, None, model, training, seed=s,
                            workdir=tmp_path / f"m{s}") for s in range(3)]
    for r in results:
        assert r.metrics["val_force_mae"] < 0.3 and r.metrics["n_val"] > 30
    ens = Ensemble.load([r.checkpoint for r in results], [r.sha256 for r in results], device="cpu")
    pred = ens.predict(test_frames)
    ref = np.concatenate(test_f)
    mae = np.mean(np.abs(np.concatenate(pred.forces) - ref))
    zero_mae = np.mean(np.abs(ref))  # trivial predictor: zero force
    per_atom_mean = np.mean(forces, axis=0)  # trivial predictor: mean training force per atom
    mean_mae = np.mean(np.abs(np.stack(test_f) - per_atom_mean))
    assert mae < 0.2 * min(zero_mae, mean_mae), (mae, zero_mae, mean_mae)  # measured: 0.06 vs 1.5
    e_mae = np.mean(np.abs(pred.energy - test_e))
    assert e_mae < 0.5 * np.mean(np.abs(test_e - np.mean(energies))), e_mae  # measured: 0.055 vs 0.28
    # uncertainty grows away from the training distribution
    far = [rattled(molecule("CH3CH2OH"), 0.25, 20_000 + s) for s in range(20)]
    assert np.median(ens.predict(far).sigma_f) > 2 * np.median(pred.sigma_f)  # measured: 0.74 vs 0.07
    rec = calibrate(pred.sigma_f, frame_force_rmse(pred.forces, test_f))
    assert np.isfinite(rec.scale) and rec.scale > 0
