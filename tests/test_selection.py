"""Selection: buckets, thresholds, dedupe against training and each other, per-generation cap."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from alflow.geometry import atoms_hash
from alflow.sampling.selection import (
    DuplicateIndex,
    find_duplicates,
    fingerprint,
    resolve_thresholds,
    select_frames,
    structure_distance,
)

BASE = molecule("CH3CH2OH")
BASE.info.clear()


def perturbed(sigma: float, seed: int, base: Atoms = BASE) -> Atoms:
    atoms = base.copy()
    atoms.positions += np.random.default_rng(seed).normal(0, sigma, atoms.positions.shape)
    return atoms


def moved(atoms: Atoms, seed: int) -> Atoms:
    """Same structure, rotated, translated and with atoms reordered."""
    rng = np.random.default_rng(seed)
    out = atoms[rng.permutation(len(atoms))]
    out.positions = Rotation.random(random_state=rng).apply(out.positions) + rng.normal(0, 5, 3)
    return out


def reasons(selection) -> list[str]:
    return [v.reason for v in selection.verdicts]


def test_buckets_with_absolute_thresholds() -> None:
    frames = [perturbed(0.1, k) for k in range(6)]
    u = [0.01, 0.05, 0.5, 1.0, 2.0, np.nan]
    sel = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0)
    assert [v.bucket for v in sel.verdicts] == [
        "accurate", "candidate", "candidate", "failed", "failed", "failed"]
    assert reasons(sel) == ["accurate", "selected", "selected", "failed: above trust_hi",
                            "failed: above trust_hi", "failed: uncertainty not finite"]
    assert sel.selected == [1, 2]
    assert sel.counts() == {"accurate": 1, "candidate": 2, "failed": 3, "selected": 2}
    assert (sel.trust_lo, sel.trust_hi) == (0.05, 1.0)
    assert [v.index for v in sel.verdicts] == list(range(6))
    assert [v.content_hash for v in sel.verdicts] == [atoms_hash(a) for a in frames]


def test_percentile_thresholds_follow_the_training_set() -> None:
    training_u = np.linspace(0.0, 1.0, 101)
    frames = [perturbed(0.1, k) for k in range(5)]
    sel = select_frames(frames, [0.05, 0.1, 0.5, 0.9, 0.95], trust_lo=10, trust_hi=90,
                        thresholds="percentile", training_uncertainty=training_u)
    assert sel.trust_lo == pytest.approx(0.1) and sel.trust_hi == pytest.approx(0.9)
    assert [v.bucket for v in sel.verdicts] == [
        "accurate", "candidate", "candidate", "failed", "failed"]
    assert resolve_thresholds(50, 100, "percentile", training_u * 3) == pytest.approx((1.5, 3.0))
    with pytest.raises(ValueError, match="training set's uncertainties"):
        resolve_thresholds(10, 90, "percentile", None)
    with pytest.raises(ValueError, match="must not exceed"):
        resolve_thresholds(1.0, 0.5)
    with pytest.raises(ValueError, match="2 frames but 3"):
        select_frames(frames[:2], [0.1, 0.2, 0.3], trust_lo=0, trust_hi=1)


def test_dedupe_against_training_and_each_other() -> None:
    t0, t1 = perturbed(0.05, 100), perturbed(0.05, 101)
    x, y, z = perturbed(0.1, 1), perturbed(0.1, 2), perturbed(0.1, 3)
    frames = [
        t0.copy(),                      # 0 identical to a training geometry
        moved(t1, 7),                   # 1 training geometry, moved/rotated/permuted
        x,                              # 2 near-duplicate of 3, less uncertain
        perturbed(1e-4, 9, base=x),     # 3
        y,                              # 4
        y.copy(),                       # 5 exact copy of 4, same uncertainty
        z,                              # 6 known to the training set by hash only
        t0.copy(),                      # 7 identical to training but accurate
    ]
    u = [0.5, 0.5, 0.3, 0.4, 0.2, 0.2, 0.6, 0.01]
    sel = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, training_frames=[t0, t1],
                        training_hashes=[atoms_hash(z)], dedupe_tol=0.01)
    assert reasons(sel) == [
        "duplicate of training geometry", "duplicate of training geometry",
        "duplicate of frame 3", "selected", "selected", "duplicate of frame 4",
        "duplicate of training geometry", "accurate"]
    assert sel.selected == [3, 4]
    v = sel.verdicts
    assert v[0].training_match == atoms_hash(t0) and v[1].training_match == atoms_hash(t1)
    assert v[6].training_match == atoms_hash(z)
    assert (v[2].duplicate_of, v[5].duplicate_of, v[3].duplicate_of) == (3, 4, None)
    assert not any(v[k].selected for k in (0, 1, 6, 7))

    # tolerance 0: only exact content-hash duplicates are removed
    exact = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, training_frames=[t0, t1],
                          dedupe_tol=0.0)
    assert exact.selected == [1, 2, 3, 4, 6]
    assert reasons(exact)[0] == "duplicate of training geometry"


def test_cap_with_farthest_point_sampling_picks_spread_out_frames() -> None:
    family = [perturbed(0.03, 10 + k) for k in range(4)]  # close to each other, not dupes
    far_b, far_c = perturbed(0.4, 20), perturbed(0.4, 21)
    water = molecule("H2O")
    frames = [*family, far_b, far_c, water]
    u = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1]
    assert min(structure_distance(a, b) for i, a in enumerate(family)
               for b in family[i + 1:]) > 0.01

    sel = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, max_per_generation=4,
                        strategy="farthest_point")
    assert sel.selected == [0, 4, 5, 6]  # most uncertain, then the outliers
    assert reasons(sel) == ["selected", "cap reached", "cap reached", "cap reached",
                            "selected", "selected", "selected"]

    # starting from the training set: frames far from it win over uncertain ones near it
    sel = select_frames(frames[:6], u[:6], trust_lo=0.05, trust_hi=1.0, max_per_generation=2,
                        training_frames=[BASE])
    assert sel.selected == [4, 5]

    random_a = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, max_per_generation=3,
                             strategy="random", seed=4)
    random_b = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, max_per_generation=3,
                             strategy="random", seed=4)
    assert random_a.selected == random_b.selected and len(random_a.selected) == 3
    assert reasons(random_a).count("cap reached") == 4

    none = select_frames(frames, u, trust_lo=0.05, trust_hi=1.0, max_per_generation=0)
    assert none.selected == [] and set(reasons(none)) == {"cap reached"}


def test_every_frame_gets_a_consistent_verdict() -> None:
    rng = np.random.default_rng(5)
    frames = [perturbed(0.1, k % 7) for k in range(30)]  # plenty of exact repeats
    u = rng.uniform(0, 1.5, 30)
    u[3] = np.inf
    sel = select_frames(frames, u, trust_lo=0.2, trust_hi=1.0, max_per_generation=3,
                        training_frames=[frames[0]])
    assert [v.index for v in sel.verdicts] == list(range(30))
    for v in sel.verdicts:
        assert v.reason and v.selected == (v.reason == "selected")
        assert v.selected <= (v.bucket == "candidate")
    assert 0 < len(sel.selected) <= 3
    assert not sel.verdicts[0].selected and not sel.verdicts[7].selected  # training copies


def test_fingerprint_distance_invariances_and_bound() -> None:
    a = perturbed(0.05, 1)
    assert structure_distance(a, moved(a, 3)) < 1e-9
    noisy = perturbed(0.02, 4, base=a)
    rmsd = np.sqrt(((noisy.positions - a.positions) ** 2).sum(axis=1).mean())
    assert 0 < structure_distance(a, noisy) <= 2 * rmsd
    assert structure_distance(a, molecule("H2O")) == np.inf
    charged = a.copy()
    charged.info["charge"] = 1
    assert structure_distance(a, charged) == np.inf
    # lone atoms (analytic toy potentials) are told apart by position
    assert structure_distance(Atoms("H", [[0, 0, 0]]), Atoms("H", [[0.3, 0.4, 0]])) == \
        pytest.approx(0.5)


def test_periodic_fingerprint_uses_minimum_image() -> None:
    rng = np.random.default_rng(2)
    box = Atoms("Ar8", positions=rng.uniform(0, 8, (8, 3)), cell=np.eye(3) * 8, pbc=True)
    shifted = box.copy()
    shifted.positions += [3.7, -2.1, 5.0]
    shifted.wrap()
    assert structure_distance(box, shifted) < 1e-9
    bigger = box.copy()
    bigger.set_cell(np.eye(3) * 8.5)
    assert structure_distance(box, bigger) >= 0.5  # cell lengths differ by 0.5 Å


def test_duplicate_index_and_find_duplicates() -> None:
    a, b = perturbed(0.1, 1), perturbed(0.1, 2)
    assert find_duplicates([a, b, moved(a, 1), a.copy(), moved(b, 2)], 0.01) == \
        [None, None, 0, 0, 1]
    index = DuplicateIndex(0.01)
    index.add("a", a)
    index.add_hash(atoms_hash(b), "b-hash")
    assert index.match(moved(a, 5)) == "a"
    assert index.match(b) == "b-hash" and index.match(moved(b, 5)) is None
    label, dist = index.nearest(fingerprint(perturbed(0.1, 3)))
    assert label == "a" and dist > 0.01
    with pytest.raises(ValueError):
        DuplicateIndex(-1)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True)])
def test_minimum_image_matches_ase_for_skewed_cells(pbc) -> None:
    from ase.geometry import find_mic

    from alflow.sampling.selection import minimum_image

    rng = np.random.default_rng(11)
    cell = np.array([[5.0, 0, 0], [3.9, 4.2, 0], [-1.7, 2.3, 4.4]])  # strongly skewed
    v = rng.uniform(-12, 12, (2000, 3))
    mine = minimum_image(v, cell, pbc)
    ref, ref_len = find_mic(v, cell, pbc)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), ref_len, atol=1e-10)
    # each result differs from the input by a lattice vector of the periodic directions
    frac = np.linalg.solve(cell.T, (mine - v).T).T
    np.testing.assert_allclose(frac, np.rint(frac), atol=1e-9)
    assert np.allclose(frac[:, ~np.array(pbc)], 0)
    box = np.diag([4.0, 5.0, 6.0])
    np.testing.assert_allclose(minimum_image(v, box, pbc), find_mic(v, box, pbc)[0], atol=1e-10)
