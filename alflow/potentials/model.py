"""One ensemble member: a network plus the plain data needed to use it.

The network is a stock `schnetpack.model.NeuralNetworkPotential` (PaiNN or SchNet,
`Atomwise` energy, `Forces`), so its state_dict and its exported file are SchNetPack's own.
alflow itself evaluates only the representation and the energy head, from pair vectors
r_ij, and takes forces and virials from dE/dr_ij itself (`pair_forces`, `pair_virial`):
this lets every member share one neighbour list, choose `create_graph` explicitly (the
`Forces` module ties it to `self.training`), and get stress without a strain input.

The per-element energy reference (eV/atom) lives in float64 in the config, not in the
network, and is added back at prediction: the network learns small, well-scaled residuals
and absolute energies (thousands of eV) never pass through float32.

Representation ``"coordinates"`` is not a SchNetPack model: `CoordinateField`, an
external-field model E = Σ_i MLP(R_i) on absolute coordinates, for the analytic toy
potentials (a lone atom has no neighbours, so a pair-based model cannot tell two places
apart). It is its own core and takes positions instead of pair vectors
(`uses_positions`); `energy_forces` and the `Ensemble` dispatch on that, forces being
−∂E/∂R directly. It has no neighbour list, no cutoff and no SchNetPack export.
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
# ModelSpec fields that define the network (ensemble_size does not), per representation
ARCHITECTURE_KEYS = ("representation", "n_atom_basis", "n_interactions", "n_rbf", "cutoff")
FIELD_ARCHITECTURE_KEYS = ("representation", "n_atom_basis", "n_interactions", "coordinates")
POSITION_REPRESENTATIONS = frozenset({"coordinates"})  # models of R itself, not of r_ij
AXES = "xyz"


def uses_positions(model_config: dict[str, Any]) -> bool:
    """Whether the representation is a function of absolute positions (no neighbour list)."""
    return model_config.get("representation", "painn") in POSITION_REPRESENTATIONS


def architecture(model_config: dict[str, Any]) -> dict[str, Any]:
    """The `ModelSpec` fields that define this representation's network (JSON-normalised)."""
    if uses_positions(model_config):
        arch = {k: model_config[k] for k in FIELD_ARCHITECTURE_KEYS if k != "coordinates"}
        arch["coordinates"] = [str(a) for a in model_config.get("coordinates", AXES)]
        return arch
    return {k: model_config[k] for k in ARCHITECTURE_KEYS}


class UnknownElementError(ValueError):
    """A geometry holds an element the model never saw in training."""


class CoordinateField(nn.Module):
    """E = Σ_i MLP(R_i[axes]): an external field on absolute Cartesian coordinates.

    `n_layers` hidden layers of `n_hidden` SiLU units (smooth, so forces and the second
    derivatives the adversarial attack needs are smooth too; unbounded, so the energy can
    keep rising on steep walls). One MLP for all elements: the per-element energy
    reference (in the member config) is the only element dependence. Inputs are the
    coordinates in Å, unscaled. The axes are architecture (config), not weights.
    """

    uses_positions = True

    def __init__(self, axes: list[int], n_hidden: int, n_layers: int):
        super().__init__()
        self.axes = [int(a) for a in axes]
        layers: list[nn.Module] = []
        n_in = len(self.axes)
        for _ in range(n_layers):
            layers += [nn.Linear(n_in, n_hidden), nn.SiLU()]
            n_in = n_hidden
        layers.append(nn.Linear(n_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, positions, numbers, idx_m, n_atoms):
        per_atom = self.net(positions[..., self.axes]).squeeze(-1)
        return per_atom.new_zeros(n_atoms.shape[0]).index_add(0, idx_m, per_atom)


def build_model(model_config: dict[str, Any]):
    """A fresh network from a `ModelSpec.model_dump()`: a SchNetPack
    NeuralNetworkPotential (painn, schnet) or a `CoordinateField` (coordinates)."""
    kind = model_config.get("representation", "painn")
    if kind == "coordinates":
        axes = [AXES.index(a) for a in model_config.get("coordinates", AXES)]
        return CoordinateField(axes, int(model_config["n_atom_basis"]), int(model_config["n_interactions"]))
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
        raise ValueError(f"unknown representation {kind!r} (painn, schnet or coordinates)")
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

    uses_positions = False

    def __init__(self, representation: nn.Module, atomwise: nn.Module, fast: bool = True):
        super().__init__()
        self.representation = representation
        self.atomwise = atomwise
        from alflow.potentials import fast_painn  # imports SchNetPack: only when a core is built

        # same function, fewer passes over the pair tensors (fast_painn); False: SchNetPack's forward
        self.fast = fast and fast_painn.supports(representation)
        self._fast_representation = fast_painn.painn_representation

    def forward(self, rij, numbers, idx_i, idx_j, idx_m, n_atoms, pair_chunk: int | None = None):
        """Energies (B,); `pair_chunk`: fast_painn's lean pair path (constant weights only),
        ignored by representations that take SchNetPack's forward."""
        inputs = {
            "_atomic_numbers": numbers, "_Rij": rij, "_idx_i": idx_i, "_idx_j": idx_j,
            "_idx_m": idx_m, "_n_atoms": n_atoms,
        }
        if self.fast:
            inputs["scalar_representation"] = self._fast_representation(
                self.representation, rij, numbers, idx_i, idx_j, pair_chunk=pair_chunk)
        else:
            inputs = self.representation(inputs)
        inputs = self.atomwise(inputs)
        return inputs["energy"]


@dataclass
class Member:
    """A network with its JSON-able config (architecture, elements, reference)."""

    model: nn.Module
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def representation(self) -> str:
        return str(self.config["model"].get("representation", "painn"))

    @property
    def uses_positions(self) -> bool:
        """True for models of absolute positions (no neighbour list, no cutoff)."""
        return uses_positions(self.config["model"])

    @property
    def has_schnetpack_form(self) -> bool:
        return not self.uses_positions

    @property
    def cutoff(self) -> float | None:
        """Neighbour-list cutoff in Å; None for models of absolute positions."""
        return None if self.uses_positions else float(self.config["model"]["cutoff"])

    @property
    def elements(self) -> list[int]:
        return [int(z) for z in self.config["elements"]]

    @property
    def architecture(self) -> dict[str, Any]:
        return architecture(self.config["model"])

    @property
    def axes(self) -> np.ndarray:
        """(3,) bool: the Cartesian axes the energy depends on (all three for pair
        models; a field model sees only its `coordinates`)."""
        seen = architecture(self.config["model"]).get("coordinates", AXES)
        return np.array([a in seen for a in AXES])

    def core(self) -> nn.Module:
        """The energy network, sharing this member's parameters: an `EnergyCore` of pair
        vectors, or the `CoordinateField` itself (`core.uses_positions` tells which)."""
        if isinstance(self.model, CoordinateField):
            return self.model
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
    last = model.net[-1] if isinstance(model, CoordinateField) else model.output_modules[0].outnet[-1]
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
    """One member on a `Graph`: residual energies (B,), forces (N, 3), dE/dε (B, 3, 3) or None.

    A core of positions (`uses_positions`) gets R and F = −∂E/∂R; its dE/dε is
    Σ_i (∂E/∂R_i)_a R_ib, the derivative under R → (1+ε)R (positions scaled with the cell).
    """
    if getattr(core, "uses_positions", False):
        with torch.enable_grad():
            pos = g.positions.detach().requires_grad_(True)
            energy = core(pos, g.numbers, g.idx_m, g.n_atoms)
            (de_dpos,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        virial = pair_virial(de_dpos, pos.detach(), g.idx_m, g.n_graphs) if stress else None
        return energy, -de_dpos, virial
    with torch.enable_grad():
        rij = (g.positions[g.idx_j] - g.positions[g.idx_i] + g.offsets).detach().requires_grad_(True)
        energy = core(rij, g.numbers, g.idx_i, g.idx_j, g.idx_m, g.n_atoms)
        (de_drij,) = torch.autograd.grad(energy.sum(), rij, create_graph=create_graph)
    forces = pair_forces(de_drij, g.idx_i, g.idx_j, g.positions.shape[0])
    virial = pair_virial(de_drij, rij, g.idx_m[g.idx_i], g.n_graphs) if stress else None
    return energy, forces, virial
