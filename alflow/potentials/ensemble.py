"""An ensemble of M members evaluated together: mean predictions and force uncertainty.

Members share one neighbour list and one set of pair vectors r_ij per batch; forces and
virials follow from each member's dE/dr_ij. Two ways to run the members:

- ``"loop"``: one member after the other. Without `create_graph` each member's autograd
  graph is freed before the next is built, which keeps the working set small.
- ``"vmap"``: `torch.func.stack_module_state` + `vmap`, one batched call for all members
  (identical architectures only).

Measured here (1 CPU thread, 64 ethanols, M=4 PaiNN-64×3, benchmarks/ensemble_inference.py):
loop 118 ms, vmap 171 ms, four separate single-member passes 132 ms, four SchNetPack
`model(AtomsConverter(...))` passes 210 ms. On a CPU the members' work is memory- and
compute-bound and cannot be shared; sharing saves the neighbour lists (~10%). What did pay
is evaluating each PaiNN member with fewer passes over its pair tensors
(`fast_painn`, used by every `EnergyCore`): 1.5× on inference, 1.4× on attack steps.
``"auto"`` picks loop on CPU and vmap on CUDA, where one batched kernel per op instead of
M should pay off — not measured (no GPU was available).

Uncertainty (M members, geometry with n atoms):
  σ_F² = 1/(M−1) Σ_m [1/(3n) Σ_ij (F̂_ij^(m) − F̄_ij)²]   per geometry,
  u_i  = 1/(M−1) Σ_m ‖F̂_i^(m) − F̄_i‖² / 3             per atom (σ_F² = mean_i u_i),
  σ_E  = standard deviation of member energies (ddof=1).

`predict` returns a `Prediction` (numpy, per geometry); `predict_torch` a
`TorchPrediction` of tensors that stay differentiable in the positions (second order:
∂σ_F²/∂R, forces being gradients) for the adversarial attack.

Members of absolute positions (representation ``"coordinates"``, `Member.uses_positions`)
take the same route without a neighbour list: each core gets R itself and forces are
−∂E/∂R. An ensemble is all of one kind or the other (`uses_positions`); the pair path is
unchanged by their existence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms

from alflow.potentials.graph import Graph, build_graph
from alflow.potentials.model import Member, check_elements, pair_forces, pair_virial


@dataclass(frozen=True, eq=False)
class Prediction:
    """What the ensemble says about B geometries (numpy, float64; eV, Å).

    Per geometry (B,): ``energy`` (member mean), ``energy_std`` (ddof 1), ``sigma_f2``
    [eV²/Å², the frame's force variance σ_F²] and its square root ``sigma_f``; per atom, one
    array per geometry: ``forces`` (n, 3) mean and ``atomic_uncertainty`` u_i (n,)
    [eV²/Å²]. ``stress`` (B, 3, 3) [eV/Å³, NaN where not periodic] when it was asked for;
    ``energy_members`` (M, B) and ``forces_members`` (one (M, n, 3) per geometry) when
    members were asked for.
    """

    energy: np.ndarray
    energy_std: np.ndarray
    sigma_f2: np.ndarray
    forces: list[np.ndarray]
    atomic_uncertainty: list[np.ndarray]
    stress: np.ndarray | None = None
    energy_members: np.ndarray | None = None
    forces_members: list[np.ndarray] | None = None

    @property
    def sigma_f(self) -> np.ndarray:
        return np.sqrt(self.sigma_f2)

    def __len__(self) -> int:
        return len(self.energy)

    @classmethod
    def empty(cls, n_members: int, members: bool = False) -> Prediction:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), [], [],
                   energy_members=np.zeros((n_members, 0)) if members else None,
                   forces_members=[] if members else None)

    @classmethod
    def concatenate(cls, parts: Sequence[Prediction]) -> Prediction:
        """One prediction from consecutive batches (in order)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            energy=np.concatenate([p.energy for p in parts]),
            energy_std=np.concatenate([p.energy_std for p in parts]),
            sigma_f2=np.concatenate([p.sigma_f2 for p in parts]),
            forces=[f for p in parts for f in p.forces],
            atomic_uncertainty=[u for p in parts for u in p.atomic_uncertainty],
            stress=None if first.stress is None else np.concatenate([p.stress for p in parts]),
            energy_members=(None if first.energy_members is None
                            else np.concatenate([p.energy_members for p in parts], axis=1)),
            forces_members=(None if first.forces_members is None
                            else [f for p in parts for f in p.forces_members]),
        )


@dataclass(frozen=True, eq=False)
class TorchPrediction:
    """`Prediction`'s differentiable form for a batch (torch tensors, flat over atoms).

    ``energy`` (B,) mean [float64], ``energy_members`` (M, B), ``energy_std`` (B,),
    ``forces`` (N, 3) mean, ``forces_members`` (M, N, 3), ``sigma_f2`` (B,),
    ``atomic_uncertainty`` (N,), ``idx_m`` (N,) geometry of each atom, ``n_atoms`` (B,),
    ``stress`` (B, 3, 3) mean when asked for.
    """

    energy: torch.Tensor
    energy_members: torch.Tensor
    energy_std: torch.Tensor
    forces: torch.Tensor
    forces_members: torch.Tensor
    sigma_f2: torch.Tensor
    atomic_uncertainty: torch.Tensor
    idx_m: torch.Tensor
    n_atoms: torch.Tensor
    stress: torch.Tensor | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for `device`; "auto" is CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def force_uncertainty(
    forces_members: torch.Tensor, idx_m: torch.Tensor, n_atoms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_F² per geometry (B,), u_i per atom (N,)) from member forces (M, N, 3)."""
    m = forces_members.shape[0]
    if m < 2:
        nan = torch.full((forces_members.shape[1],), float("nan"), dtype=forces_members.dtype,
                         device=forces_members.device)
        return nan.new_full((n_atoms.shape[0],), float("nan")), nan
    dev = forces_members - forces_members.mean(dim=0, keepdim=True)
    u = (dev * dev).sum(dim=(0, 2)) / (3.0 * (m - 1))
    per_graph = u.new_zeros(n_atoms.shape[0]).index_add(0, idx_m, u)
    return per_graph / n_atoms.to(u.dtype), u


# pairs per chunk of attribution's lean second-order path (`Ensemble.variance_gradient`):
# a chunk's (chunk, 3, F) pieces should stay in cache: 5184 water atoms, PaiNN-64x3, 1 thread
# took 44 s CPU / 0.94 GB at 8192 pairs, 50 s / 0.90 GB at 4096, 56 s / 1.46 GB at 32768
ATTRIBUTION_PAIR_CHUNK = 8192
# graphs with more pairs than this are evaluated by the loop strategy through the same lean
# path: one member's energy+forces pass of 1536 water atoms (61,664 pairs) took 0.76 s
# lean vs 1.25 s plain, of 5184 atoms 2.24 s / 0.49 GB vs 5.68 s / 2.4 GB; below it (molecules,
# small cells) the plain fast path stays, as measured and tuned
LEAN_PAIRS = 32768


class Ensemble:
    """M members on one device/dtype; see the module docstring."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        strategy: str = "auto",
    ):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        kinds = {m.uses_positions for m in self.members}
        if len(kinds) > 1:
            names = sorted({m.representation for m in self.members})
            raise ValueError(
                f"cannot mix members of absolute positions and of pair vectors in one "
                f"ensemble (representations {names})"
            )
        self.uses_positions = kinds.pop()
        # axes any member's energy depends on: displacing along the others changes nothing
        # the ensemble (or an analytic oracle of the same coordinates) can see
        self.active_axes = np.logical_or.reduce([m.axes for m in self.members])
        self.device = resolve_device(device)
        self.dtype = dtype
        # neighbour-list cutoff; None when the members need no neighbour list
        self.cutoff = None if self.uses_positions else max(m.cutoff for m in self.members)
        known = set(self.members[0].elements)
        for m in self.members[1:]:
            known &= set(m.elements)
        self.elements = sorted(known)  # an element any member never saw is unknown
        self.reference = torch.tensor(
            np.stack([m.reference_table() for m in self.members]), dtype=torch.float64,
            device=self.device,
        )
        # copies: moving/casting must not change the caller's members
        self.cores = [copy.deepcopy(m.core()).to(self.device, dtype).eval() for m in self.members]
        for core in self.cores:
            core.requires_grad_(False)
        same = all(m.architecture == self.members[0].architecture for m in self.members)
        if strategy == "auto":
            strategy = "vmap" if self.device.type == "cuda" and same else "loop"
        if strategy == "vmap":
            if not same:
                raise ValueError("strategy 'vmap' needs members with identical architectures")
            from torch.func import stack_module_state

            params, buffers = stack_module_state(self.cores)
            self._params = {k: v.detach() for k, v in params.items()}
            self._buffers = {k: v.detach() for k, v in buffers.items()}
            self._base = copy.deepcopy(self.cores[0]).to("meta")
        elif strategy != "loop":
            raise ValueError(f"unknown strategy {strategy!r} (auto, loop or vmap)")
        self.strategy = strategy

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        sha256s: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> Ensemble:
        """Load and hash-verify member checkpoints (hashes given, else from sidecars)."""
        from alflow.potentials.checkpoint import load_member

        sha256s = list(sha256s) if sha256s is not None else [None] * len(paths)
        if len(sha256s) != len(paths):
            raise ValueError(f"{len(paths)} checkpoints but {len(sha256s)} hashes")
        return cls([load_member(p, h) for p, h in zip(paths, sha256s)], **kwargs)

    @property
    def size(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ core evaluation
    def graph(self, atoms_list: Sequence[Atoms], positions: Sequence[np.ndarray] | None = None) -> Graph:
        """Neighbour lists of `atoms_list` on this ensemble's device/dtype (elements checked)."""
        for atoms in atoms_list:
            check_elements(atoms.numbers, self.elements)
        return build_graph(atoms_list, self.cutoff, positions).to(self.device, self.dtype)

    def _member_gradients(
        self, x: torch.Tensor, g: Graph, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual energies (M, B), dE/dx (M, K, 3) and the x each member saw.

        x is the pair vectors r_ij (K = P), or the positions R (K = N) for members of
        absolute positions.
        """
        if self.uses_positions:
            args = (g.numbers, g.idx_m, g.n_atoms)
        else:
            args = (g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms)
        m = self.size
        if self.strategy == "vmap":
            from torch.func import functional_call, vmap

            x_m = x.unsqueeze(0).expand(m, -1, -1)
            if not x_m.requires_grad:
                x_m = x_m.detach().requires_grad_(True)

            def one(params, buffers, r):
                return functional_call(self._base, (params, buffers), (r, *args))

            residual = vmap(one)(self._params, self._buffers, x_m)
            (de,) = torch.autograd.grad(residual.sum(), x_m, create_graph=create_graph)
            return (residual if create_graph else residual.detach()), de, x_m
        # One member at a time: without create_graph each member's graph is freed before
        # the next is built, which keeps the working set small (faster on CPU, measured).
        energies, grads = [], []
        lean = not self.uses_positions and g.idx_i.shape[0] > LEAN_PAIRS
        kw = {"pair_chunk": ATTRIBUTION_PAIR_CHUNK} if lean else {}
        for core in self.cores:
            r = x if x.requires_grad else x.detach().requires_grad_(True)
            e = core(r, *args, **kw)
            (d,) = torch.autograd.grad(e.sum(), r, create_graph=create_graph)
            energies.append(e if create_graph else e.detach())
            grads.append(d)
        return torch.stack(energies), torch.stack(grads), x.expand(m, -1, -1)

    def evaluate(
        self,
        g: Graph,
        positions: torch.Tensor | None = None,
        *,
        stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Member energies (M, B) [float64, eV], forces (M, N, 3), stress (M, B, 3, 3).

        `positions` (N, 3) replaces `g.positions` (the neighbour list is `g`'s). With
        `create_graph` the outputs are differentiable in `positions` (to second order);
        without it they are detached. Stress is σ = (1/V) dE/dε (ASE convention), NaN for
        non-periodic geometries.
        """
        pos = g.positions if positions is None else positions.to(self.device, self.dtype)
        m, n, b = self.size, pos.shape[0], g.n_graphs
        if self.uses_positions:
            x = pos if create_graph else pos.detach()
            with torch.enable_grad():
                residual, de_dpos, pos_m = self._member_gradients(x, g, create_graph)
            out = {"forces": -de_dpos}
        else:
            with torch.enable_grad():
                rij = pos[g.idx_j] - pos[g.idx_i] + g.offsets
                if not create_graph:
                    rij = rij.detach()
                residual, de_drij, rij_m = self._member_gradients(rij, g, create_graph)
            out = {"forces": pair_forces(de_drij, g.idx_i, g.idx_j, n)}
        ref = self.reference[:, g.numbers]  # (M, N)
        ref = ref.new_zeros((m, b)).index_add(1, g.idx_m, ref)
        out["energy"] = residual.to(torch.float64) + ref
        if stress:
            if self.uses_positions:  # dE/dε under R -> (1+ε)R: Σ_i (∂E/∂R_i)_a R_ib
                virial = pair_virial(de_dpos, pos_m, g.idx_m, b)
            else:
                virial = pair_virial(de_drij, rij_m, g.idx_m[g.idx_i], b)
            volume = torch.linalg.det(g.cell).abs()
            periodic = g.pbc.all(dim=1) & (volume > 0)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            s = virial / safe[None, :, None, None]
            out["stress"] = torch.where(periodic[None, :, None, None], s, torch.full_like(s, float("nan")))
        return out

    def variance_gradient(
        self, atoms_list: Sequence[Atoms], *, pair_chunk: int | None = ATTRIBUTION_PAIR_CHUNK,
    ) -> torch.Tensor:
        """∂S/∂R (N, 3) with S = Σ_i u_i over all atoms of `atoms_list`, one member at a time.

        Why: the second-order graph of one member of a 10,000-atom frame is gigabytes; the
        ensemble's at once is M times that. With the member forces F^m known (a first-order
        pass), dS/dF^m = 2/(3(M−1)) (F^m − F̄) — the F̄ term drops out because the
        deviations sum to zero over members — so ∂S/∂R = Σ_m VJP of member m's forces with
        that fixed weight (a Hessian-vector product), and only one member's double-backward
        graph is alive at a time (peak memory / M, for one extra first-order pass).

        Even one member's graph was too much (~1.2 MiB/atom: 12 GB for a 10,000-atom water
        frame, PaiNN-64x3): autograd keeps every pair-sized (P, F) message product of both
        passes. `pair_chunk` (pairs per chunk) runs both passes through fast_painn's lean
        pair path, which stores nothing pair-sized wider than the radial basis and is
        exact to round-off; None takes the plain autograd path (and members fast_painn does
        not cover always do). NaN for M < 2.
        """
        g = self.graph(list(atoms_list))
        pos0 = g.positions.detach()
        m = self.size
        if m < 2:
            return torch.full_like(pos0, float("nan"))
        kw = {} if self.uses_positions or pair_chunk is None else {"pair_chunk": pair_chunk}

        def member_forces(core, pos, create_graph):
            if self.uses_positions:
                e = core(pos, g.numbers, g.idx_m, g.n_atoms)
                (de,) = torch.autograd.grad(e.sum(), pos, create_graph=create_graph)
                return -de
            rij = pos[g.idx_j] - pos[g.idx_i] + g.offsets
            e = core(rij, g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms, **kw)
            (de,) = torch.autograd.grad(e.sum(), rij, create_graph=create_graph)
            return pair_forces(de, g.idx_i, g.idx_j, pos.shape[0])

        with torch.enable_grad():
            forces = torch.stack([
                member_forces(core, pos0.clone().requires_grad_(True), False).detach()
                for core in self.cores
            ])  # (M, N, 3)
        weights = (forces - forces.mean(dim=0, keepdim=True)) * (2.0 / (3.0 * (m - 1)))
        del forces
        total = torch.zeros_like(pos0)
        for k, core in enumerate(self.cores):
            pos = pos0.clone().requires_grad_(True)
            with torch.enable_grad():
                f = member_forces(core, pos, True)
                (gk,) = torch.autograd.grad((weights[k] * f).sum(), pos)
            total += gk
            del f, gk
        return total

    # ------------------------------------------------------------------ public APIs
    def predict(
        self,
        atoms_list: Atoms | Sequence[Atoms],
        *,
        batch_size: int = 64,
        stress: bool | None = None,
        members: bool = False,
    ) -> Prediction:
        """Ensemble predictions in eV / Å for every geometry, batched (see `Prediction`).

        Stress is computed when `stress` is True, or None and a geometry is periodic;
        member energies and forces only with `members`.
        """
        if isinstance(atoms_list, Atoms):
            atoms_list = [atoms_list]
        atoms_list = list(atoms_list)
        if not atoms_list:
            return Prediction.empty(self.size, members)
        if stress is None:
            stress = any(a.pbc.all() for a in atoms_list)
        parts: list[Prediction] = []
        for start in range(0, len(atoms_list), batch_size):
            chunk = atoms_list[start : start + batch_size]
            g = self.graph(chunk)
            out = self.evaluate(g, stress=stress)
            parts.append(self._summarise(g, out, members))
        return Prediction.concatenate(parts)

    def _summarise(self, g: Graph, out: dict[str, torch.Tensor], members: bool) -> Prediction:
        forces = out["forces"].detach()
        energy = out["energy"].detach()
        sigma_f2, u = force_uncertainty(forces, g.idx_m, g.n_atoms)
        np_ = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
        return Prediction(
            energy=np_(energy.mean(0)),
            energy_std=np_(energy.std(0)) if self.size > 1 else np.full(g.n_graphs, np.nan),
            sigma_f2=np_(sigma_f2),
            forces=g.split(np_(forces.mean(0))),
            atomic_uncertainty=g.split(np_(u)),
            stress=np_(out["stress"].detach().mean(0)) if "stress" in out else None,
            energy_members=np_(energy) if members else None,
            forces_members=g.split(np_(forces), dim=1) if members else None,
        )

    def predict_torch(
        self,
        atoms_list: Sequence[Atoms],
        positions: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        create_graph: bool | None = None,
        stress: bool = False,
    ) -> TorchPrediction:
        """Differentiable predictions for a batch of geometries (same or mixed sizes).

        `positions`: (N, 3) tensor of all atoms in order, or one (n_i, 3) tensor per
        geometry; defaults to the Atoms' positions. The neighbour list is rebuilt from the
        detached positions on each call (the cosine cutoff keeps energies smooth across
        list changes). `create_graph` defaults to `positions.requires_grad`.

        Returns a `TorchPrediction` (tensors; ∂(energy, sigma_f2)/∂positions works by
        autograd when `create_graph` is True).
        """
        atoms_list = list(atoms_list)
        if positions is None:
            pos = torch.as_tensor(np.concatenate([a.positions for a in atoms_list]))
        elif isinstance(positions, torch.Tensor):
            pos = positions
        else:
            pos = torch.cat(list(positions), dim=0)
        if create_graph is None:
            create_graph = pos.requires_grad
        sizes = [len(a) for a in atoms_list]
        if pos.shape != (sum(sizes), 3):
            raise ValueError(f"positions have shape {tuple(pos.shape)}, expected ({sum(sizes)}, 3)")
        chunks = np.split(pos.detach().to("cpu", torch.float64).numpy(), np.cumsum(sizes)[:-1])
        g = self.graph(atoms_list, chunks)
        out = self.evaluate(g, pos, stress=stress, create_graph=create_graph)
        sigma_f2, u = force_uncertainty(out["forces"], g.idx_m, g.n_atoms)
        energy = out["energy"]
        return TorchPrediction(
            energy=energy.mean(0),
            energy_members=energy,
            energy_std=energy.std(0) if self.size > 1 else energy[0] * float("nan"),
            forces=out["forces"].mean(0),
            forces_members=out["forces"],
            sigma_f2=sigma_f2,
            atomic_uncertainty=u,
            idx_m=g.idx_m,
            n_atoms=g.n_atoms,
            stress=out["stress"].mean(0) if stress else None,
        )
