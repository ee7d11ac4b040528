"""Reading and checking geometries from files.

Every geometry that enters a campaign passes `validate_atoms`, so an oracle never spends
CPU hours on a structure that could not be physical (overlapping atoms, NaN coordinates,
an impossible spin state). Errors are `InputError`s that name the file and the frame.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from alflow.errors import InputError, shorten
from alflow.geometry import charge_and_multiplicity

if TYPE_CHECKING:
    from alflow.spec import GeometrySource

MIN_DISTANCE = 0.5  # Å; closer than this no oracle result is meaningful
_SYMBOL = re.compile(r"^[A-Za-z]{1,3}$")


def parse_index(index: str) -> int | slice:
    """An ASE index expression ("0", "-1", ":", "::2", "1:5") as an int or slice."""
    from ase.io.formats import string2index

    try:
        parsed = string2index(index)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, int | slice):
        raise InputError(f"index {index!r} is not a frame number or slice like ':' or '0:10:2'")
    return parsed


def read_geometries(source: GeometrySource, base_dir: Path | str) -> list[Atoms]:
    """Read, check and tag (charge, multiplicity) the frames a `GeometrySource` names.

    ASE reads the file; when no format is given and ASE fails, pymatgen gets a try
    (`format: pymatgen` forces pymatgen). The path is relative to `base_dir`.
    """
    path = Path(base_dir) / source.path
    where = str(path)
    try:
        index = parse_index(source.index)
    except InputError as exc:
        raise InputError(exc.args[0], source=where) from None
    try:
        if path.is_dir():
            raise InputError("is a directory, not a geometry file", source=where)
        if not path.is_file():
            raise InputError("geometry file not found", source=where)
        if path.stat().st_size == 0:
            raise InputError("geometry file is empty", source=where)
    except OSError as exc:  # e.g. a name too long for the file system
        raise InputError(f"cannot read: {exc.strerror or exc}", source=shorten(where, quote=False)) from None
    try:
        frames = _read_frames(path, source.format)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"cannot read: {exc}", source=where) from None

    numbered = list(enumerate(frames))
    try:
        chosen = numbered[index] if isinstance(index, slice) else [numbered[index]]
    except IndexError:
        raise InputError(f"index {source.index!r} is out of range ({len(frames)} frames)",
                         source=where) from None
    if not chosen:
        raise InputError(f"no frames (file has {len(frames)}, index {source.index!r})",
                         source=where)

    for frame_no, atoms in chosen:
        frame_where = f"{where}: frame {frame_no}"
        for key, value in (("charge", source.charge), ("multiplicity", source.multiplicity)):
            if key in atoms.info and int(atoms.info[key]) != value:
                raise InputError(
                    f"the file says {key}={atoms.info[key]} but the spec says {value}; "
                    f"set {key} in the spec's geometry entry",
                    source=frame_where,
                )
            atoms.info[key] = value
        validate_atoms(atoms, frame_where)
    return [atoms for _, atoms in chosen]


def validate_atoms(atoms: Atoms, where: str) -> None:
    """Raise `InputError(…, source=where)` if `atoms` cannot be a physical geometry.

    Checks: not empty; finite positions and cell; real elements (1..118); a periodic cell
    with volume; no two atoms (or an atom and its periodic image) closer than
    `MIN_DISTANCE`; charge and multiplicity possible for the electron count.
    """
    if len(atoms) == 0:
        raise InputError("no atoms", source=where)
    numbers = atoms.numbers
    bad = np.flatnonzero((numbers < 1) | (numbers >= len(chemical_symbols)))
    if bad.size:
        raise InputError(
            f"atom {bad[0]} has atomic number {numbers[bad[0]]}, not a real element "
            f"(dummy 'X' atoms cannot be labelled)",
            source=where,
        )
    if not np.all(np.isfinite(atoms.positions)):
        row = int(np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))[0])
        raise InputError(f"atom {row} has a NaN or infinite coordinate", source=where)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = atoms.cell.array
    if not np.all(np.isfinite(cell)):
        raise InputError("the cell has NaN or infinite entries", source=where)
    if pbc.any():
        _check_cell(cell[pbc], where)
    _check_distances(atoms, where)
    _check_spin(atoms, where)


def _check_cell(vectors: np.ndarray, where: str) -> None:
    """The periodic cell vectors must span a volume (area, length) and not be razor thin."""
    def gram(v: np.ndarray) -> float:
        return float(np.linalg.det(v @ v.T)) if len(v) else 1.0

    size = np.sqrt(max(gram(vectors), 0.0))
    if size < 1e-6:
        what = {1: "length", 2: "area", 3: "volume"}[len(vectors)]
        raise InputError(f"periodic cell has zero {what}", source=where)
    for i in range(len(vectors)):
        others = np.delete(vectors, i, axis=0)
        height = np.sqrt(max(gram(vectors), 0.0) / max(gram(others), 1e-300))
        if height < MIN_DISTANCE:
            raise InputError(
                f"periodic cell is {height:.3g} Å thin along cell vector {i}: atoms would "
                f"overlap their own periodic images",
                source=where,
            )


def _check_distances(atoms: Atoms, where: str) -> None:
    """No two atoms (or an atom and a periodic image, its own included) closer than
    `MIN_DISTANCE`: a k-d tree over the atoms and their images near the cell faces."""
    closest = closest_pair(atoms, MIN_DISTANCE)
    if closest is None:
        return
    a, b, d = closest
    if a == b:
        msg = f"atom {a} is {d:.3f} Å from its own periodic image (cell too small)"
    else:
        sa, sb = atoms.get_chemical_symbols()[a], atoms.get_chemical_symbols()[b]
        msg = f"atoms {a} ({sa}) and {b} ({sb}) are {d:.3f} Å apart"
    raise InputError(f"{msg}; the minimum is {MIN_DISTANCE} Å", source=where)


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """(i <= j, distance) of the closest minimum-image pair nearer than `cutoff`, or None.

    O(N log N) in the number of atoms and independent of the empty space around them:
    ASE's `neighbor_list` bins the whole bounding box, which took 80-150 s for a sparse
    10,000-atom molecule at a 0.5 Å cutoff (and vesin dies of SIGFPE for atoms 1e6 Å
    apart). Periodic axes: positions are wrapped into the cell, and images are added only
    for atoms within `cutoff` of the faces they cross (as many cell shells as `cutoff`
    spans), so every pair within `cutoff` is found once. The periodic cell must have a
    volume (area, length); the non-periodic vectors play no part. The work grows with
    (cutoff / cell height)³: `validate_atoms` refuses cells thinner than the cutoff first.
    """
    from itertools import product

    from scipy.spatial import cKDTree

    positions = np.asarray(atoms.positions, dtype=float)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (i, j, d)

    if not pbc.any():
        wrapped, basis = positions, None
    else:
        basis = _complete_basis(atoms.cell.array, pbc)
        frac = np.linalg.solve(basis.T, positions.T).T
        frac[:, pbc] -= np.floor(frac[:, pbc])
        wrapped = frac @ basis
    tree = cKDTree(wrapped)
    pairs = tree.query_pairs(cutoff, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(wrapped[pairs[:, 0]] - wrapped[pairs[:, 1]], axis=1)
        candidates.append((pairs[:, 0], pairs[:, 1], d))

    if basis is not None:
        heights = 1.0 / np.linalg.norm(np.linalg.inv(basis), axis=0)  # plane spacing per axis
        reach = cutoff / heights  # in fractional units
        shells = [range(-int(np.ceil(r)), int(np.ceil(r)) + 1) if p else range(1)
                  for r, p in zip(reach, pbc)]
        for shift in product(*shells):
            if not any(shift):
                continue
            near = np.ones(len(frac), dtype=bool)
            for k, sk in enumerate(shift):
                if sk > 0:  # the image sits |sk| cells beyond the face at f=1
                    near &= frac[:, k] < reach[k] - (sk - 1)
                elif sk < 0:
                    near &= frac[:, k] > 1 - reach[k] + (-sk - 1)
            owners = np.flatnonzero(near)
            if not len(owners):
                continue
            images = wrapped[owners] + np.asarray(shift, dtype=float) @ basis
            found = cKDTree(images).sparse_distance_matrix(tree, cutoff, output_type="ndarray")
            if len(found):
                candidates.append((owners[found["i"]], found["j"], found["v"]))

    best: tuple[int, int, float] | None = None
    for i, j, d in candidates:
        keep = d < cutoff
        if not keep.any():
            continue
        k = int(np.argmin(np.where(keep, d, np.inf)))
        if best is None or d[k] < best[2]:
            a, b = sorted((int(i[k]), int(j[k])))
            best = (a, b, float(d[k]))
    return best


def _complete_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The periodic cell vectors, completed with unit vectors orthogonal to them along the
    non-periodic axes (where nothing is wrapped, so any such vectors do)."""
    basis = np.array(cell, dtype=float)
    periodic = basis[pbc]
    if len(periodic) < 3:
        _, _, vt = np.linalg.svd(periodic) if len(periodic) else (None, None, np.eye(3))
        complement = vt[len(periodic):]
        for k, row in zip(np.flatnonzero(~pbc), complement):
            basis[k] = row
    return basis


def _check_spin(atoms: Atoms, where: str) -> None:
    """2S = multiplicity − 1 unpaired electrons: same parity as, and at most, the count."""
    charge, mult = charge_and_multiplicity(atoms)
    electrons = int(atoms.numbers.sum()) - charge
    if mult < 1:
        raise InputError(f"multiplicity {mult} must be at least 1", source=where)
    if electrons < 0:
        raise InputError(f"charge {charge} leaves {electrons} electrons", source=where)
    unpaired = mult - 1
    if unpaired % 2 != electrons % 2 or unpaired > electrons:
        hint = "1 (singlet), 3, ..." if electrons % 2 == 0 else "2 (doublet), 4, ..."
        raise InputError(
            f"{atoms.get_chemical_formula()} with charge {charge} has {electrons} electrons, "
            f"which cannot have multiplicity {mult} (try {hint})",
            source=where,
        )


def _read_frames(path: Path, fmt: str | None) -> list[Atoms]:
    """ASE first; pymatgen when no format is given and ASE fails, or for `pymatgen`.

    Raises ValueError with a one-line reason (InputError for an unknown element).
    """
    if fmt == "pymatgen":
        return _read_pymatgen(path)
    try:
        return _read_ase(path, fmt)
    except InputError:
        raise
    except Exception as ase_exc:  # noqa: BLE001 - ASE parsers raise anything
        if fmt is not None:
            raise ValueError(f"not readable as format {fmt!r}: {_describe(ase_exc)}") from None
        try:
            return _read_pymatgen(path)
        except ValueError as pmg_exc:
            raise ValueError(f"ASE: {_describe(ase_exc)}; pymatgen: {pmg_exc}") from None


def _read_ase(path: Path, fmt: str | None) -> list[Atoms]:
    """All frames ASE finds; an unknown element symbol becomes a clear InputError."""
    import ase.io

    try:
        frames = ase.io.read(path, index=":", format=fmt)
    except KeyError as exc:
        key = exc.args[0] if exc.args else None
        if isinstance(key, str) and _SYMBOL.match(key):
            raise InputError(f"unknown element symbol {key!r}", source=str(path)) from None
        raise
    return list(frames) if isinstance(frames, list) else [frames]


def _read_pymatgen(path: Path) -> list[Atoms]:
    """One frame via pymatgen (Structure first, then Molecule); ValueError if neither."""
    from pymatgen.core import Molecule, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    errors = []
    for cls in (Structure, Molecule):
        try:
            obj = cls.from_file(path)
        except Exception as exc:  # noqa: BLE001 - pymatgen parsers raise anything
            errors.append(f"{cls.__name__}: {_describe(exc)}")
            continue
        if not obj.is_ordered:
            raise ValueError("structure has partial occupancies; order it first")
        atoms = Atoms(AseAtomsAdaptor.get_atoms(obj))  # plain Atoms, not MSONAtoms
        # pymatgen fills in charge/spin defaults; only the spec says what they are
        for key in ("charge", "spin_multiplicity", "multiplicity"):
            atoms.info.pop(key, None)
        return [atoms]
    raise ValueError("; ".join(errors))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
