"""Choose which sampled frames go to the oracle, and say why for every frame.

Selection follows DP-GEN: a frame's calibrated uncertainty u (eV/Å) puts it in one of
three buckets, ``accurate`` (u < trust_lo), ``candidate`` (trust_lo ≤ u < trust_hi) or
``failed`` (u ≥ trust_hi, or u not finite). Only candidates can be labelled: accurate frames
teach the model nothing and failed ones are usually unphysical. Candidates are then
deduplicated (against the training set and each other) and capped per generation.
Every input frame gets a `Verdict` with a reason, so the database can answer "why was
this frame not labelled?".

Structural identity (also used to dedupe carved clusters, `alflow.sampling.carving`):

1. exact content hash (`alflow.geometry.atoms_hash`) — the same key the database uses;
2. otherwise a *sorted pair-distance fingerprint*: for each element pair, the sorted list of
   interatomic distances (minimum image where periodic). Two structures are compared only
   if they have the same composition, periodicity, charge and multiplicity; their distance
   is the RMS difference of the fingerprints, in Å (for periodic frames at least the
   largest difference in cell lengths/angle arcs). It is invariant to translation, rotation,
   reflection and atom order, needs no alignment or atom matching (which is fragile for
   near-spherical carved clusters), and gives fixed-length vectors, so farthest-point
   sampling can use the same distance. It is 0 for identical structures and at most
   2 × the optimally aligned RMSD, so every pair within RMSD tol/2 is caught; for random
   noise it is about 0.3–0.8 × RMSD (lower for bigger structures and bigger noise, since
   sorting re-pairs distances), so a tolerance here is looser than the same number as an
   RMSD. Mirror images compare equal, which is what we want
   (an invariant model learns nothing new from an enantiomer). Cost is O(n²) per frame: it
   is meant for molecules, clusters and periodic boxes up to a few thousand atoms.

`minimum_image` and `periodic_widths` live here because the fingerprint and carving both
need them. One-atom non-periodic frames are compared by position: a lone atom has no internal
geometry, and the analytic toy potentials (double well, Müller-Brown) are functions of
the absolute position of their single atom.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms
from scipy.spatial.distance import pdist

from alflow.geometry import atoms_hash, charge_and_multiplicity

Bucket = Literal["accurate", "candidate", "failed"]
Strategy = Literal["random", "farthest_point"]

_BLOCK = 256  # rows per block when building minimum-image distance matrices


# --------------------------------------------------------------------------- similarity


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Rotation/translation/permutation-invariant description of one structure.

    `key`: (sorted atomic numbers, pbc flags, charge, multiplicity): only structures with
    the same key are comparable. `vector`: sorted distances per element pair, concatenated
    in a fixed pair order (same length for every structure with this key). `cell`: cell
    lengths and angle arcs (Å) for periodic structures, zeros otherwise.
    """

    key: tuple
    vector: np.ndarray
    cell: np.ndarray


def periodic_widths(cell: np.ndarray, pbc: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Perpendicular cell widths (Å) along the periodic directions that have a cell vector."""
    from ase.geometry import complete_cell

    cell = np.asarray(cell, float)
    full = complete_cell(cell)
    volume = abs(np.linalg.det(full))
    periodic = np.asarray(pbc, bool) & cell.any(axis=1)
    return np.array([volume / np.linalg.norm(np.cross(full[(k + 1) % 3], full[(k + 2) % 3]))
                     for k in np.flatnonzero(periodic)])


def minimum_image(vectors: np.ndarray, cell: np.ndarray,
                  pbc: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Minimum-image equivalents of difference vectors (…, 3).

    Wrapping fractional coordinates into [−½, ½) is exact for orthogonal cells, and for any
    cell for vectors shorter than half the smallest periodic width (their fractional
    coordinates are inside already). Only the other vectors of skewed cells go through ASE's
    slower Minkowski-reduced search (`ase.geometry.find_mic` would send all of them, since
    some are longer than half a cell).
    """
    from ase.geometry import complete_cell
    from ase.geometry.geometry import general_find_mic

    v = np.asarray(vectors, float)
    cell = np.asarray(cell, float)
    periodic = np.asarray(pbc, bool) & cell.any(axis=1)
    if not periodic.any():
        return v.copy()
    full = complete_cell(cell)
    frac = np.linalg.solve(full.T, v.reshape(-1, 3).T).T
    frac[:, periodic] -= np.floor(frac[:, periodic] + 0.5)
    wrapped = frac @ full
    gram = full @ full.T
    off = np.abs(gram - np.diag(np.diag(gram))) > 1e-10 * np.diag(gram).max()
    if off[periodic].any():  # a periodic vector not orthogonal to the others
        unsure = np.linalg.norm(wrapped, axis=1) >= periodic_widths(cell, pbc).min() / 2
        if unsure.any():
            wrapped[unsure] = general_find_mic(wrapped[unsure], full, periodic)[0]
    return wrapped.reshape(v.shape)


def _pair_distance_matrix(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Full n×n minimum-image distance matrix, built in row blocks to bound memory."""
    n = len(positions)
    out = np.empty((n, n))
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        diff = positions[None, :, :] - positions[start:stop, None, :]
        out[start:stop] = np.linalg.norm(minimum_image(diff, cell, pbc), axis=-1)
    return out


def _cell_descriptor(atoms: Atoms) -> np.ndarray:
    """Cell lengths and angles as arcs at the mean length (Å), zeros if not periodic."""
    if not atoms.pbc.any():
        return np.zeros(6)
    par = np.nan_to_num(atoms.cell.cellpar())
    lengths = par[:3]
    return np.concatenate([lengths, np.radians(par[3:]) * lengths.mean()])


def fingerprint(atoms: Atoms) -> Fingerprint:
    """Sorted per-element-pair distance fingerprint of `atoms` (see module docstring)."""
    numbers = np.asarray(atoms.numbers)
    order = np.argsort(numbers, kind="stable")
    z = numbers[order]
    pos = np.asarray(atoms.positions, float)[order]
    pbc = np.asarray(atoms.pbc, bool)
    charge, mult = charge_and_multiplicity(atoms)
    key = (tuple(int(x) for x in z), tuple(bool(p) for p in pbc), charge, mult)
    n = len(z)
    if n == 1 and not pbc.any():
        # scaled so the RMS over 3 components is the displacement (a lone atom's RMSD)
        return Fingerprint(key, pos[0] * np.sqrt(3.0), np.zeros(6))
    iu, ju = np.triu_indices(n, 1)
    if pbc.any():
        dist = _pair_distance_matrix(pos, atoms.cell.array, pbc)[iu, ju]
    else:
        dist = pdist(pos)  # same (i<j, row-major) order as triu_indices
    code = z[iu] * 256 + z[ju]  # z sorted, so z[iu] <= z[ju]: one code per element pair
    vector = dist[np.lexsort((dist, code))]
    return Fingerprint(key, vector, _cell_descriptor(atoms))


def _distances_to_rows(vectors: np.ndarray, cells: np.ndarray, fp: Fingerprint) -> np.ndarray:
    """Fingerprint distance from `fp` to each row of (vectors, cells) of the same key."""
    if vectors.shape[1]:
        rms = np.sqrt(np.mean((vectors - fp.vector) ** 2, axis=1))
    else:
        rms = np.zeros(len(vectors))
    return np.maximum(rms, np.abs(cells - fp.cell).max(axis=1))


def fingerprint_distance(a: Fingerprint, b: Fingerprint) -> float:
    """Distance (Å) between two fingerprints; infinite if they are not comparable."""
    if a.key != b.key:
        return float("inf")
    return float(_distances_to_rows(b.vector[None, :], b.cell[None, :], a)[0])


def structure_distance(a: Atoms, b: Atoms) -> float:
    """Fingerprint distance (Å) between two structures; infinite if not comparable."""
    return fingerprint_distance(fingerprint(a), fingerprint(b))


class _Group:
    """Fingerprints of one key, stored in amortised-growth arrays for vectorised distances."""

    def __init__(self, width: int):
        self.vectors = np.empty((8, width))
        self.cells = np.empty((8, 6))
        self.labels: list[Hashable] = []

    def append(self, fp: Fingerprint, label: Hashable) -> None:
        n = len(self.labels)
        if n == len(self.vectors):
            self.vectors = np.concatenate([self.vectors, np.empty_like(self.vectors)])
            self.cells = np.concatenate([self.cells, np.empty_like(self.cells)])
        self.vectors[n] = fp.vector
        self.cells[n] = fp.cell
        self.labels.append(label)

    def distances(self, fp: Fingerprint) -> np.ndarray:
        n = len(self.labels)
        return _distances_to_rows(self.vectors[:n], self.cells[:n], fp)


class DuplicateIndex:
    """Reference structures to match new ones against: exact hash, then fingerprint distance.

    Labels are whatever the caller wants back on a match (a frame index, a content hash).
    `tol` is the fingerprint distance (Å) below which two structures are duplicates;
    0 keeps only exact (hash) duplicates.
    """

    def __init__(self, tol: float):
        if tol < 0:
            raise ValueError(f"dedupe tolerance must be >= 0, got {tol}")
        self.tol = float(tol)
        self._hashes: dict[str, Hashable] = {}
        self._groups: dict[tuple, _Group] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def add_hash(self, content_hash: str, label: Hashable) -> None:
        """Register a geometry known only by its content hash (exact matches only)."""
        self._hashes.setdefault(content_hash, label)

    def add(self, label: Hashable, atoms: Atoms | None = None, *,
            content_hash: str | None = None, fp: Fingerprint | None = None) -> None:
        """Register a structure (give `atoms`, or its precomputed hash and fingerprint)."""
        content_hash = content_hash if content_hash is not None else atoms_hash(atoms)
        fp = fp if fp is not None else fingerprint(atoms)
        self.add_hash(content_hash, label)
        group = self._groups.get(fp.key)
        if group is None:
            group = self._groups[fp.key] = _Group(len(fp.vector))
        group.append(fp, label)

    def exact(self, content_hash: str) -> Hashable | None:
        """Label registered under exactly this content hash, or None."""
        return self._hashes.get(content_hash)

    def nearest(self, fp: Fingerprint) -> tuple[Hashable | None, float]:
        """Label of the nearest registered structure with the same key and its distance."""
        group = self._groups.get(fp.key)
        if group is None or not group.labels:
            return None, float("inf")
        d = group.distances(fp)
        k = int(np.argmin(d))
        return group.labels[k], float(d[k])

    def match(self, atoms: Atoms | None = None, *, content_hash: str | None = None,
              fp: Fingerprint | None = None) -> Hashable | None:
        """Label of a duplicate of this structure, or None (hash first, then distance)."""
        content_hash = content_hash if content_hash is not None else atoms_hash(atoms)
        if content_hash in self._hashes:
            return self._hashes[content_hash]
        label, dist = self.nearest(fp if fp is not None else fingerprint(atoms))
        return label if dist < self.tol else None


def find_duplicates(structures: Sequence[Atoms], tol: float,
                    hashes: Sequence[str] | None = None) -> list[int | None]:
    """For each structure, the index of an earlier kept structure it duplicates, or None."""
    index = DuplicateIndex(tol)
    out: list[int | None] = []
    for k, atoms in enumerate(structures):
        h = hashes[k] if hashes is not None else atoms_hash(atoms)
        fp = fingerprint(atoms)
        hit = index.match(content_hash=h, fp=fp)
        out.append(hit)  # type: ignore[arg-type]
        if hit is None:
            index.add(k, content_hash=h, fp=fp)
    return out


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Verdict:
    """What happened to one input frame, and why.

    `duplicate_of`: index of the kept frame this one duplicates; `training_match`: content
    hash of the training geometry it duplicates.
    """

    index: int
    bucket: Bucket
    selected: bool
    reason: str
    uncertainty: float
    content_hash: str
    duplicate_of: int | None = None
    training_match: str | None = None


@dataclass(frozen=True)
class Selection:
    """Verdicts for every input frame (in input order) and the absolute thresholds used."""

    verdicts: tuple[Verdict, ...]
    trust_lo: float
    trust_hi: float

    @property
    def selected(self) -> list[int]:
        """Indices of the frames chosen for labelling, in input order."""
        return [v.index for v in self.verdicts if v.selected]

    def counts(self) -> dict[str, int]:
        """Bucket sizes and number selected (what the generation row records)."""
        out = {"accurate": 0, "candidate": 0, "failed": 0}
        for v in self.verdicts:
            out[v.bucket] += 1
        out["selected"] = sum(v.selected for v in self.verdicts)
        return out


def resolve_thresholds(trust_lo: float, trust_hi: float,
                       thresholds: Literal["absolute", "percentile"] = "absolute",
                       training_uncertainty: Sequence[float] | np.ndarray | None = None,
                       ) -> tuple[float, float]:
    """Absolute (lo, hi) in the uncertainty's units.

    With ``thresholds="percentile"``, trust_lo/trust_hi are percentiles (0–100) of the
    training set's own uncertainties, so the thresholds track how well the model knows
    the data it was trained on instead of a number guessed before the campaign.
    """
    if thresholds == "absolute":
        lo, hi = float(trust_lo), float(trust_hi)
    elif thresholds == "percentile":
        if not 0 <= trust_lo <= 100 or not 0 <= trust_hi <= 100:
            raise ValueError(f"percentiles must lie in [0, 100], got {trust_lo}, {trust_hi}")
        tu = np.asarray(training_uncertainty if training_uncertainty is not None else [], float)
        tu = tu[np.isfinite(tu)]
        if tu.size == 0:
            raise ValueError("percentile thresholds need the training set's uncertainties")
        lo, hi = (float(x) for x in np.percentile(tu, [trust_lo, trust_hi]))
    else:
        raise ValueError(f"thresholds must be 'absolute' or 'percentile', got {thresholds!r}")
    if lo > hi:
        raise ValueError(f"trust_lo ({lo:g}) must not exceed trust_hi ({hi:g})")
    return lo, hi


def assign_buckets(uncertainty: np.ndarray, trust_lo: float, trust_hi: float) -> np.ndarray:
    """Bucket name per frame; a non-finite uncertainty counts as failed."""
    u = np.asarray(uncertainty, float)
    out = np.full(u.shape, "failed", dtype=object)
    finite = np.isfinite(u)
    out[finite & (u < trust_lo)] = "accurate"
    out[finite & (u >= trust_lo) & (u < trust_hi)] = "candidate"
    return out


def _farthest_point(fps: list[Fingerprint], start: np.ndarray, cap: int) -> list[int]:
    """Greedy farthest-point picks (positions in `fps`); `start` = distance to known data.

    Ties (e.g. nothing known yet, or a new composition: infinite distance) go to the
    earliest position, so callers order `fps` by priority.
    """
    mind = start.astype(float).copy()
    members: dict[tuple, list[int]] = {}
    for k, fp in enumerate(fps):
        members.setdefault(fp.key, []).append(k)
    stacks = {key: (np.array(idx), np.stack([fps[k].vector for k in idx]),
                    np.stack([fps[k].cell for k in idx])) for key, idx in members.items()}
    taken = np.zeros(len(fps), bool)
    picks: list[int] = []
    for _ in range(min(cap, len(fps))):
        p = int(np.argmax(np.where(taken, -1.0, mind)))
        picks.append(p)
        taken[p] = True
        idx, vectors, cells = stacks[fps[p].key]
        mind[idx] = np.minimum(mind[idx], _distances_to_rows(vectors, cells, fps[p]))
    return picks


def select_frames(
    frames: Sequence[Atoms],
    uncertainty: Sequence[float] | np.ndarray,
    *,
    trust_lo: float,
    trust_hi: float,
    thresholds: Literal["absolute", "percentile"] = "absolute",
    training_uncertainty: Sequence[float] | np.ndarray | None = None,
    training_frames: Sequence[Atoms] = (),
    training_hashes: Iterable[str] = (),
    dedupe_tol: float = 0.01,
    max_per_generation: int | None = None,
    strategy: Strategy = "farthest_point",
    seed: int = 0,
    hashes: Sequence[str] | None = None,
) -> Selection:
    """Bucket, dedupe and cap `frames`; one `Verdict` per frame.

    Candidates are visited from highest to lowest uncertainty (ties: lower index), so of
    near-identical candidates the most uncertain one is kept. A candidate is a duplicate
    if it matches a training geometry (`training_frames` by hash or fingerprint,
    `training_hashes` by hash only) or an already kept candidate. If more than
    `max_per_generation` remain, `strategy` picks them: ``"farthest_point"`` greedily
    takes the candidate farthest (fingerprint distance) from the training frames and the
    picks so far — spreading labels over configuration space — starting from the most
    uncertain; ``"random"`` draws uniformly with `seed`.
    """
    u = np.asarray(uncertainty, float).reshape(-1)
    if len(u) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(u)} uncertainty values")
    if max_per_generation is not None and max_per_generation < 0:
        raise ValueError(f"max_per_generation must be >= 0, got {max_per_generation}")
    if strategy not in ("random", "farthest_point"):
        raise ValueError(f"strategy must be 'random' or 'farthest_point', got {strategy!r}")
    lo, hi = resolve_thresholds(trust_lo, trust_hi, thresholds, training_uncertainty)
    if hashes is None:
        hashes = [atoms_hash(a) for a in frames]
    buckets = assign_buckets(u, lo, hi)

    n = len(frames)
    reason: list[str] = [""] * n
    duplicate_of: list[int | None] = [None] * n
    training_match: list[str | None] = [None] * n
    for k in range(n):
        if buckets[k] == "accurate":
            reason[k] = "accurate"
        elif buckets[k] == "failed":
            reason[k] = ("failed: above trust_hi" if np.isfinite(u[k])
                         else "failed: uncertainty not finite")

    training = DuplicateIndex(dedupe_tol)
    for h in training_hashes:
        training.add_hash(h, h)
    for atoms in training_frames:
        h = atoms_hash(atoms)
        training.add(h, atoms, content_hash=h)

    kept = DuplicateIndex(dedupe_tol)
    candidates = np.flatnonzero(buckets == "candidate")
    candidates = candidates[np.lexsort((candidates, -u[candidates]))]  # most uncertain first
    unique: list[int] = []
    unique_fps: list[Fingerprint] = []
    to_training: list[float] = []
    for k in candidates:
        k = int(k)
        exact = training.exact(hashes[k])
        if exact is not None:
            reason[k] = "duplicate of training geometry"
            training_match[k] = exact  # type: ignore[assignment]
            continue
        fp = fingerprint(frames[k])
        label, dist = training.nearest(fp)
        if dist < training.tol:
            reason[k] = "duplicate of training geometry"
            training_match[k] = label  # type: ignore[assignment]
            continue
        hit = kept.match(content_hash=hashes[k], fp=fp)
        if hit is not None:
            reason[k] = f"duplicate of frame {hit}"
            duplicate_of[k] = hit  # type: ignore[assignment]
            continue
        kept.add(k, content_hash=hashes[k], fp=fp)
        unique.append(k)
        unique_fps.append(fp)
        to_training.append(dist)

    cap = len(unique) if max_per_generation is None else min(max_per_generation, len(unique))
    if cap == len(unique):
        chosen = set(unique)
    elif strategy == "farthest_point":
        chosen = {unique[p] for p in _farthest_point(unique_fps, np.array(to_training), cap)}
    else:
        pool = sorted(unique)
        rng = np.random.default_rng(seed)
        chosen = {pool[p] for p in rng.choice(len(pool), size=cap, replace=False)}
    for k in unique:
        reason[k] = "selected" if k in chosen else "cap reached"

    verdicts = tuple(
        Verdict(index=k, bucket=buckets[k], selected=reason[k] == "selected", reason=reason[k],
                uncertainty=float(u[k]), content_hash=hashes[k], duplicate_of=duplicate_of[k],
                training_match=training_match[k])
        for k in range(n)
    )
    return Selection(verdicts=verdicts, trust_lo=lo, trust_hi=hi)
