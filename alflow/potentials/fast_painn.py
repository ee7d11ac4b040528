"""SchNetPack's PaiNN energy, re-arranged to make fewer passes over the pair tensors.

Why: with many geometries per batch (adversarial attacks, batched MD walkers) the pair
tensors no longer fit in cache and an ensemble pass is memory-bound. The largest of them is
PaiNN's filter, (P, 3·F·T) for P pairs, F features and T interactions — for 64 ethanols,
4608 × 576 floats. Stock PaiNN builds it with one dense layer, multiplies it by the cosine
cutoff and splits it per interaction; under autograd (forces) and double autograd (the
attack's ∂σ_F²/∂R) each of those steps costs several more full passes over it (the
cutoff product's backward, the split's backward `cat`). Measured (1 CPU thread, 64
ethanols, M=4 PaiNN-64×3): those passes were 60–70 % of an attack step.

Here, exactly the same function with fewer pair-sized passes:
- the cutoff is folded into the radial basis, exact because the dense layer is affine:
  (φ·A + b)·f_c = [φ·f_c, f_c] · [A; b], so the filter is never multiplied by f_c;
- each message part (q, r̂_ij, μ_j) of each interaction gets its own (P, n_rbf+1) × (n_rbf+1, F)
  product and its own gather, so nothing pair-sized is split (and `cat` in backward);
- gathers are `index_select`, whose backward is `index_add` rather than `index_put`;
- μ starts at zero, so the first block's μ_j term (zero) is not computed.
Everything else (embedding, interaction and mixing networks, the atom-wise head) is
SchNetPack's own modules with the member's own parameters: the weights, the checkpoint and
what SchNetPack loads are unchanged; only the evaluation order differs (equal to float
round-off; tests/test_fast_painn.py). Measured: a batch-64 attack step 1.4× and a 64-ethanol
ensemble energy+forces pass 1.5× faster than SchNetPack's forward (benchmarks/attack_cost.py,
benchmarks/ensemble_inference.py).

Applies to the configuration alflow builds (GaussianRBF/any radial basis, cosine or any
cutoff, no shared filters, no electronic embeddings); `supports` says whether a module is
one; anything else takes SchNetPack's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

import schnetpack.nn as snn
from schnetpack.representation import PaiNN


def supports(representation: nn.Module) -> bool:
    """Whether `representation` is a PaiNN this path reproduces exactly."""
    rep = representation
    return (
        type(rep) is PaiNN
        and not rep.share_filters
        and len(rep.electronic_embeddings) == 0
        and isinstance(rep.filter_net.activation, nn.Identity)
    )


def painn_representation(
    rep: PaiNN, rij: torch.Tensor, numbers: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor
) -> torch.Tensor:
    """Scalar representation q (N, F) of SchNetPack `rep` from pair vectors `rij` (P, 3)."""
    n_atoms = numbers.shape[0]
    f = rep.n_atom_basis
    d_ij = torch.norm(rij, dim=1)
    dir_ij = rij / d_ij[:, None]
    fcut = rep.cutoff_fn(d_ij)[:, None]  # (P, 1)
    basis = torch.cat([rep.radial_basis(d_ij) * fcut, fcut], dim=-1)  # (P, n_rbf + 1)
    weight = torch.cat([rep.filter_net.weight.T, rep.filter_net.bias[None, :]], dim=0)  # (n_rbf+1, 3FT)

    q = rep.embedding(numbers).unsqueeze(1)
    mu = torch.zeros((q.shape[0], 3, f), device=q.device, dtype=q.dtype)
    for t, (interaction, mixing) in enumerate(zip(rep.interactions, rep.mixing)):
        x = interaction.interatomic_context_net(q)  # (N, 1, 3F): parts for q, for r̂_ij, for μ_j
        w = weight[:, 3 * f * t : 3 * f * (t + 1)]

        def message(k: int, w=w, x=x) -> torch.Tensor:
            """Part k of W_ij ∘ x_j (P, 1, F); split per atom, not per pair (no pair-sized cat)."""
            w_ij = basis @ w[:, k * f : (k + 1) * f]
            # index_select: its backward is index_add, cheaper than index_put's
            return w_ij.unsqueeze(1) * torch.index_select(x[..., k * f : (k + 1) * f], 0, idx_j)

        dq = snn.scatter_add(message(0), idx_i, dim_size=n_atoms)
        dmu = message(1) * dir_ij[..., None]
        if t > 0:  # μ starts at zero, so the first block's μ_j term vanishes exactly: skipped
            dmu = torch.addcmul(dmu, message(2), torch.index_select(mu, 0, idx_j))
        dmu = snn.scatter_add(dmu, idx_i, dim_size=n_atoms)
        q, mu = mixing(q + dq, mu + dmu)
    return q.squeeze(1)
