"""Labelled data a campaign starts from (`initial_labels:` in the spec): read, check, hash.

Plain data only (no database): each `LabelFile` holds the frames of one spec entry with
their energies, forces and (periodic frames) stress, the file's sha256 and the method they
were computed at. `create_campaign` records them as labels.

Checks, each an `InputError` naming the file (and frame) and the number that is wrong:
- every frame has a finite energy and finite forces of the right shape (stress is taken
  when the frame is periodic and the file has it);
- units: energies in eV and forces in eV/Å. Three tests, none of which a sane eV data set
  fails: the largest force component (> `MAX_FORCE` eV/Å looks like kcal/mol/Å or kJ/mol/Å),
  the spread of the energy per atom once a per-element reference is fitted
  (> `MAX_SPREAD` eV/atom looks like kcal/mol or kJ/mol), and, where frames of one
  composition lie close to each other, whether the energy differences match the work of the
  forces along the displacement (ΔE ≈ −½(F_a+F_b)·ΔR; a ratio far from 1 means the energy and
  the forces are in different units, e.g. Hartree against eV/Å);
- elements: when the spec also lists initial geometries, a labelled element must occur in
  them (the campaign's model is built for the elements it samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from alflow.errors import InputError

MAX_FORCE = 100.0  # eV/Å: no sane geometry has a larger force component
MAX_SPREAD = 5.0  # eV/atom: residual spread after a per-element energy reference
WORK_RATIO = (0.6, 1.6)  # ΔE / work of the forces, where it can be measured
MAX_STEP = 0.3  # Å: frames closer than this (largest atom displacement) are compared
MIN_PAIRS = 3


@dataclass(frozen=True)
class LabelFile:
    index: int  # position in spec.initial_labels
    path: Path
    sha256: str
    method: object  # "oracle" or spec.ImportedMethod
    atoms: list[Atoms]
    energies: np.ndarray
    forces: list[np.ndarray]
    stresses: list[np.ndarray | None]

    @property
    def imported(self) -> bool:
        return self.method != "oracle"

    def method_record(self) -> dict:
        """The oracle_method row of an imported method (its identity includes the file hash)."""
        import hashlib
        import json

        settings = {"imported": True, "name": self.method.name, "code": self.method.code,
                    "file": self.path.name, "file_sha256": self.sha256}
        sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return {"code": self.method.code[:40], "version": None, "method": self.method.name[:80],
                "basis": None, "settings": settings, "settings_sha256": sha}


def _frame_results(atoms: Atoms, where: str) -> tuple[float, np.ndarray, np.ndarray | None]:
    calc = atoms.calc
    results = {} if calc is None else dict(getattr(calc, "results", {}) or {})
    energy = results.get("energy", results.get("free_energy"))
    if energy is None:
        raise InputError("has no energy (initial_labels need energies and forces)", source=where)
    forces = results.get("forces")
    if forces is None:
        raise InputError("has no forces (initial_labels need energies and forces)", source=where)
    energy = float(np.asarray(energy).reshape(()))
    if not np.isfinite(energy):
        raise InputError(f"energy is {energy} (not a finite number)", source=where)
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise InputError(f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)", source=where)
    if not np.all(np.isfinite(forces)):
        raise InputError("forces hold NaN or infinite values", source=where)
    stress = None
    if atoms.pbc.all() and results.get("stress") is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        s = np.asarray(results["stress"], dtype=np.float64)
        s = voigt_6_to_full_3x3_stress(s) if s.shape == (6,) else s.reshape(3, 3)
        if not np.all(np.isfinite(s)):
            raise InputError("stress holds NaN or infinite values", source=where)
        stress = s
    return energy, forces, stress


def check_units(atoms: list[Atoms], energies: np.ndarray, forces: list[np.ndarray], where: str) -> None:
    """Refuse data whose energies or forces are not plausibly eV and eV/Å (module docstring)."""
    fmax = max(float(np.abs(f).max()) for f in forces)
    if fmax > MAX_FORCE:
        raise InputError(
            f"largest force component is {fmax:.4g}, implausible in eV/Å (limit {MAX_FORCE:g}); "
            "are the forces in kcal/mol/Å or kJ/mol/Å? initial_labels must be in eV and eV/Å",
            source=where)
    residual = per_element_residuals([a.numbers for a in atoms], energies)
    if residual is not None:
        spread = float(np.std(residual))
        if spread > MAX_SPREAD:
            raise InputError(
                f"energies spread by {spread:.4g} eV/atom around a per-element reference, implausible "
                f"in eV (limit {MAX_SPREAD:g}); are they in kcal/mol, kJ/mol or meV? initial_labels "
                "must be in eV and eV/Å", source=where)
    ratio = work_ratio(atoms, energies, forces)
    if ratio is not None and not (WORK_RATIO[0] <= ratio <= WORK_RATIO[1]):
        raise InputError(
            f"energy differences between nearby frames are {ratio:.4g} times the work the forces do "
            f"(expected about 1 when energies are in eV and forces in eV/Å); the energies and the "
            "forces are in different units (e.g. Hartree against eV/Å)", source=where)


def per_element_residuals(numbers: list[np.ndarray], energies: np.ndarray) -> np.ndarray | None:
    """(E − Σ_i e_Z(i)) / n per frame for the least-squares per-element reference e_Z; None
    with fewer frames than elements + 1 (nothing to measure a spread on)."""
    elements = sorted({int(z) for n in numbers for z in n})
    if len(numbers) < len(elements) + 1:
        return None
    counts = np.array([[np.count_nonzero(n == z) for z in elements] for n in numbers], float)
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return (energies - counts @ coef) / counts.sum(axis=1)


def work_ratio(atoms: list[Atoms], energies: np.ndarray, forces: list[np.ndarray]) -> float | None:
    """Least-squares slope of ΔE against W = −½(F_a+F_b)·(R_b−R_a) over pairs of frames of
    one composition and atom order less than `MAX_STEP` Å apart; None with too few pairs."""
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(atoms):
        groups.setdefault(tuple(a.numbers.tolist()), []).append(i)
    de, work = [], []
    for idx in groups.values():
        for ia, a in enumerate(idx):
            for b in idx[ia + 1:]:
                if atoms[a].pbc.any():
                    continue  # displacements across cell images are ambiguous
                d = atoms[b].positions - atoms[a].positions
                if np.linalg.norm(d, axis=1).max() > MAX_STEP:
                    continue
                de.append(energies[b] - energies[a])
                work.append(-0.5 * float(np.sum((forces[a] + forces[b]) * d)))
    de_, w = np.asarray(de), np.asarray(work)
    if len(w) < MIN_PAIRS or float(np.sum(w * w)) <= 0:
        return None
    # pairs where the forces barely work measure noise, not units: keep the informative half
    keep = np.abs(w) >= np.median(np.abs(w))
    if keep.sum() < MIN_PAIRS:
        return None
    return float(np.sum(de_[keep] * w[keep]) / np.sum(w[keep] ** 2))


def read_label_files(spec, base_dir: Path, geometries: list[Atoms], spec_source: str) -> list[LabelFile]:
    """Every `initial_labels` entry of `spec`, read and checked (see module docstring)."""
    from alflow.geometry import sha256_file
    from alflow.structures import read_geometries

    out = []
    known = {int(z) for a in geometries for z in a.numbers}
    for i, src in enumerate(spec.initial_labels):
        field = f"initial_labels[{i}]"
        try:
            frames = read_geometries(src, base_dir)
        except InputError as exc:
            raise InputError(f"field '{field}': {exc}", source=spec_source) from None
        path = Path(base_dir) / src.path
        energies, forces, stresses = [], [], []
        for k, atoms in enumerate(frames):
            e, f, s = _frame_results(atoms, f"{path}: frame {k}")
            energies.append(e)
            forces.append(f)
            stresses.append(s)
        energies_a = np.asarray(energies)
        check_units(frames, energies_a, forces, str(path))
        present = {int(z) for a in frames for z in a.numbers}
        if known and present - known:
            extra = ", ".join(chemical_symbols[z] for z in sorted(present - known))
            seen = ", ".join(chemical_symbols[z] for z in sorted(known))
            raise InputError(f"holds element(s) {extra} that no initial geometry has ({seen}); the "
                             "campaign's model would be trained on elements it never samples",
                             source=str(path))
        clean = []
        for atoms in frames:
            a = atoms.copy()
            a.calc = None
            clean.append(a)
        out.append(LabelFile(i, path, sha256_file(path), src.method, clean, energies_a, forces, stresses))
    return out
