"""Carving: minimum-image neighbours, whole molecules, H caps, clash guard, dedupe."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.geometry import get_distances
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from alflow.geometry import atoms_hash
from alflow.sampling.carving import (
    CarveOptions,
    CarveRejected,
    carve_cluster,
    carve_clusters,
    dedupe_clusters,
)
from alflow.sampling.selection import structure_distance

VALENCE = {"H": 1, "C": 4, "O": 2, "Si": 4}
# bond cutoffs = 1.2 × covalent radius sum (the carving default), per element pair
BOND_CUTOFFS = {("H", "H"): 0.744, ("C", "H"): 1.284, ("C", "C"): 1.824, ("O", "H"): 1.164,
                ("Si", "O"): 2.124, ("Si", "H"): 1.704, ("O", "O"): 1.584, ("Si", "Si"): 2.664}


def water_box(n_side: int = 4, density: float = 0.997, seed: int = 7) -> Atoms:
    """n_side³ randomly oriented waters on a grid, no intermolecular contact < 1.5 Å."""
    rng = np.random.default_rng(seed)
    h2o = molecule("H2O")
    h2o.positions -= h2o.positions[0]
    n = n_side**3
    length = (n * 18.015 / 6.02214076e23 / density * 1e24) ** (1 / 3)
    cell = np.eye(3) * length
    placed = np.zeros((0, 3))
    for k in range(n):
        grid = (np.array(np.unravel_index(k, (n_side,) * 3)) + 0.5) * length / n_side
        for _ in range(200):
            pos = grid + Rotation.random(random_state=rng).apply(h2o.positions)
            if not len(placed) or get_distances(pos, placed, cell, True)[1].min() > 1.5:
                break
        placed = np.vstack([placed, pos])
    return Atoms("OH2" * n, positions=placed, cell=cell, pbc=True)


def polyethylene(repeats: int = 12, vacuum: float = 12.0) -> Atoms:
    """A periodic all-trans (CH2)n chain along z (C–C 1.54 Å, C–H 1.09 Å)."""
    half = 1.275  # half the 2.55 Å repeat along the chain
    dx = np.sqrt(1.54**2 - half**2)
    hx, hy = 1.09 * np.cos(np.radians(53.5)), 1.09 * np.sin(np.radians(53.5))
    unit = [("C", (0, 0, 0)), ("H", (-hx, hy, 0)), ("H", (-hx, -hy, 0)),
            ("C", (dx, 0, half)), ("H", (dx + hx, hy, half)), ("H", (dx + hx, -hy, half))]
    cell = Atoms([s for s, _ in unit], positions=[p for _, p in unit],
                 cell=[vacuum, vacuum, 2 * half], pbc=True)
    cell.positions += [vacuum / 2, vacuum / 2, 0.3]
    return cell.repeat((1, 1, repeats))


def quartz(reps: int = 3) -> Atoms:
    """alpha-quartz (P3_221), a periodic SiO2 network."""
    return crystal(["Si", "O"], basis=[(0.4697, 0, 2 / 3), (0.4135, 0.2669, 0.7857667)],
                   spacegroup=154, cellpar=[4.9134, 4.9134, 5.4052, 90, 90, 120]
                   ).repeat((reps, reps, reps))


def coordination(atoms: Atoms) -> np.ndarray:
    i = neighbor_list("i", atoms, BOND_CUTOFFS)
    return np.bincount(i, minlength=len(atoms))


def assert_no_clash(atoms: Atoms, limit: float = 0.7) -> None:
    assert pdist(atoms.positions).min() >= limit


def assert_normal_valence(atoms: Atoms) -> None:
    symbols = atoms.get_chemical_symbols()
    got = coordination(atoms)
    wrong = [(k, s, int(g)) for k, (s, g) in enumerate(zip(symbols, got)) if g != VALENCE[s]]
    assert not wrong, f"atoms with wrong valence (index, element, neighbours): {wrong}"


@pytest.fixture(scope="module")
def box() -> Atoms:
    return water_box()


def test_water_cluster_across_boundary_matches_interior_carve(box: Atoms) -> None:
    radius = 4.5
    length = box.cell[0, 0]
    # put molecule m's O 0.3 Å from the x=0 face, with an H pointing out of the cell
    oh_x = np.array([min(box.positions[3 * m + 1, 0], box.positions[3 * m + 2, 0])
                     - box.positions[3 * m, 0] for m in range(len(box) // 3)])
    m = int(np.argmin(oh_x))
    centre = 3 * m
    edge = box.copy()
    edge.positions += [0.3 - box.positions[centre, 0], 0, 0]
    edge.wrap()
    assert np.linalg.norm(edge.positions[centre + 1 : centre + 3] - edge.positions[centre],
                          axis=1).max() > 5  # the molecule really straddles the boundary
    interior = edge.copy()
    interior.positions += length / 2 - interior.positions[centre]
    interior.wrap()

    a = carve_cluster(edge, centre, radius)
    b = carve_cluster(interior, centre, radius)

    assert a.source_indices[0] == centre and a.n_caps == 0
    assert sorted(a.source_indices) == sorted(b.source_indices)
    order_a, order_b = np.argsort(a.source_indices), np.argsort(b.source_indices)
    rel_a = a.atoms.positions[order_a] - a.atoms.positions[0]
    rel_b = b.atoms.positions[order_b] - b.atoms.positions[0]
    np.testing.assert_allclose(rel_a, rel_b, atol=1e-8)
    assert (a.atoms.positions[:, 0] < 0).any()  # atoms from across the face, unwrapped
    np.testing.assert_allclose(a.atoms.positions[0], edge.positions[centre])

    # every atom within the radius (minimum image) is in the cluster
    _, d = get_distances(edge.positions[centre], edge.positions, edge.cell, True)
    assert set(np.flatnonzero(d[0] <= radius)) <= set(a.source_indices)
    # whole molecules: each source molecule complete, each H 0.96 Å from an O in the cluster
    molecules = np.array(a.source_indices) // 3
    assert (np.bincount(molecules)[np.unique(molecules)] == 3).all()
    cluster = a.atoms
    o_pos = cluster.positions[cluster.numbers == 8]
    h_pos = cluster.positions[cluster.numbers == 1]
    oh = np.linalg.norm(h_pos[:, None] - o_pos[None], axis=2)
    assert (oh.min(axis=1) < 1.2).all()
    assert ((oh < 1.2).sum(axis=0) == 2).all()
    assert cluster.info == {"charge": 0, "multiplicity": 1}
    assert not cluster.pbc.any() and a.content_hash == atoms_hash(cluster)
    assert a.source_hash == atoms_hash(edge)


def test_water_every_oxygen_gives_a_clash_free_whole_cluster(box: Atoms) -> None:
    result = carve_clusters(box, range(0, len(box), 3), 4.0, frame_index=5)
    assert not result.rejected and len(result.clusters) == len(box) // 3
    for c in result.clusters:
        assert_no_clash(c.atoms)
        assert_normal_valence(c.atoms)
        assert c.source_frame == 5 and len(c.source_indices) == len(c.atoms)


def butane_box(seed: int = 3) -> Atoms:
    """8 randomly oriented butanes in a periodic 14 Å box, molecule 0 across the x face."""
    rng = np.random.default_rng(seed)
    butane = molecule("trans-butane")
    butane.positions -= butane.positions.mean(axis=0)
    length = 14.0
    placed = np.zeros((0, 3))
    for k in range(8):
        grid = (np.array(np.unravel_index(k, (2, 2, 2))) + 0.5) * length / 2
        for _ in range(200):
            pos = grid + Rotation.random(random_state=rng).apply(butane.positions)
            if not len(placed) or get_distances(pos, placed, np.eye(3) * length,
                                                True)[1].min() > 2.0:
                break
        placed = np.vstack([placed, pos])
    box = Atoms(butane.get_chemical_symbols() * 8, positions=placed,
                cell=np.eye(3) * length, pbc=True)
    box.positions -= [box.positions[0, 0] - 0.2, 0, 0]
    box.wrap()
    return box


def test_finite_molecules_are_kept_whole_and_unwrapped() -> None:
    box = butane_box()
    radius = 3.0
    c = carve_cluster(box, 0, radius)
    molecules = np.array(c.source_indices) // 14
    assert c.n_caps == 0 and (np.bincount(molecules)[np.unique(molecules)] == 14).all()
    assert np.linalg.norm(c.atoms.positions - c.atoms.positions[0], axis=1).max() > radius
    assert (c.atoms.positions[:, 0] < 0).any()  # molecule 0 unwrapped across x = 0
    assert_normal_valence(c.atoms)
    # above max_fragment_atoms a finite molecule is cut at the radius and capped instead
    cut = carve_cluster(box, 0, radius, options=CarveOptions(max_fragment_atoms=10))
    assert cut.n_caps > 0 and len(cut.atoms) < len(c.atoms)
    assert_normal_valence(cut.atoms)


def test_polyethylene_piece_is_capped_alkane() -> None:
    chain = polyethylene()
    result = carve_clusters(chain, range(len(chain)), 4.0, dedupe_tol=None)
    assert len(result.clusters) == len(chain)
    for c in result.clusters:
        atoms = c.atoms
        n_c = int((atoms.numbers == 6).sum())
        assert 4 <= n_c < 12
        assert int((atoms.numbers == 1).sum()) == 2 * n_c + 2  # CnH2n+2
        assert c.n_caps == 2 and c.n_dropped_caps == 0
        assert_normal_valence(atoms)
        assert_no_clash(atoms)
        caps = np.flatnonzero(np.array(c.source_indices) == -1)
        assert (atoms.numbers[caps] == 1).all()
        d = np.linalg.norm(atoms.positions[caps][:, None] - atoms.positions[None], axis=2)
        d[np.arange(len(caps)), caps] = np.inf
        np.testing.assert_allclose(d.min(axis=1), 1.09, atol=1e-9)


def test_silica_clusters_are_saturated_with_h_caps() -> None:
    silica = quartz()
    result = carve_clusters(silica, range(len(silica)), 4.0, dedupe_tol=None)
    assert len(result.clusters) == len(silica)
    for c in result.clusters:
        assert c.n_caps > 0 and c.n_dropped_caps == 0
        assert_normal_valence(c.atoms)
        assert_no_clash(c.atoms)
        assert c.atoms.info["multiplicity"] == 1  # SiO2 + H caps: even electron count
        # no geminal caps aimed at one dropped site (the bridge rule takes that atom in)
        assert pdist(c.atoms.positions[c.atoms.numbers == 1]).min() > 1.5
    # caps sit at the standard X–H length from the atom they saturate
    c = result.clusters[0]
    caps = np.flatnonzero(np.array(c.source_indices) == -1)
    d = np.linalg.norm(c.atoms.positions[caps][:, None] - c.atoms.positions[None], axis=2)
    d[np.arange(len(caps)), caps] = np.inf
    partner = c.atoms.numbers[d.argmin(axis=1)]
    expected = np.where(partner == 14, 1.48, 0.96)
    np.testing.assert_allclose(d.min(axis=1), expected, atol=1e-9)


def test_extra_shell_still_saturated() -> None:
    silica = quartz()
    result = carve_clusters(silica, [0, 3], 4.0, options=CarveOptions(extra_shell=True),
                            dedupe_tol=None)
    plain = carve_clusters(silica, [0, 3], 4.0, dedupe_tol=None)
    for c, p in zip(result.clusters, plain.clusters, strict=True):
        assert len(c.atoms) > len(p.atoms)
        assert_normal_valence(c.atoms)


def test_symmetry_equivalent_centres_are_duplicates() -> None:
    silica = quartz()
    si = np.flatnonzero(silica.numbers == 14)
    o = np.flatnonzero(silica.numbers == 8)
    result = carve_clusters(silica, [si[0], si[7], o[0], o[11]], 4.0)
    assert [c.centre for c in result.clusters] == [si[0], o[0]]
    assert dict(result.rejected) == {
        si[7]: f"duplicate of the cluster around atom {si[0]}",
        o[11]: f"duplicate of the cluster around atom {o[0]}",
    }
    # with the distance test off, only exact (hash) duplicates would go
    assert len(carve_clusters(silica, [si[0], si[7]], 4.0, dedupe_tol=None).clusters) == 2


def test_moved_rotated_permuted_cluster_is_duplicate_but_different_one_is_not(box) -> None:
    rng = np.random.default_rng(0)
    a = carve_cluster(box, 0, 4.0)
    b = carve_cluster(box, 30, 4.0)
    moved = a.atoms[rng.permutation(len(a.atoms))]
    moved.positions = Rotation.random(random_state=rng).apply(moved.positions) + [3.0, -1.0, 7.0]
    moved_rec = carve_cluster(moved, 0, 100.0)  # a non-periodic frame carves to itself
    assert moved_rec.content_hash != a.content_hash
    assert structure_distance(a.atoms, moved) < 1e-8

    noisy = a.atoms.copy()
    noisy.positions += rng.normal(0, 0.05, noisy.positions.shape)
    noisy_rec = carve_cluster(noisy, 0, 100.0)

    unique, duplicates = dedupe_clusters([a, b, moved_rec, noisy_rec], tol=0.01)
    assert unique == [a, b, noisy_rec]  # identity: records compare by identity
    assert [(d.centre, o.centre) for d, o in duplicates] == [(moved_rec.centre, a.centre)]
    assert duplicates[0][1] is a


def test_clashing_cap_is_dropped_and_real_clash_rejects() -> None:
    chain = polyethylene()
    radius = 3.8
    base = carve_cluster(chain, 0, radius)
    assert base.n_caps == 2
    # a Ne atom (kept out of the bond graph) 0.25 Å beyond where one cap H goes
    cap = int(np.flatnonzero(np.array(base.source_indices) == -1)[0])
    d = np.linalg.norm(base.atoms.positions - base.atoms.positions[cap], axis=1)
    d[cap] = np.inf
    capped = base.atoms.positions[int(d.argmin())]
    direction = (base.atoms.positions[cap] - capped) / 1.09
    ne = Atoms("Ne", positions=[capped + 1.34 * direction])
    blocked_frame = chain + ne
    _, to_ne = get_distances(chain.positions[0], ne.positions, chain.cell, True)
    assert to_ne[0, 0] < radius  # so Ne is part of the cluster
    options = CarveOptions(pair_tolerance={("Ne", "C"): 0.5, ("Ne", "H"): 0.5})
    blocked = carve_cluster(blocked_frame, 0, radius, options=options)
    assert blocked.n_dropped_caps == 1 and blocked.n_caps == 1
    assert len(blocked.atoms) == len(base.atoms)  # one cap out, Ne in
    assert_no_clash(blocked.atoms)

    squashed = chain.copy()
    squashed.positions[1] = squashed.positions[0] + [0.3, 0.0, 0.0]  # H on top of its C
    with pytest.raises(CarveRejected, match="closer than 0.7"):
        carve_cluster(squashed, 0, 3.0)
    far = 36  # a C 15 Å along the chain, untouched
    result = carve_clusters(squashed, [0, far], 3.0)
    assert [c.centre for c in result.clusters] == [far]
    assert [r[0] for r in result.rejected] == [0] and "closer than" in result.rejected[0][1]


def test_charge_and_multiplicity_rules() -> None:
    radical = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])
    c = carve_cluster(radical, 0, 5.0)
    assert (c.atoms.info["charge"], c.atoms.info["multiplicity"]) == (0, 2)
    c = carve_cluster(radical, 0, 5.0, options=CarveOptions(charge=-1))
    assert (c.atoms.info["charge"], c.atoms.info["multiplicity"]) == (-1, 1)
    with pytest.raises(CarveRejected, match="multiplicity 1 is impossible"):
        carve_cluster(radical, 0, 5.0, options=CarveOptions(multiplicity=1))


def test_metal_contacts_are_not_capped() -> None:
    # a Na–O contact inside a bond cutoff is cut without a cap, and counted
    frame = Atoms("NaOH2", positions=[[0, 0, 0], [2.2, 0, 0], [2.8, 0.76, 0], [2.8, -0.76, 0]])
    c = carve_cluster(frame, 0, 1.0, options=CarveOptions(max_fragment_atoms=1))
    assert c.atoms.get_chemical_formula() == "Na" and c.n_caps == 0 and c.n_uncapped == 1


def test_radius_must_fit_in_the_cell(box: Atoms) -> None:
    with pytest.raises(ValueError, match="half the cell width"):
        carve_cluster(box, 0, box.cell[0, 0] / 2)


def _edge_water_with_h_pulled_out(box: Atoms, length: float) -> tuple[Atoms, int]:
    """The frame with a water near the edge of a 4 Å sphere around atom 0 whose first H is
    pulled radially outward to `length` Å from its O, so the O is inside and the H outside."""
    frame = box.copy()
    d = frame.get_distances(0, range(0, len(frame), 3), mic=True, vector=True)
    r = np.linalg.norm(d, axis=1)
    k = int(np.flatnonzero((r > 3.0) & (r < 3.6))[0])
    h = 3 * k + 1
    u = d[k] / r[k]
    frame.positions[h] = frame.positions[0] + d[k] + u * length
    frame.wrap()
    return frame, h


def test_a_stretched_o_h_stays_bonded_and_the_cluster_is_closed_shell(box: Atoms) -> None:
    """Adversarial attacks stretch O–H past the bond rule (1.22 Å > 1.164 Å): the H goes
    with its oxygen, not off on its own leaving an OH radical (seen as SCF failures)."""
    frame, h = _edge_water_with_h_pulled_out(box, 1.22)
    assert frame.get_distance(0, h, mic=True) > 4.0  # outside the sphere: kept only as a partner
    cluster = carve_cluster(frame, 0, 4.0)
    symbols = cluster.atoms.get_chemical_symbols()
    assert h in cluster.source_indices
    assert symbols.count("H") == 2 * symbols.count("O")
    assert cluster.atoms.info["multiplicity"] == 1
    # without the rule the same frame gives a radical: the test can tell
    plain = carve_cluster(frame, 0, 4.0, options=CarveOptions(lone_h_tolerance=None))
    assert h not in plain.source_indices and plain.atoms.info["multiplicity"] == 2


def test_a_dissociated_h_is_not_bonded_to_anything() -> None:
    """Two waters 3.3 Å apart in a 12 Å box; the outer one's H pulled out to 1.9 Å from its
    O (beyond 1.5·(r_O + r_H) = 1.46 Å): a dissociated H is not a bond partner."""
    h2o = molecule("H2O")
    h2o.positions -= h2o.positions[0]
    far = h2o.copy()
    far.positions += [3.3, 0.0, 0.0]
    far.positions[1] = [3.3 + 1.9, 0.0, 0.0]  # pulled radially away from the first water
    frame = h2o + far
    frame.set_cell(np.eye(3) * 12.0)
    frame.pbc = True
    frame.positions += 6.0
    near = carve_cluster(frame, 0, 4.0)
    assert 4 not in near.source_indices and near.atoms.info["multiplicity"] == 2
    stretched = frame.copy()
    stretched.positions[4] = stretched.positions[3] + [1.22, 0.0, 0.0]  # 1.22 Å: still its H
    assert 4 in carve_cluster(stretched, 0, 4.0).source_indices
