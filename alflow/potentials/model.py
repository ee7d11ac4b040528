"""One ensemble member: a SchNetPack model plus the plain data needed to use it.

The network is a stock `schnetpack.model.NeuralNetworkPotential` (PaiNN or SchNet,
`Atomwise` energy, `Forces`), so its state_dict and its exported file are SchNetPack's own.
alflow itself evaluates only the representation and the energy head, from pair vectors
r_ij, and takes forces and virials from dE/dr_ij itself (`pair_forces`, `pair_virial`):
this lets every member share one neighbour list, choose `create_graph` explicitly (the
`Forces` module ties it to `self.training`), and get stress without a strain input.

The per-element energy reference (eV/atom) lives in float64 in the config, not in the
network, and is added back at prediction: the network learns small, well-scaled residuals
and absolute energies (thousands of eV) never pass through float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

MEMBER_FORMAT = "alflow.member/1"
MAX_Z = 100  # size of SchNetPack's nuclear embedding
# ModelSpec fields that define the network (ensemble_size does not)
ARCHITECTURE_KEYS = ("representation", "n_atom_basis", "n_interactions", "n_rbf", "cutoff")


class UnknownElementError(ValueError):
    """A geometry holds an element the model never saw in training."""


def build_model(model_config: dict[str, Any]):
    """A fresh SchNetPack NeuralNetworkPotential from a `ModelSpec.model_dump()`."""
    import schnetpack as spk

    cutoff = float(model_config["cutoff"])
    n_basis = int(model_config["n_atom_basis"])
    radial = spk.nn.GaussianRBF(n_rbf=int(model_config["n_rbf"]), cutoff=cutoff)
    kind = model_config.get("representation", "painn")
    if kind == "painn":
        representation = spk.representation.PaiNN(
            n_atom_basis=n_basis, n_interactions=int(model_config["n_interactions"]),
            radial_basis=radial, cutoff_fn=spk.nn.CosineCutoff(cutoff),
        )
    elif kind == "schnet":
        representation = spk.representation.SchNet(
            n_atom_basis=n_basis, n_interactions=int(model_config["n_interactions"]),
            radial_basis=radial, cutoff_fn=spk.nn.CosineCutoff(cutoff), n_filters=n_basis,
        )
    else:
        raise ValueError(f"unknown representation {kind!r} (painn or schnet)")
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=n_basis, output_key="energy"),
            spk.atomistic.Forces(calc_forces=True, calc_stress=False),
        ],
    )


class EnergyCore(nn.Module):
    """Residual energy per geometry from pair vectors: representation + Atomwise head."""

    def __init__(self, representation: nn.Module, atomwise: nn.Module):
        super().__init__()
        self.representation = representation
        self.atomwise = atomwise

    def forward(self, rij, numbers, idx_i, idx_j, idx_m, n_atoms):  # noqa: D102
        inputs = {
            "_atomic_numbers": numbers, "_Rij": rij, "_idx_i": idx_i, "_idx_j": idx_j,
            "_idx_m": idx_m, "_n_atoms": n_atoms,
        }
        inputs = self.representation(inputs)
        inputs = self.atomwise(inputs)
        return inputs["energy"]


@dataclass
class Member:
    """A SchNetPack model with its JSON-able config (architecture, elements, reference)."""

    model: nn.Module
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cutoff(self) -> float:
        return float(self.config["model"]["cutoff"])

    @property
    def elements(self) -> list[int]:
        return [int(z) for z in self.config["elements"]]

    @property
    def architecture(self) -> dict[str, Any]:
        return {k: self.config["model"][k] for k in ARCHITECTURE_KEYS}

    def core(self) -> EnergyCore:
        """The energy network, sharing this member's parameters."""
        return EnergyCore(self.model.representation, self.model.output_modules[0])

    def reference_table(self) -> np.ndarray:
        """(MAX_Z,) float64 eV/atom reference by atomic number (0 for unseen)."""
        table = np.zeros(MAX_Z)
        for z, e in self.config["energy_reference"].items():
            table[int(z)] = float(e)
        return table


def new_member(
    model_config: dict[str, Any],
    elements: list[int],
    energy_reference: dict[int, float],
    seed: int,
    energy_scale: float = 1.0,
) -> Member:
    """A randomly initialised member; its output layer scaled so initial forces are O(scale)."""
    torch.manual_seed(seed)
    model = build_model(model_config)
    last = model.output_modules[0].outnet[-1]
    with torch.no_grad():
        last.weight.mul_(energy_scale)
        if last.bias is not None:
            last.bias.zero_()
    config = {
        "format": MEMBER_FORMAT,
        "model": dict(model_config),
        "elements": sorted(int(z) for z in elements),
        "energy_reference": {str(int(z)): float(e) for z, e in sorted(energy_reference.items())},
        "seed": int(seed),
    }
    return Member(model=model, config=config)


def check_elements(numbers: np.ndarray | torch.Tensor, known: list[int] | set[int]) -> None:
    """Raise `UnknownElementError` naming every element the model has not been trained on."""
    present = {int(z) for z in np.unique(np.asarray(numbers))}
    unknown = sorted(present - set(known))
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        seen = ", ".join(chemical_symbols[z] for z in sorted(known))
        raise UnknownElementError(
            f"model was not trained on element(s) {names}; it knows only {seen}"
        )


# --------------------------------------------------------------- forces / virial from dE/dr_ij
def pair_forces(de_drij: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """F_k = -dE/dR_k with r_ij = R_j - R_i: sum of dE/dr over pairs with i=k minus j=k.

    `de_drij` is (..., P, 3); the result (..., N, 3). Differentiable (double backward).
    """
    shape = (*de_drij.shape[:-2], n_atoms, 3)
    zeros = de_drij.new_zeros(shape)
    dim = de_drij.dim() - 2
    return zeros.index_add(dim, idx_i, de_drij) - zeros.index_add(dim, idx_j, de_drij)


def pair_virial(
    de_drij: torch.Tensor, rij: torch.Tensor, pair_graph: torch.Tensor, n_graphs: int
) -> torch.Tensor:
    """dE/dε_ab = Σ_pairs (dE/dr_ij)_a (r_ij)_b per geometry (SchNetPack's strain convention).

    `pair_graph` gives the geometry of each pair; result (..., B, 3, 3). The stress is
    this over the cell volume, σ = (1/V) dE/dε: ASE's sign (`calculate_numerical_stress`).
    """
    outer = de_drij.unsqueeze(-1) * rij.unsqueeze(-2)  # (..., P, 3, 3)
    zeros = outer.new_zeros((*outer.shape[:-3], n_graphs, 3, 3))
    return zeros.index_add(outer.dim() - 3, pair_graph, outer)


def energy_forces(
    core: nn.Module, g, *, create_graph: bool = False, stress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One member on a `Graph`: residual energies (B,), forces (N, 3), dE/dε (B, 3, 3) or None."""
    with torch.enable_grad():
        rij = (g.positions[g.idx_j] - g.positions[g.idx_i] + g.offsets).detach().requires_grad_(True)
        energy = core(rij, g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms)
        (de_drij,) = torch.autograd.grad(energy.sum(), rij, create_graph=create_graph)
    forces = pair_forces(de_drij, g.idx_i, g.idx_j, g.positions.shape[0])
    virial = pair_virial(de_drij, rij, g.idx_m[g.idx_i], g.n_graphs) if stress else None
    return energy, forces, virial
