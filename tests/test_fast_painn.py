"""The re-arranged PaiNN evaluation (alflow.potentials.fast_painn) is SchNetPack's PaiNN:
same energies, forces, stress and second-order attack gradients, in float64, for molecules
of several sizes and a periodic cell; configurations it does not reproduce take
SchNetPack's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import schnetpack as spk
import torch
from ase.build import bulk, molecule
from ensemble_helpers import HCO_REF, TINY, rattled

from alflow.potentials import fast_painn
from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import EnergyCore, new_member


def _ensembles(arch, elements, reference):
    """The same members evaluated by the fast path and by SchNetPack's forward."""
    members = [new_member(dict(arch), elements, reference, seed=40 + k) for k in range(3)]
    fast = Ensemble(members, device="cpu", dtype=torch.float64)
    stock = Ensemble(members, device="cpu", dtype=torch.float64)
    for core in stock.cores:
        core.fast = False
    assert all(c.fast for c in fast.cores)
    return fast, stock


def _attack_gradient(ens, frames):
    pos = torch.as_tensor(np.concatenate([a.positions for a in frames])).requires_grad_(True)
    out = ens.predict_torch(frames, pos)
    (grad,) = torch.autograd.grad((out.sigma_f2 + 1e-3 * out.energy).sum(), pos)
    return grad.numpy()


def test_fast_painn_equals_schnetpack_forward_molecules():
    frames = [rattled(molecule(name), 0.08, seed=k) for k, name in enumerate(["CH3CH2OH", "H2O", "CH4", "HCOOH"])]
    fast, stock = _ensembles(TINY, [1, 6, 8], HCO_REF)
    a, b = fast.predict(frames, members=True), stock.predict(frames, members=True)
    np.testing.assert_allclose(a.energy_members, b.energy_members, rtol=0, atol=1e-10)
    for fa, fb in zip(a.forces_members, b.forces_members):
        np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-10)
        assert np.abs(fb).max() > 1e-3  # forces are not trivially zero
    np.testing.assert_allclose(a.sigma_f2, b.sigma_f2, rtol=1e-9, atol=0)
    ga, gb = _attack_gradient(fast, frames), _attack_gradient(stock, frames)
    np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-10 * np.abs(gb).max())
    assert np.abs(gb).max() > 1e-6


def test_fast_painn_equals_schnetpack_forward_periodic_stress():
    # a cell smaller than twice the cutoff: pairs across images, atoms' own images
    cu = rattled(bulk("Cu", "fcc", a=3.6, cubic=True), 0.05, seed=1)
    arch = {**TINY, "cutoff": 4.5}
    fast, stock = _ensembles(arch, [29], {29: -1000.0})
    a, b = fast.predict([cu], stress=True), stock.predict([cu], stress=True)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces[0], b.forces[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.stress, b.stress, rtol=0, atol=1e-12)
    assert np.abs(b.stress).max() > 1e-6


def test_fast_painn_falls_back_to_schnetpack_for_configurations_it_does_not_cover():
    radial = spk.nn.GaussianRBF(n_rbf=8, cutoff=4.0)
    shared = spk.representation.PaiNN(n_atom_basis=8, n_interactions=2, radial_basis=radial,
                                      cutoff_fn=spk.nn.CosineCutoff(4.0), shared_filters=True)
    schnet = spk.representation.SchNet(n_atom_basis=8, n_interactions=2, radial_basis=radial,
                                       cutoff_fn=spk.nn.CosineCutoff(4.0))
    head = spk.atomistic.Atomwise(n_in=8, output_key="energy")
    assert not fast_painn.supports(shared) and not fast_painn.supports(schnet)
    assert not EnergyCore(shared, head).fast and not EnergyCore(schnet, head).fast
    plain = spk.representation.PaiNN(n_atom_basis=8, n_interactions=2, radial_basis=radial,
                                     cutoff_fn=spk.nn.CosineCutoff(4.0))
    assert EnergyCore(plain, head).fast and not EnergyCore(plain, head, fast=False).fast


def test_fast_painn_float32_agrees_with_float64():
    """The production dtype: float32 round-off only (relative 1e-5 of the force scale)."""
    frames = [rattled(molecule("CH3CH2OH"), 0.08, seed=k) for k in range(3)]
    members = [new_member(dict(TINY), [1, 6, 8], HCO_REF, seed=7 + k) for k in range(2)]
    lo = Ensemble(members, device="cpu", dtype=torch.float32).predict(frames)
    hi = Ensemble(members, device="cpu", dtype=torch.float64)
    for core in hi.cores:
        core.fast = False
    hi = hi.predict(frames)
    scale = max(np.abs(f).max() for f in hi.forces)
    for fl, fh in zip(lo.forces, hi.forces):
        np.testing.assert_allclose(fl, fh, rtol=0, atol=1e-4 * scale)


def _member_hvp(core, g, v, pair_chunk):
    """(energy, forces, H·v) of one core by double autograd, through the lean path or not."""
    pos = g.positions.detach().clone().requires_grad_(True)
    rij = pos[g.idx_j] - pos[g.idx_i] + g.offsets
    e = core(rij, g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms, pair_chunk=pair_chunk)
    (de,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
    (hv,) = torch.autograd.grad((v * de).sum(), pos)
    return e.detach(), -de.detach(), hv


def test_lean_pair_path_equals_fast_path_to_second_order():
    """Chunks that do not divide the pair count, one chunk, and pairs across periodic images:
    energies, forces and Hessian-vector products equal to float64 round-off."""
    cu = rattled(bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1)), 0.05, seed=3)
    fast, _ = _ensembles({**TINY, "cutoff": 4.5}, [29], {29: -1000.0})
    g = fast.graph([cu])
    v = torch.as_tensor(np.random.default_rng(0).normal(size=g.positions.shape))
    core = fast.cores[0]
    e0, f0, h0 = _member_hvp(core, g, v, None)
    assert np.abs(f0.numpy()).max() > 1e-3 and np.abs(h0.numpy()).max() > 1e-3
    for chunk in (7, 1000, 10**7):
        e, f, h = _member_hvp(core, g, v, chunk)
        torch.testing.assert_close(e, e0, rtol=0, atol=1e-10)
        torch.testing.assert_close(f, f0, rtol=0, atol=1e-12)
        torch.testing.assert_close(h, h0, rtol=0, atol=1e-10 * h0.abs().max().item())


def test_lean_pair_path_derivatives_pass_gradgradcheck():
    """The two chunked autograd Functions' hand-written derivatives, to second order."""
    water = rattled(molecule("H2O"), 0.05, seed=0)
    fast, _ = _ensembles(dict(TINY, n_atom_basis=4, n_rbf=3), [1, 6, 8], HCO_REF)
    g = fast.graph([water])
    rep = fast.cores[0].representation
    rij = (g.positions[g.idx_j] - g.positions[g.idx_i]).clone().requires_grad_(True)

    def q(r):
        return fast_painn.painn_representation(rep, r, g.numbers, g.idx_i, g.idx_j, pair_chunk=4)

    assert torch.autograd.gradcheck(q, (rij,))
    assert torch.autograd.gradgradcheck(q, (rij,))


def test_lean_pair_path_refuses_trainable_filter_weights():
    water = rattled(molecule("H2O"), 0.05, seed=0)
    member = new_member(dict(TINY), [1, 6, 8], HCO_REF, seed=1)
    core = member.core().double()  # as training sees it: weights require grad
    g = Ensemble([member], device="cpu", dtype=torch.float64).graph([water])
    rij = g.positions[g.idx_j] - g.positions[g.idx_i]
    with pytest.raises(ValueError, match="constant filter weights"):
        core(rij, g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms, pair_chunk=8)
