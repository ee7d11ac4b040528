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

Lean pair path (``pair_chunk``): the same function again, for second order on large frames.
Autograd keeps every pair-sized (P, F) product a backward needs — per interaction about ten
of them, and under double backward (attribution, ∂S/∂R of the force variance) the
first backward's own; a 10,000-atom water frame (4·10⁵ pairs, F=64) needed ~12 GB for one
member. Every pair-sized tensor of width F is a message W_ij ∘ x_j, W_ij = b_ij·W linear in
the radial basis b_ij (P, n_rbf+1) and x_j per atom, summed onto atoms. `_Aggregate`
computes out[i] = Σ_{p: i} (b_p·W) ∘ x_j(p) over chunks of pairs and saves only b and x;
its derivatives are the same aggregation with i and j swapped (∂/∂x) and `_PairProduct`
((g_i ∘ x_j)·Wᵀ, a (P, n_rbf+1) output: ∂/∂b), whose derivatives are aggregations again;
so every order of derivative is built from these two chunked ops and nothing pair-sized
wider than the basis is ever stored. Exact (equal to float round-off; the chunking only
changes the order of the sums). The filter weight W must be constant (inference,
attribution): training the weights takes the path above.

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


def _aggregate(basis, x, weight, src, dst, n_out: int, chunk: int) -> torch.Tensor:
    """out[dst[p]] += (basis[p] @ weight) * x[src[p]], over chunks of `chunk` pairs.

    basis (P, C_b, nb), x (N_src, C_x, F), weight (nb, F) -> (n_out, C, F), C broadcast.
    """
    c = max(basis.shape[1], x.shape[1])
    out = x.new_zeros((n_out, c, x.shape[2]))
    for s in range(0, basis.shape[0], chunk):
        w = basis[s : s + chunk] @ weight
        out.index_add_(0, dst[s : s + chunk], w * torch.index_select(x, 0, src[s : s + chunk]))
    return out


def _pair_product(g, x, weight, a, b, chunk: int) -> torch.Tensor:
    """out[p] = (g[a[p]] * x[b[p]]) @ weight.T  (P, C, nb), over chunks of pairs."""
    p = a.shape[0]
    c = max(g.shape[1], x.shape[1])
    out = g.new_empty((p, c, weight.shape[0]))
    for s in range(0, p, chunk):
        gx = torch.index_select(g, 0, a[s : s + chunk]) * torch.index_select(x, 0, b[s : s + chunk])
        torch.matmul(gx, weight.T, out=out[s : s + chunk])
    return out


class _Aggregate(torch.autograd.Function):
    """Σ_{p: dst[p] = i} (b_p·W) ∘ x_src(p), differentiable to any order in b and x."""

    @staticmethod
    def forward(ctx, basis, x, weight, src, dst, n_out, chunk):
        ctx.save_for_backward(basis, x, weight, src, dst)
        ctx.chunk = chunk
        return _aggregate(basis, x, weight, src, dst, n_out, chunk)

    @staticmethod
    def backward(ctx, grad):
        basis, x, weight, src, dst = ctx.saved_tensors
        d_basis = d_x = None
        if ctx.needs_input_grad[0]:
            d_basis = _PairProduct.apply(grad, x, weight, dst, src, ctx.chunk)
            d_basis = d_basis.sum_to_size(basis.shape)
        if ctx.needs_input_grad[1]:
            d_x = _Aggregate.apply(basis, grad, weight, dst, src, x.shape[0], ctx.chunk)
            d_x = d_x.sum_to_size(x.shape)
        return d_basis, d_x, None, None, None, None, None


class _PairProduct(torch.autograd.Function):
    """(g_a(p) ∘ x_b(p))·Wᵀ per pair, differentiable to any order in g and x."""

    @staticmethod
    def forward(ctx, g, x, weight, a, b, chunk):
        ctx.save_for_backward(g, x, weight, a, b)
        ctx.chunk = chunk
        return _pair_product(g, x, weight, a, b, chunk)

    @staticmethod
    def backward(ctx, grad):
        g, x, weight, a, b = ctx.saved_tensors
        d_g = d_x = None
        if ctx.needs_input_grad[0]:
            d_g = _Aggregate.apply(grad, x, weight, b, a, g.shape[0], ctx.chunk).sum_to_size(g.shape)
        if ctx.needs_input_grad[1]:
            d_x = _Aggregate.apply(grad, g, weight, a, b, x.shape[0], ctx.chunk).sum_to_size(x.shape)
        return d_g, d_x, None, None, None, None


def painn_representation(
    rep: PaiNN, rij: torch.Tensor, numbers: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
    pair_chunk: int | None = None,
) -> torch.Tensor:
    """Scalar representation q (N, F) of SchNetPack `rep` from pair vectors `rij` (P, 3).

    `pair_chunk`: evaluate every message through the lean pair path (module docstring)
    `pair_chunk` pairs at a time; the filter weights must then not require grad.
    """
    if pair_chunk is not None:
        return _lean_representation(rep, rij, numbers, idx_i, idx_j, int(pair_chunk))
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


def _lean_representation(
    rep: PaiNN, rij: torch.Tensor, numbers: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """`painn_representation` with every message through `_Aggregate` (module docstring)."""
    if chunk < 1:
        raise ValueError(f"pair_chunk must be a positive number of pairs, got {chunk}")
    if torch.is_grad_enabled() and rep.filter_net.weight.requires_grad:
        raise ValueError("the lean pair path needs constant filter weights (requires_grad False)")
    n_atoms = numbers.shape[0]
    f = rep.n_atom_basis
    d_ij = torch.norm(rij, dim=1)
    dir_ij = rij / d_ij[:, None]
    fcut = rep.cutoff_fn(d_ij)[:, None]
    basis = torch.cat([rep.radial_basis(d_ij) * fcut, fcut], dim=-1)[:, None, :]  # (P, 1, nb)
    basis_dir = basis * dir_ij[:, :, None]  # (P, 3, nb): the r̂_ij part folded into the basis
    weight = torch.cat([rep.filter_net.weight.T, rep.filter_net.bias[None, :]], dim=0).detach()

    def agg(b, x, w):
        return _Aggregate.apply(b, x, w, idx_j, idx_i, n_atoms, chunk)

    q = rep.embedding(numbers).unsqueeze(1)
    mu = torch.zeros((q.shape[0], 3, f), device=q.device, dtype=q.dtype)
    for t, (interaction, mixing) in enumerate(zip(rep.interactions, rep.mixing)):
        x = interaction.interatomic_context_net(q)  # (N, 1, 3F)
        w = weight[:, 3 * f * t : 3 * f * (t + 1)]
        dq = agg(basis, x[..., :f], w[:, :f])
        dmu = agg(basis_dir, x[..., f : 2 * f], w[:, f : 2 * f])
        if t > 0:  # μ starts at zero: the first block's μ_j term vanishes exactly
            dmu = dmu + agg(basis, x[..., 2 * f :] * mu, w[:, 2 * f :])
        q, mu = mixing(q + dq, mu + dmu)
    return q.squeeze(1)
