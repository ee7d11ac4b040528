"""Adversarial attacks on the ensemble's uncertainty (Schwalbe-Koda, Tan & Gómez-Bombarelli,
Nat Commun 12, 5104, 2021).

Why: MD finds uncertain geometries only as fast as thermal motion reaches them. An attack
climbs the ensemble's force variance directly, weighted by how likely the geometry is,
so it finds plausible geometries the model is unsure about in tens of gradient steps.

Loss of a displacement δ of a seed X (n atoms):

    L(δ) = p(X+δ) · σ_F²(X+δ),   p(X) = exp(−Ē(X)/kT) / Q,   Q = Σ_train exp(−E/kT)

with per-atom energies relative to the lowest training energy per atom (Ē_pa = Ē/n − e_min,
e_k = E_k/n_k − e_min), in log space:

    log p = −Ē_pa/kT − logsumexp_k(−e_k/kT)

We ascend **log L = log p + log σ_F²**, not L. Same maximiser and, per seed, the same
gradient direction up to a positive factor (∇log L = ∇L/L); but L underflows (p ~ e^(−E/kT)
for E of eV and kT of tens of meV) and its scale varies by orders of magnitude between
seeds and along a path, whereas Adam on log L behaves the same for every seed. The
paper's objective is L itself; Adam is nearly invariant to a slowly varying gradient
scale, so the paths stay close where L does not underflow.

Algorithm (per seed, all seeds in one ensemble pass per step): δ₀ ~ N(0, init_std²)
(along the ensemble's `active_axes` only: all three except for field models of fewer);
`steps` Adam steps (lr = `learning_rate`) on −log L; after each step remove δ's rigid
translation and (non-periodic, ≥ 2 atoms) linearised rigid rotation about the seed (the
loss is invariant to them, so they would only waste the displacement budget; a single atom
keeps everything) when `remove_rigid`; then clamp each atom's |δ_i| to `max_displacement`.
The point of highest L along the path (δ₀ … δ_steps) is returned: Adam oscillates near a
maximum and along the clamp, so an earlier iterate often wins (5 of 8 in the water test).

Batching: Adam is elementwise and seeds do not interact, so one batch of seeds gives the
same paths as separate attacks (tested). Measured (benchmarks/attack_cost.py, ethanol,
M=4 PaiNN-64, 1 CPU thread): 32 ms per step for one seed (per-op overhead), 5.5 ms per
seed·step at 64 seeds (5.9× cheaper). A large batch is memory-bound on the pair tensors;
SchNetPack's own PaiNN forward, whose (P, 576) filter costs several extra passes under
double autograd, gave 7–8.5 ms (3–4×) — see `alflow.potentials.fast_painn`.

kT: a per-atom energy scale. The prior adds −Ē_pa/kT, so a rise of kT per atom above the
training minimum costs one e-fold of L, while σ_F² can grow by orders of magnitude.
Measured on water (3 tiny PaiNN members trained on 80 rattles, 0.04 Å; training energies
per atom: std 0.045, range 0.23 eV/atom; 8 seeds, 30 Adam steps, lr 0.03, clamp 0.3 Å;
tests/test_adversarial.py): kT = 0.1 eV/atom raised σ_F² ×225 (median, min ×1.9) at
+0.06–0.3 eV/atom; kT ≤ 0.01 *lowered* σ_F² (×0.8: the attack buys probability by
relaxing into the well, max |δ| 0.06 Å); kT = 1 eV/atom (the spec default) ran to the
clamp (σ_F² ×300–1000, +0.8–1 eV/atom), relying on `max_displacement` to stay physical.
Start from kT ≈ 2× the standard deviation of the training energies per atom.

Gradients need second-order autograd (σ_F² depends on forces, themselves −∂E/∂R);
`Ensemble.predict_torch(create_graph=True)` provides it and tests check it against central
finite differences in float64. Periodic seeds: the neighbour list is rebuilt each step by
`predict_torch`, positions are wrapped into the cell on output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from ase import Atoms

from alflow.sampling.base import Candidate
from alflow.spec import AdversarialSampler

if TYPE_CHECKING:
    from alflow.potentials.ensemble import TorchPrediction


def log_partition(train_energies_per_atom: np.ndarray, kT: float) -> tuple[float, float]:
    """(e_min, log Q): the per-atom reference energy and logsumexp(−(e − e_min)/kT)."""
    e = np.asarray(train_energies_per_atom, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    if e.size == 0:
        raise ValueError("adversarial attack needs at least one finite training energy per atom")
    e_min = float(e.min())
    z = -(e - e_min) / kT
    log_q = float(np.log(np.sum(np.exp(z - z.max()))) + z.max())
    return e_min, log_q


@dataclass(frozen=True, eq=False)
class AttackLoss:
    """log L = log p + log σ_F² per seed (B,), its parts, and the ensemble's prediction."""

    log_loss: torch.Tensor
    log_p: torch.Tensor
    sigma_f2: torch.Tensor  # float64
    prediction: TorchPrediction


def log_loss(
    ensemble, seeds: Sequence[Atoms], positions: torch.Tensor, *, kT: float, e_min: float,
    log_q: float, create_graph: bool | None = None,
) -> AttackLoss:
    """log L, log p and σ_F² of all seeds at `positions` (N, 3), with the ensemble's outputs.

    Differentiable in `positions` (second order) when `create_graph` (default: whether
    `positions` requires grad).
    """
    out = ensemble.predict_torch(seeds, positions, create_graph=create_graph)
    n = out.n_atoms.to(torch.float64)
    e_pa = out.energy.to(torch.float64) / n - e_min
    log_p = -e_pa / kT - log_q
    sigma_f2 = out.sigma_f2.to(torch.float64)
    log_l = log_p + torch.log(sigma_f2.clamp_min(1e-300))
    return AttackLoss(log_l, log_p, sigma_f2, out)


def _rigid_basis(x0: np.ndarray, periodic: bool) -> np.ndarray | None:
    """Orthonormal basis (k, n·3) of rigid motions of x0 (translations; rotations if finite)."""
    n = len(x0)
    if n < 2:
        return None
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = 1.0
        vecs.append(t.ravel())
    if not periodic:
        c = x0 - x0.mean(axis=0)
        for a in range(3):
            axis = np.zeros(3)
            axis[a] = 1.0
            vecs.append(np.cross(axis, c).ravel())
    m = np.stack(vecs)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    keep = s > 1e-8 * max(s.max(), 1.0)  # a linear molecule has two rotations, not three
    return vt[keep]


def _project(delta: torch.Tensor, bases: list[np.ndarray | None], slices: list[slice],
             max_disp: float, remove_rigid: bool) -> None:
    """In place: drop rigid components (per seed), then clamp each atom's |δ_i|."""
    with torch.no_grad():
        if remove_rigid:
            for basis, s in zip(bases, slices):
                if basis is None:
                    continue
                b = torch.as_tensor(basis, dtype=delta.dtype)
                d = delta[s].reshape(-1)
                delta[s] = (d - b.T @ (b @ d)).reshape(-1, 3)
        norm = delta.norm(dim=1, keepdim=True)
        scale = torch.clamp(max_disp / norm.clamp_min(1e-300), max=1.0)
        delta.mul_(scale)


def attack(
    ensemble,
    seeds: Sequence[Atoms],
    settings: AdversarialSampler,
    *,
    train_energies_per_atom: np.ndarray,
    rng_seed: int,
    batch_size: int | None = None,
) -> list[Candidate]:
    """Attack every seed (`settings.attacks_per_seed` times from different δ₀); one
    candidate per attack.

    `train_energies_per_atom`: labelled energies per atom (eV/atom) of the training set,
    for Q and the per-atom reference e_min (composition-specific: use one system's
    training set). `batch_size` seeds go through the ensemble together (None: all).
    Candidate ``info``: ``attack`` (index), ``delta`` (n×3 list, Å), ``max_delta``,
    ``sigma_f2_initial``/``log_p_initial`` (the seed), ``sigma_f2_last``/``log_loss_last``
    (the final Adam iterate), ``log_loss`` (returned point), ``best_step``, ``steps``,
    ``kept`` ("last" or "best"), ``kT_eV``.
    """
    seeds = list(seeds)
    jobs = [(k, s) for k, s in enumerate(seeds) for _ in range(settings.attacks_per_seed)]
    if not jobs:
        return []
    e_min, log_q = log_partition(train_energies_per_atom, settings.kT_eV)
    rng = np.random.default_rng(rng_seed)
    # draw every attack's δ₀ up front: results do not depend on batch_size. Only along
    # the axes the ensemble sees: δ elsewhere gets no gradient, yet would use up the clamp
    # and make two attacks that reached the same point look like different structures
    axes = np.asarray(ensemble.active_axes, dtype=float)
    deltas0 = [rng.normal(0.0, settings.init_std, (len(s), 3)) * axes for _, s in jobs]
    size = len(jobs) if batch_size is None else max(1, int(batch_size))
    out: list[Candidate] = []
    for b in range(0, len(jobs), size):
        part = jobs[b : b + size]
        out.extend(_attack_batch(ensemble, part, deltas0[b : b + size], settings, e_min, log_q, first=b))
    return out


def _attack_batch(ensemble, jobs: list[tuple[int, Atoms]], deltas0: list[np.ndarray],
                  settings: AdversarialSampler, e_min: float, log_q: float,
                  first: int) -> list[Candidate]:
    atoms = [s for _, s in jobs]
    sizes = [len(a) for a in atoms]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slices = [slice(int(s), int(s + n)) for s, n in zip(starts, sizes)]
    x0 = torch.as_tensor(np.concatenate([a.positions for a in atoms]), dtype=torch.float64)
    bases = [_rigid_basis(a.positions, bool(a.pbc.any())) for a in atoms]
    kw = dict(kT=settings.kT_eV, e_min=e_min, log_q=log_q)

    initial = log_loss(ensemble, atoms, x0, create_graph=False, **kw)
    sigma0 = initial.sigma_f2.detach().numpy()
    log_p0 = initial.log_p.detach().numpy()

    delta = torch.as_tensor(np.concatenate(deltas0), dtype=torch.float64).clone()
    _project(delta, bases, slices, settings.max_displacement, settings.remove_rigid)
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=settings.learning_rate)

    nb = len(jobs)
    best_l = np.full(nb, -np.inf)
    best_step = np.zeros(nb, dtype=int)
    best_delta = [d.copy() for d in deltas0]
    best_stats: list[dict[str, Any]] = [{} for _ in range(nb)]

    def consider(step: int, res: AttackLoss, d: np.ndarray) -> np.ndarray:
        ll = res.log_loss.detach().numpy()
        sig = res.sigma_f2.detach().numpy()
        lp = res.log_p.detach().numpy()
        en = res.prediction.energy.detach().to(torch.float64).numpy()
        u = res.prediction.atomic_uncertainty.detach().to(torch.float64).numpy()
        for j in range(nb):
            if np.isfinite(ll[j]) and ll[j] > best_l[j]:
                best_l[j], best_step[j] = ll[j], step
                best_delta[j] = d[slices[j]].copy()
                best_stats[j] = {
                    "sigma_f2": float(sig[j]), "log_p": float(lp[j]),
                    "energy": float(en[j]), "u": u[slices[j]].copy(),
                }
        return ll

    for step in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        res = log_loss(ensemble, atoms, x0 + delta, create_graph=True, **kw)
        consider(step, res, delta.detach().numpy())
        (-res.log_loss.sum()).backward()  # seeds are independent: one sum, per-seed grads
        opt.step()
        _project(delta.data, bases, slices, settings.max_displacement, settings.remove_rigid)
    final = log_loss(ensemble, atoms, x0 + delta.detach(), create_graph=False, **kw)
    last_ll = consider(settings.steps, final, delta.detach().numpy())

    cands = []
    for j, (parent, seed) in enumerate(jobs):
        if not best_stats[j]:  # no finite loss anywhere: report the last point as is
            best_delta[j] = delta.detach().numpy()[slices[j]].copy()
            best_step[j] = settings.steps
            best_stats[j] = {"sigma_f2": float(final.sigma_f2[j]), "log_p": float(final.log_p[j]),
                             "energy": float(final.prediction.energy[j]),
                             "u": final.prediction.atomic_uncertainty.detach().to(torch.float64).numpy()[slices[j]]}
        d = best_delta[j]
        a = seed.copy()
        a.calc = None
        a.positions = seed.positions + d
        if a.pbc.any():
            a.wrap()
        st = best_stats[j]
        cands.append(Candidate(
            atoms=a, parent=parent, relation="adversarial", step=int(best_step[j]),
            sigma_f2=st["sigma_f2"], sigma_f2_initial=float(sigma0[j]), energy_mean=st["energy"],
            log_p=st["log_p"], atomic_uncertainty=np.asarray(st["u"]),
            info={
                "attack": first + j, "delta": d.tolist(),
                "max_delta": float(np.linalg.norm(d, axis=1).max()) if len(d) else 0.0,
                "sigma_f2_initial": float(sigma0[j]), "log_p_initial": float(log_p0[j]),
                "sigma_f2_last": float(final.sigma_f2[j]), "log_loss_last": float(last_ll[j]),
                "log_loss": float(best_l[j]), "best_step": int(best_step[j]), "steps": settings.steps,
                "kept": "last" if best_step[j] == settings.steps else "best", "kT_eV": settings.kT_eV,
            },
        ))
    return cands
