"""Campaign spec loading: the shipped workflows validate, and every kind of bad input is
one InputError that names the file and the field (or geometry file and frame)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from typer.testing import CliRunner

from alflow.cli import app
from alflow.errors import InputError
from alflow.spec import (
    CampaignSpec,
    GeometrySource,
    load_spec,
    load_spec_text,
    parse_spec,
    spec_json,
    spec_sha256,
)
from alflow.structures import read_geometries, validate_atoms

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
WATER_XYZ = "3\n\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"


def base_spec(geometry: str = "mol.xyz", **geo) -> dict:
    return {
        "name": "t",
        "initial_geometries": [{"path": geometry, **geo}],
        "oracle": {"kind": "pyscf", "method": "HF", "basis": "sto-3g"},
        "samplers": [{"kind": "md", "steps": 10}],
    }


def write_spec(tmp_path: Path, data: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    (tmp_path / "mol.xyz").write_text(WATER_XYZ)
    return tmp_path


def error_of(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


# ------------------------------------------------------------------ shipped workflows
def test_all_expected_workflows_exist():
    names = {p.name for p in WORKFLOWS.glob("*.yaml")}
    assert {"double_well.yaml", "double_well_random.yaml", "ethanol.yaml",
            "water_carving.yaml"} <= names


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda p: p.name)
def test_workflow_validates(path: Path):
    loaded = load_spec(path)
    assert loaded.geometries
    for atoms in loaded.geometries:
        assert {"charge", "multiplicity"} <= set(atoms.info)
    canonical = json.dumps(loaded.spec.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"))
    assert loaded.sha256 == hashlib.sha256(canonical.encode()).hexdigest()


def test_double_well_campaigns_differ_only_in_sampler():
    adv, rnd = (load_spec(WORKFLOWS / f) for f in ("double_well.yaml", "double_well_random.yaml"))
    assert adv.spec.samplers[0].kind == "adversarial" and rnd.spec.samplers[0].kind == "random"
    strip = {"name", "samplers"}
    assert adv.spec.model_dump(exclude=strip) == rnd.spec.model_dump(exclude=strip)
    # every start point is one atom in the deep well (x ≈ -0.93), none past the barrier
    xs = np.array([a.positions[0, 0] for a in adv.geometries])
    assert all(len(a) == 1 for a in adv.geometries)
    assert np.all((xs > -1.2) & (xs < -0.6))


def test_water_box_is_physical():
    box = load_spec(WORKFLOWS / "water_carving.yaml").geometries[0]
    assert box.pbc.all() and len(box) % 3 == 0 and 32 <= len(box) // 3 <= 64
    density = box.get_masses().sum() * 1.66053907e-24 / (box.get_volume() * 1e-24)
    assert 0.9 < density < 1.1
    i, j, d = neighbor_list("ijd", box, 3.0)
    inter = i // 3 != j // 3
    assert d[inter].min() >= 1.5
    oo = inter & (box.numbers[i] == 8) & (box.numbers[j] == 8)
    assert d[oo].min() >= 2.5
    intra = ~inter & (box.numbers[i] != box.numbers[j])  # O-H bonds survive wrapping
    assert intra.sum() == 4 * (len(box) // 3) and np.all((d[intra] > 0.94) & (d[intra] < 0.99))


def test_ethanol_geometries():
    loaded = load_spec(WORKFLOWS / "ethanol.yaml")
    assert len(loaded.geometries) >= 4
    assert all(a.get_chemical_formula() == "C2H6O" for a in loaded.geometries)
    assert loaded.spec.oracle.kind == "pyscf"
    assert {s.kind for s in loaded.spec.samplers} == {"md", "adversarial"}
    assert 3 <= loaded.spec.model.ensemble_size <= 4


# ----------------------------------------------------------------------- spec errors
@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["selection"].__setitem__("trust_lo", -1),
         "field 'selection.trust_lo': Input should be greater than or equal to 0"),
        (lambda d: d["selection"].update(trust_lo=0.5, trust_hi=0.2),
         "field 'selection': trust_lo (0.5) must be below trust_hi (0.2)"),
        (lambda d: d.__setitem__("samplerz", []), "field 'samplerz': unknown field"),
        (lambda d: d["selection"].__setitem__("trust_low", 0.1),
         "field 'selection.trust_low': unknown field (did you mean 'trust_lo'?)"),
        (lambda d: d["samplers"][0].__setitem__("steps", "many"),
         "field 'samplers[0].steps': Input should be a valid integer"),
        (lambda d: d.pop("oracle"), "field 'oracle': Field required"),
        (lambda d: d["oracle"].__setitem__("kind", "vasp"),
         "field 'oracle': unknown kind 'vasp' (one of 'pyscf', 'ase', 'analytic')"),
        (lambda d: d["samplers"][0].pop("kind"), "field 'samplers[0]': needs a 'kind'"),
        (lambda d: d["initial_geometries"][0].__setitem__("index", "every"),
         "field 'initial_geometries[0].index'"),
        (lambda d: d["initial_geometries"][0].__setitem__("multiplicity", 0),
         "field 'initial_geometries[0].multiplicity'"),
        (lambda d: d.__setitem__("version", 2), "field 'version'"),
    ],
)
def test_bad_field_names_file_and_field(spec_dir, mutate, expected):
    data = base_spec()
    data["selection"] = {"trust_lo": 0.05, "trust_hi": 0.5}
    mutate(data)
    path = write_spec(spec_dir, data)
    assert expected in error_of(path)


def test_several_errors_in_one_message(spec_dir):
    data = base_spec()
    data["samplers"][0]["steps"] = 0
    data["oracle"]["basis"] = 3
    message = error_of(write_spec(spec_dir, data))
    assert "2 problems" in message
    assert "field 'samplers[0].steps'" in message and "field 'oracle.basis'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\n  oracle: [1, 2\n", "invalid YAML at line 2, column"),
        ("name: t\noracle:\n\tkind: pyscf\n", "invalid YAML at line 3, column 1"),
        ("name: a\nseed: 1\nname: b\n", "line 3, column 1: duplicate key 'name'"),
        ("- a\n- b\n", "must be a mapping"),
        ("", "the spec is empty"),
    ],
)
def test_bad_yaml(spec_dir, text, expected):
    assert expected in error_of(write_spec(spec_dir, text))


def test_missing_spec_file(tmp_path):
    assert "spec file not found" in error_of(tmp_path / "nope.yaml")


def test_carving_radius_must_fit_cell(tmp_path):
    ase.io.write(tmp_path / "box.extxyz", bulk("Cu", cubic=True).repeat(2))  # 7.2 Å cube
    data = base_spec("box.extxyz")
    data["model"] = {"cutoff": 3.0}
    data["carving"] = {"enabled": True, "radius": 4.0}
    message = error_of(write_spec(tmp_path, data))
    assert "field 'carving.radius'" in message and "half the cell width" in message
    data["carving"]["radius"] = 3.5
    assert load_spec(write_spec(tmp_path, data)).spec.carving_radius == 3.5


# ------------------------------------------------------------------- geometry errors
def extxyz(symbols_positions: list[tuple[str, tuple]], header: str = "") -> str:
    lines = [str(len(symbols_positions)), header]
    lines += [f"{s} {x} {y} {z}" for s, (x, y, z) in symbols_positions]
    return "\n".join(lines) + "\n"


BOX = 'Lattice="10 0 0 0 10 0 0 0 10" pbc="T T T"'
GEOMETRY_CASES = {
    "junk": ("junk.xyz", "this is not a geometry\n", {}, "cannot read"),
    "empty_file": ("empty.xyz", "", {}, "geometry file is empty"),
    "no_atoms": ("none.xyz", "0\n\n", {}, "frame 0: no atoms"),
    "nan": ("nan.xyz", WATER_XYZ + extxyz([("H", (0, 0, "nan")), ("H", (0, 0, 0.74))]), {},
            "frame 1: atom 0 has a NaN or infinite coordinate"),
    "nan_cell": ("nancell.extxyz",
                 extxyz([("H", (0, 0, 0))], 'Lattice="nan 0 0 0 10 0 0 0 10" pbc="T T T"'), {},
                 "frame 0: the cell has NaN or infinite entries"),
    "unknown_element": ("xx.xyz", extxyz([("Xx", (0, 0, 0)), ("H", (0, 0, 1))]), {},
                        "unknown element symbol 'Xx'"),
    "dummy_atom": ("x.xyz", extxyz([("X", (0, 0, 0)), ("H", (0, 0, 1))]), {},
                   "atom 0 has atomic number 0"),
    "too_close": ("close.xyz", WATER_XYZ + extxyz([("H", (0, 0, 0)), ("H", (0, 0, 0.3))]),
                  {"multiplicity": 1}, "frame 1: atoms 0 (H) and 1 (H) are 0.300 Å apart"),
    "too_close_minimum_image": (
        "pbc.extxyz", extxyz([("H", (0.1, 5, 5)), ("H", (9.8, 5, 5))], BOX), {},
        "frame 0: atoms 0 (H) and 1 (H) are 0.300 Å apart"),
    "zero_volume": ("flat.extxyz",
                    extxyz([("H", (0, 0, 0)), ("H", (0, 0, 1))],
                           'Lattice="10 0 0 0 10 0 0 0 0" pbc="T T T"'), {},
                    "frame 0: periodic cell has zero volume"),
    "odd_electrons": ("h.xyz", extxyz([("H", (0, 0, 0))]), {},
                      "frame 0: H with charge 0 has 1 electrons, which cannot have multiplicity 1"),
    "too_many_unpaired": ("h2.xyz", extxyz([("H", (0, 0, 0)), ("H", (0, 0, 0.74))]),
                          {"multiplicity": 5}, "cannot have multiplicity 5"),
    "charge_conflict": ("c.extxyz", extxyz([("H", (0, 0, 0)), ("H", (0, 0, 0.74))],
                                           "charge=-1"), {},
                        "the file says charge=-1 but the spec says 0"),
    "index_out_of_range": ("one.xyz", WATER_XYZ, {"index": "3"}, "index '3' is out of range"),
}


@pytest.mark.parametrize("case", GEOMETRY_CASES, ids=str)
def test_bad_geometry_names_spec_file_and_frame(tmp_path, case):
    filename, content, geo, expected = GEOMETRY_CASES[case]
    (tmp_path / filename).write_text(content)
    path = write_spec(tmp_path, base_spec(filename, **geo))
    message = error_of(path)
    assert f"field 'initial_geometries[0]': {tmp_path / filename}: " in message
    assert expected in message


def test_missing_geometry_file(spec_dir):
    message = error_of(write_spec(spec_dir, base_spec("nope.xyz")))
    assert f"{spec_dir / 'nope.xyz'}: geometry file not found" in message


def test_index_selects_frames_and_numbers_them(tmp_path):
    bad = extxyz([("H", (0, 0, 0)), ("H", (0, 0, 0.2))])
    (tmp_path / "f.xyz").write_text(WATER_XYZ * 3 + bad)
    frames = read_geometries(GeometrySource(path="f.xyz", index="1:3"), tmp_path)
    assert len(frames) == 2
    with pytest.raises(InputError, match=r"f\.xyz: frame 3: atoms 0"):
        read_geometries(GeometrySource(path="f.xyz", index="::3"), tmp_path)


def test_charge_and_multiplicity_from_source(tmp_path):
    (tmp_path / "oh.xyz").write_text(extxyz([("O", (0, 0, 0)), ("H", (0, 0, 0.97))]))
    (atoms,) = read_geometries(GeometrySource(path="oh.xyz", charge=-1), tmp_path)
    assert atoms.info["charge"] == -1 and atoms.info["multiplicity"] == 1
    (atoms,) = read_geometries(GeometrySource(path="oh.xyz", multiplicity=2), tmp_path)
    assert atoms.info["charge"] == 0 and atoms.info["multiplicity"] == 2


# ------------------------------------------------------------------- formats, checks
@pytest.mark.parametrize(("filename", "fmt"), [("Si.cif", None), ("POSCAR", None),
                                               ("si.vasp", None), ("POSCAR", "pymatgen")])
def test_reads_crystal_formats(tmp_path, filename, fmt):
    si = bulk("Si", cubic=True)
    ase.io.write(tmp_path / filename, si, format="cif" if filename.endswith("cif") else "vasp")
    (atoms,) = read_geometries(GeometrySource(path=filename, format=fmt), tmp_path)
    assert type(atoms) is Atoms
    assert atoms.get_chemical_formula() == "Si8" and atoms.pbc.all()
    assert np.allclose(atoms.cell.lengths(), si.cell.lengths(), atol=1e-6)
    assert abs(atoms.get_volume() - si.get_volume()) < 1e-4


def test_validate_atoms_is_fast_on_big_periodic_cells():
    big = bulk("Cu", cubic=True).repeat((12, 12, 12))  # 6912 atoms
    big.info["multiplicity"] = 1
    start = time.perf_counter()
    validate_atoms(big, "big")
    assert time.perf_counter() - start < 5
    big.positions[100] = big.positions[101] + [0.1, 0.0, 0.0]
    with pytest.raises(InputError, match=r"^big: atoms 100 \(Cu\) and 101 \(Cu\) are 0.100 Å"):
        validate_atoms(big, "big")


def test_validate_atoms_self_image_and_thin_cell():
    atom = Atoms("He", cell=[0.3, 5, 5], pbc=True)
    with pytest.raises(InputError, match="thin along cell vector 0"):
        validate_atoms(atom, "w")
    with pytest.raises(InputError, match="no atoms"):
        validate_atoms(Atoms(), "w")
    validate_atoms(molecule("CH4"), "w")  # a normal molecule passes


# ------------------------------------------------------------------------------ hash
def test_sha256_stable_and_sensitive(spec_dir):
    data = base_spec()
    first = load_spec(write_spec(spec_dir, data, "a.yaml")).sha256
    assert load_spec(write_spec(spec_dir, data, "a.yaml")).sha256 == first
    reordered = dict(reversed(list(data.items())))
    assert load_spec(write_spec(spec_dir, reordered, "b.yaml")).sha256 == first
    data["oracle"]["conv_tol"] = 1e-9  # the default, written out: same campaign
    assert load_spec(write_spec(spec_dir, data, "c.yaml")).sha256 == first
    data["oracle"]["basis"] = "6-31g"
    assert load_spec(write_spec(spec_dir, data, "d.yaml")).sha256 != first


def test_spec_round_trips_through_json():
    spec = load_spec(WORKFLOWS / "water_carving.yaml").spec
    again = parse_spec(json.loads(spec_json(spec)), "db")
    assert again == spec and spec_sha256(again) == spec_sha256(spec)
    assert isinstance(load_spec_text(yaml.safe_dump(spec.model_dump(mode="json"))), CampaignSpec)


# ------------------------------------------------------------------------------- CLI
def test_cli_validate_good_and_bad(tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["spec", "validate", str(WORKFLOWS / "ethanol.yaml")])
    assert good.exit_code == 0, good.output
    assert "valid (campaign 'ethanol_hf_sto3g'" in good.stdout

    (tmp_path / "mol.xyz").write_text(WATER_XYZ)
    data = base_spec()
    data["selection"] = {"trust_lo": -1}
    path = write_spec(tmp_path, data)
    bad = runner.invoke(app, ["spec", "validate", str(path)])
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and not bad.stdout
    assert lines[0].startswith(f"error: {path}: field 'selection.trust_lo'")


# ------------------------------------------------------------ sizes, finiteness (issue 13)
def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nbomb: *a{levels - 1}\n"


def test_alias_bomb_in_oracle_settings_is_refused_quickly(spec_dir):
    data = yaml.safe_dump(base_spec(), sort_keys=False).replace(
        "oracle:\n", "oracle:\n  settings:\n" + "".join(
            f"    {line}\n" for line in alias_bomb().splitlines()), 1)
    data = data.replace("kind: pyscf", "kind: ase\n  calculator: emt", 1)
    start = time.perf_counter()
    message = error_of(write_spec(spec_dir, data))
    assert time.perf_counter() - start < 2
    assert "invalid YAML at line" in message and "aliases expand to more than" in message


def test_yaml_anchors_and_recursive_aliases(spec_dir):
    data = base_spec()
    data["samplers"] = [{"kind": "md", "steps": 10, "walkers": 2}, {"kind": "md", "steps": 10, "walkers": 2}]
    text = yaml.safe_dump(data, sort_keys=False)
    assert "&id001" not in text  # safe_dump writes the two dicts out
    shared = text.replace("- kind: md\n  steps: 10\n  walkers: 2\n", "", 1).replace(
        "samplers:\n", "samplers:\n- &md {kind: md, steps: 10, walkers: 2}\n- *md\n", 1)
    assert load_spec(write_spec(spec_dir, shared)).spec.samplers[1].walkers == 2  # a fair use
    assert "contains it" in error_of(write_spec(spec_dir, "name: &n [*n]\n", "rec.yaml"))


@pytest.mark.parametrize(("field", "value"), [
    ("training.learning_rate", float("inf")), ("samplers[0].temperature_K", float("inf")),
    ("selection.trust_hi", float("inf")), ("stopping.target_force_mae", float("inf")),
    ("oracle.conv_tol", float("-inf")), ("oracle.timeout_s", float("inf")),
])
def test_infinite_numbers_are_refused(spec_dir, field, value):
    data = base_spec()
    section, key = field.split(".")
    node = data["samplers"][0] if section == "samplers[0]" else data.setdefault(section, {})
    node[key] = value
    assert f"field '{field}': Input should be a finite number" in error_of(write_spec(spec_dir, data))


def test_seed_and_grid_level_ranges(spec_dir):
    data = base_spec()
    data["seed"] = -1
    assert "field 'seed': Input should be greater than or equal to 0" in error_of(write_spec(spec_dir, data))
    data = base_spec()
    data["oracle"]["grid_level"] = 12
    assert "field 'oracle.grid_level'" in error_of(write_spec(spec_dir, data))


def test_reference_oracle_is_any_oracle_and_reference_md_frames_need_validation(spec_dir):
    data = base_spec()
    data["validation"] = {"enabled": True, "reference": "oracle"}  # PySCF runs the reference MD
    assert load_spec(write_spec(spec_dir, data)).spec.validation.reference == "oracle"
    data["validation"]["enabled"] = False
    data["evaluation"] = {"reference_md_frames": 4}
    message = error_of(write_spec(spec_dir, data))
    assert "field 'evaluation.reference_md_frames'" in message and "validation.enabled" in message


def sparse_molecule(n: int = 10_000, spacing: float = 1.5, seed: int = 0) -> Atoms:
    """n argon atoms on a jittered cubic grid: a big, non-periodic, physical frame."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    rng = np.random.default_rng(seed)
    return Atoms(f"Ar{n}", positions=grid * spacing + rng.normal(0, 0.05, (n, 3)))


def test_spec_validate_of_a_10000_atom_frame_is_fast(tmp_path):
    """ASE's neighbour list binned the whole bounding box: 80-150 s for this frame."""
    ase.io.write(tmp_path / "big.xyz", sparse_molecule())
    data = base_spec("big.xyz")
    data["oracle"] = {"kind": "ase", "calculator": "emt"}
    path = write_spec(tmp_path, data)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["spec", "validate", str(path)])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert "10000 atoms" in result.stdout
    assert elapsed < 5, f"spec validate took {elapsed:.1f} s"

    crowded = sparse_molecule()
    crowded.positions[9_876] = crowded.positions[1_234] + [0.0, 0.3, 0.0]
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"atoms 1234 \(Ar\) and 9876 \(Ar\) are 0.300 Å apart"):
        validate_atoms(crowded, "big")
    assert time.perf_counter() - start < 2


def test_closest_pair_matches_ase_on_random_cells():
    """The k-d tree search finds the same minimum-image distance as ASE's neighbour list,
    for periodic, mixed and non-periodic, orthogonal and skewed cells and cutoffs that
    span several cell shells."""
    from alflow.structures import closest_pair

    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(150):
        n = int(rng.integers(1, 12))
        pbc = rng.random(3) < 0.7
        cell = np.diag(rng.uniform(0.5, 3, 3)) + rng.normal(0, 0.4, (3, 3))
        heights = 1 / np.linalg.norm(np.linalg.inv(cell), axis=0)
        if pbc.any() and heights.min() < 0.3:  # thin cells are refused before (and crawl in ASE)
            continue
        atoms = Atoms(f"H{n}", positions=rng.uniform(-3, 6, (n, 3)), cell=cell, pbc=pbc)
        cutoff = float(rng.uniform(0.3, 2.0))
        d = neighbor_list("d", atoms, cutoff)
        got = closest_pair(atoms, cutoff)
        if len(d) == 0:
            assert got is None
        else:
            assert got is not None and got[2] == pytest.approx(float(d.min()), abs=1e-9)
            compared += 1
    assert compared > 50


def test_geometry_path_that_is_a_directory(spec_dir):
    (spec_dir / "frames").mkdir()
    message = error_of(write_spec(spec_dir, base_spec("frames")))
    assert f"{spec_dir / 'frames'}: is a directory, not a geometry file" in message
