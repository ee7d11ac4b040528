"""Oracles against independent references: PySCF itself, finite differences, exact roots."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.units import Hartree

import alflow.oracles.base as oracle_base
from alflow import spec
from alflow.oracles import ERROR_CLASSES, Label, make_oracle
from alflow.oracles.analytic import muller_brown

STEP = 1e-4  # Å, central differences


def central_difference(oracle, atoms: Atoms, atom: int, axis: int, h: float = STEP) -> float:
    """-dE/dx of one coordinate from two oracle energies."""
    energies = []
    for sign in (+1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * h
        label = oracle(moved)
        assert label.ok, label.error_msg
        energies.append(label.energy)
    return -(energies[0] - energies[1]) / (2 * h)


def pyscf_rhf_energy(atoms: Atoms, basis: str = "sto-3g") -> float:
    """PySCF's own RHF energy in Hartree (conv_tol tight, as in the oracle under test)."""
    from pyscf import gto, scf

    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions)), basis=basis,
                verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    return mf.kernel()


@pytest.fixture(scope="module")
def hf():
    with make_oracle(spec.PySCFOracle(method="HF", basis="sto-3g", conv_tol=1e-11)) as oracle:
        yield oracle


# ------------------------------------------------------------------------------- Label
def test_label_rejects_inconsistent_fields():
    with pytest.raises(ValueError):
        Label(status="ok", energy=1.0)  # no forces
    with pytest.raises(ValueError):
        Label(status="failed", error_class="bad_luck")
    with pytest.raises(ValueError):
        Label(status="maybe")
    label = Label(status="ok", energy=1, forces=[[0, 0, 0]])
    assert isinstance(label.energy, float) and label.forces.shape == (1, 3)
    with pytest.raises(ValueError):
        label.forces[0, 0] = 1.0  # read-only: a label is a record


# ------------------------------------------------------------------------------ PySCF
@pytest.mark.parametrize("name", ["H2O", "NH3"])
def test_pyscf_energy_matches_pyscf(hf, name):
    atoms = molecule(name)
    label = hf(atoms)
    assert label.ok, label.error_msg
    assert abs(label.energy / Hartree - pyscf_rhf_energy(atoms)) < 1e-8
    assert label.forces.shape == (len(atoms), 3) and label.stress is None
    assert label.code == "pyscf" and label.method_key == hf.method_key
    assert label.wall_s > 0 and label.cpu_s > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["H2O", "NH3"])
def test_pyscf_forces_match_finite_differences(hf, name):
    atoms = molecule(name)
    atoms.rattle(0.05, seed=1)  # off equilibrium, so forces are not ~0
    forces = hf(atoms).forces
    assert np.abs(forces).max() > 0.1
    for atom, axis in [(0, 2), (1, 0), (len(atoms) - 1, 1)]:
        fd = central_difference(hf, atoms, atom, axis)
        assert abs(forces[atom, axis] - fd) < 1e-4, (atom, axis, forces[atom, axis], fd)


def test_pyscf_open_shell_uses_uhf(hf):
    from pyscf import gto, scf

    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"multiplicity": 2})
    label = hf(oh)
    assert label.ok, label.error_msg
    mol = gto.M(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1, verbose=0)
    mf = scf.UHF(mol)
    mf.conv_tol = 1e-11
    assert abs(label.energy / Hartree - mf.kernel()) < 1e-8


# Ethanol distorted so that DIIS never converges (200 cycles; level shift + damping too).
DISTORTED_ETHANOL = Atoms(
    "CCOHHHHHH",
    positions=[
        [1.231, -0.466, 0.32], [0.052, 0.292, 0.181], [-0.538, 0.246, -0.352],
        [-2.579, 0.07, 0.021], [-1.12, 1.098, 0.264], [-0.324, 0.935, -1.045],
        [2.322, 0.666, -0.064], [1.812, -1.37, 1.062], [1.58, -0.99, -1.258],
    ],
)


@pytest.mark.slow
def test_pyscf_newton_rescues_scf(hf):
    from pyscf import gto, scf

    label = hf(DISTORTED_ETHANOL)
    assert label.ok, label.error_msg
    mol = gto.M(atom=list(zip(DISTORTED_ETHANOL.get_chemical_symbols(),
                              DISTORTED_ETHANOL.positions)), basis="sto-3g", verbose=0)
    plain = scf.RHF(mol)
    plain.kernel()
    assert not plain.converged  # the escalation is what converged it
    newton = scf.RHF(mol).newton()
    newton.conv_tol = 1e-11
    assert abs(label.energy / Hartree - newton.kernel()) < 1e-7


@pytest.mark.slow
def test_pyscf_non_convergence_is_a_failed_label():
    with make_oracle(spec.PySCFOracle(max_cycle=1)) as oracle:
        label = oracle(DISTORTED_ETHANOL)
    assert label.status == "failed" and label.error_class == "scf_not_converged"
    assert "Newton" in label.error_msg and label.energy is None and label.forces is None


@pytest.mark.slow
def test_pyscf_timeout_kills_the_worker_and_recovers():
    with make_oracle(spec.PySCFOracle(timeout_s=0.02)) as oracle:
        label = oracle(DISTORTED_ETHANOL)  # ~0.3 s of SCF
        assert label.error_class == "timeout", label.error_msg
        assert 0.02 <= label.wall_s < 5
        assert oracle._worker.pid is None  # killed, not left running


@pytest.mark.parametrize(
    "fault, error_class", [("kill", "crash"), ("exit", "crash"), ("segv", "crash"), ("oom", "oom")]
)
def test_pyscf_worker_fault_then_next_label_is_right(hf, monkeypatch, fault, error_class):
    water = molecule("H2O")
    hf(water)  # a warm worker, so the fault hits a persistent child
    pid = hf._worker.pid
    monkeypatch.setattr(oracle_base, "_FAULT", fault)
    label = hf(water)
    assert label.status == "failed" and label.error_class == error_class, label.error_msg
    monkeypatch.setattr(oracle_base, "_FAULT", None)
    label = hf(water)
    assert label.ok and abs(label.energy / Hartree - pyscf_rhf_energy(water)) < 1e-8
    assert hf._worker.pid != pid  # a fresh child replaced the dead one


@pytest.mark.parametrize(
    "settings, atoms, words",
    [
        (dict(basis="no-such-basis"), molecule("H2O"), ["unknown basis", "no-such-basis"]),
        (dict(method="NOT-A-FUNCTIONAL"), molecule("H2O"), ["unknown functional"]),
        (dict(), Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]), ["9 electrons", "odd"]),
        (dict(), Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1], [0, 1, 0]],
                       info={"charge": 1}), ["9 electrons"]),
        (dict(basis="6-31g"), Atoms("AuH", positions=[[0, 0, 0], [0, 0, 1.5]]),
         ["no functions for element Au", "6-31g"]),
        (dict(), Atoms(), ["empty"]),
        (dict(), bulk("Cu"), ["periodic"]),
    ],
    ids=["basis", "functional", "odd-electrons", "cation-singlet", "element", "empty", "pbc"],
)
def test_pyscf_invalid_input(settings, atoms, words):
    with make_oracle(spec.PySCFOracle(**settings)) as oracle:
        label = oracle(atoms)
        assert label.status == "failed" and label.error_class == "invalid_input"
        for word in words:
            assert word in label.error_msg, label.error_msg
        assert oracle._worker.pid is None  # caught in the parent: nothing was forked


def test_pyscf_missing_dispersion_package_is_explained():
    try:
        import pyscf.dispersion  # noqa: F401

        pytest.skip("pyscf-dispersion is installed here")
    except ImportError:
        pass
    with make_oracle(spec.PySCFOracle(method="PBE", dispersion="d3bj")) as oracle:
        label = oracle(molecule("H2O"))
    assert label.error_class == "invalid_input" and "pyscf-dispersion" in label.error_msg


def test_pyscf_method_key_ignores_execution_settings():
    base = make_oracle(spec.PySCFOracle(method="PBE", basis="def2-SVP"))
    same = make_oracle(spec.PySCFOracle(method="pbe", basis="def2-svp", timeout_s=5, threads=4,
                                        max_cycle=500, max_memory_mb=100))
    other = make_oracle(spec.PySCFOracle(method="PBE", basis="def2-TZVP"))
    assert base.method_key == same.method_key != other.method_key
    record = base.method_record()
    assert record["code"] == "pyscf" and record["basis"] == "def2-svp"
    assert record["settings_sha256"] == base.method_key and record["version"]


# -------------------------------------------------------------------------------- ASE
def test_ase_emt_cluster_forces_match_finite_differences():
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Cu", 2)
    atoms.rattle(0.05, seed=2)
    oracle = make_oracle(spec.ASEOracle(calculator="emt"))
    label = oracle(atoms)
    assert label.ok and label.stress is None and label.code == "ase"
    for atom, axis in [(0, 0), (5, 1), (12, 2)]:
        assert abs(label.forces[atom, axis] - central_difference(oracle, atoms, atom, axis)) < 1e-5


def test_ase_emt_periodic_stress_and_forces():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    oracle = make_oracle(spec.ASEOracle(calculator="emt"))
    label = oracle(atoms)
    assert label.ok and label.stress.shape == (3, 3)
    assert abs(label.forces[3, 0] - central_difference(oracle, atoms, 3, 0)) < 1e-5
    # stress_xx = (1/V) dE/dε_xx, by straining the cell with the atoms
    eps, energies = 1e-5, []
    for sign in (+1, -1):
        strained = atoms.copy()
        strain = np.eye(3)
        strain[0, 0] += sign * eps
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        energies.append(oracle(strained).energy)
    fd = (energies[0] - energies[1]) / (2 * eps) / atoms.get_volume()
    assert abs(label.stress[0, 0] - fd) < 1e-6


def test_ase_lennard_jones_dimer():
    settings = {"sigma": 1.0, "epsilon": 1.0, "rc": 3.0}
    oracle = make_oracle(spec.ASEOracle(calculator="lj", settings=settings))
    r_min = 2 ** (1 / 6)
    label = oracle(Atoms("Ar2", positions=[[0, 0, 0], [0, 0, r_min]]))
    shift = 4 * (3.0**-12 - 3.0**-6)
    assert abs(label.energy - (-1.0 - shift)) < 1e-12
    assert np.abs(label.forces).max() < 1e-10
    stretched = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 1.3]])
    fz = oracle(stretched).forces[1, 2]
    assert fz < 0 and abs(fz - central_difference(oracle, stretched, 1, 2)) < 1e-6


def test_ase_tblite_ethanol():
    pytest.importorskip("tblite.ase")
    oracle = make_oracle(spec.ASEOracle(calculator="tblite"))
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=4)
    label = oracle(atoms)
    assert label.ok, label.error_msg
    assert oracle.method_record()["method"] == "GFN2-xTB"
    for atom, axis in [(0, 0), (2, 2)]:
        assert abs(label.forces[atom, axis] - central_difference(oracle, atoms, atom, axis)) < 1e-3
    # charge and multiplicity come from atoms.info
    cation = atoms.copy()
    cation.info.update(charge=1, multiplicity=2)
    assert oracle(cation).energy > label.energy + 5  # ionisation costs several eV


def test_ase_failures_are_labels():
    unknown = make_oracle(spec.ASEOracle(calculator="nope"))
    label = unknown(molecule("H2O"))
    assert label.error_class == "invalid_input" and "unknown calculator 'nope'" in label.error_msg
    missing = make_oracle(spec.ASEOracle(calculator="no_such_module:Calc"))
    assert "cannot import no_such_module" in missing(molecule("H2O")).error_msg
    emt = make_oracle(spec.ASEOracle(calculator="emt"))
    label = emt(Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]]))  # EMT has no uranium
    assert label.status == "failed" and label.error_class == "calculator_error"
    assert label.error_msg


def test_ase_module_path_and_forked_worker_agree():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=5)
    inproc = make_oracle(spec.ASEOracle(calculator="emt"))(atoms)
    with make_oracle(spec.ASEOracle(calculator="ase.calculators.emt:EMT", timeout_s=30)) as forked:
        label = forked(atoms)
        assert label.ok and label.energy == pytest.approx(inproc.energy, abs=1e-12)
        np.testing.assert_allclose(label.forces, inproc.forces, atol=1e-12)
        np.testing.assert_allclose(label.stress, inproc.stress, atol=1e-12)
    with make_oracle(spec.ASEOracle(calculator="emt", timeout_s=0.3)) as forked:
        oracle_base._FAULT = "hang"
        try:
            assert forked(atoms).error_class == "timeout"
        finally:
            oracle_base._FAULT = None
        assert forked(atoms).ok


# --------------------------------------------------------------------------- analytic
def one_atom(x: float, y: float, z: float = 0.0) -> Atoms:
    return Atoms("H", positions=[[x, y, z]])


def test_double_well_energies_and_minima():
    oracle = make_oracle(spec.AnalyticOracle(potential="double_well"))
    assert oracle(one_atom(0, 0)).energy == 0.0
    assert oracle(one_atom(1, 0)).energy == pytest.approx(2.0)  # 10 - 10 + 2
    assert oracle(one_atom(-1, 1, z=7)).energy == pytest.approx(2.0)  # -2 + 4; z ignored
    # minima: minimise with the oracle's own energies and forces from both sides
    from scipy.optimize import minimize

    def energy_and_gradient(p):
        label = oracle(one_atom(p[0], p[1]))
        return label.energy, -label.forces[0, :2]

    deep, shallow = (
        minimize(energy_and_gradient, [x, 0.3], jac=True, method="BFGS", tol=1e-12).x
        for x in (-1.2, 1.2)
    )
    roots = np.sort(np.roots([40, 0, -20, 2]).real)  # dE/dx = 0: deep, barrier, shallow
    assert deep[0] == pytest.approx(roots[0], abs=1e-5) and abs(deep[1]) < 0.05
    assert shallow[0] == pytest.approx(roots[2], abs=1e-5) and abs(shallow[1]) < 0.05
    assert round(roots[0], 4) == -0.7526 and round(roots[2], 4) == 0.6505
    e_deep = oracle(one_atom(roots[0], 0)).energy
    e_shallow = oracle(one_atom(roots[2], 0)).energy
    e_barrier = oracle(one_atom(roots[1], 0)).energy
    assert e_deep < e_shallow < e_barrier
    assert e_deep == pytest.approx(-3.9611, abs=1e-4)


def test_muller_brown_known_points():
    import math

    oracle = make_oracle(spec.AnalyticOracle(potential="muller_brown"))
    A, a, b, c = (-200, -100, -170, 15), (-1, -1, -6.5, 0.7), (0, 0, 11, 0.6), (-10, -10, -6.5, 0.7)
    x0, y0 = (1, 0, -0.5, -1), (0, 0.5, 1.5, 1)
    x, y = 0.3, 0.7
    by_hand = sum(
        A[k] * math.exp(a[k] * (x - x0[k]) ** 2 + b[k] * (x - x0[k]) * (y - y0[k])
                        + c[k] * (y - y0[k]) ** 2)
        for k in range(4)
    )
    assert oracle(one_atom(x, y)).energy == pytest.approx(by_hand, rel=1e-12)
    # the three literature minima are stationary points with the literature energies
    from scipy.optimize import minimize

    for guess, energy in [((-0.558, 1.442), -146.70), ((0.623, 0.028), -108.17),
                          ((-0.050, 0.467), -80.77)]:
        res = minimize(lambda p: muller_brown(p[0], p[1])[0], guess, method="BFGS",
                       jac=lambda p: np.array(muller_brown(p[0], p[1])[1:]), tol=1e-10)
        assert np.allclose(res.x, guess, atol=2e-3) and res.fun == pytest.approx(energy, abs=0.01)
    scaled = make_oracle(spec.AnalyticOracle(potential="muller_brown", energy_scale=0.01))
    assert scaled(one_atom(x, y)).energy == pytest.approx(0.01 * by_hand)
    assert scaled.method_key != oracle.method_key


@pytest.mark.parametrize("potential", ["double_well", "muller_brown"])
def test_analytic_forces_match_finite_differences(potential):
    oracle = make_oracle({"kind": "analytic", "potential": potential, "energy_scale": 0.5})
    rng = np.random.default_rng(6)
    for x, y in rng.uniform([-1.2, -0.3], [1.0, 1.8], size=(5, 2)):
        atoms = one_atom(x, y, 0.3)
        label = oracle(atoms)
        assert label.forces[0, 2] == 0.0 and label.code == "analytic"
        for axis in (0, 1):
            fd = central_difference(oracle, atoms, 0, axis, h=1e-5)
            assert label.forces[0, axis] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_make_oracle_rejects_unknown_settings():
    with pytest.raises(TypeError):
        make_oracle(spec.ModelSpec())
    with pytest.raises(ValueError):  # pydantic: unknown kind
        make_oracle({"kind": "gaussian"})
    assert ERROR_CLASSES >= {"scf_not_converged", "timeout", "crash", "oom", "invalid_input"}


def test_pyscf_def2_heavy_atoms_get_their_ecp():
    from alflow.oracles.pyscf import _basis_check

    assert _basis_check("def2-svp", ("Au", "H")) == (None, {"Au": "def2-svp"})
    assert _basis_check("sto-3g", ("H", "O")) == (None, {})


@pytest.mark.parametrize(("settings", "field", "words"), [
    (spec.PySCFOracle(basis="sto-42g"), "basis", "unknown basis set 'sto-42g'"),
    (spec.PySCFOracle(basis="x" * 100_000), "basis", "(100,000 characters)"),
    (spec.PySCFOracle(method="B3LYPP"), "method", "unknown functional 'B3LYPP'"),
    (spec.PySCFOracle(method="B3LYP", dispersion="d7"), "dispersion", "unknown dispersion 'd7'"),
    (spec.ASEOracle(calculator="emt", settings={"foo": 1}), "settings", "takes no setting 'foo'"),
    (spec.ASEOracle(calculator="lj", settings={"sigmaa": 1.0}), "settings", "did you mean 'sigma'?"),
    (spec.ASEOracle(calculator="lj", settings={"rc": "far"}), "settings", "refused its settings: TypeError"),
    (spec.ASEOracle(calculator="nosuch"), "calculator", "unknown calculator 'nosuch'"),
])
def test_problem_names_the_settings_field(settings, field, words):
    with make_oracle(settings) as oracle:
        problem = oracle.problem(molecule("H2O"))
        assert problem is not None and problem.field == field and words in problem.message
        assert len(problem.message) < 500
        assert oracle.preflight(molecule("H2O")) == problem.message


def test_ase_settings_a_calculator_takes_pass_preflight():
    for settings in (spec.ASEOracle(calculator="emt", settings={"asap_cutoff": True}),
                     spec.ASEOracle(calculator="lj", settings={"sigma": 2.0, "epsilon": 0.1, "rc": 6.0}),
                     spec.ASEOracle(calculator="ase.calculators.morse:MorsePotential", settings={"rho0": 5.0})):
        with make_oracle(settings) as oracle:
            assert oracle.problem(molecule("H2O")) is None
            assert oracle(molecule("H2O")).status == "ok"
