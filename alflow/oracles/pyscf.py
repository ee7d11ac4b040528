"""PySCF oracle: HF or DFT single points with analytic forces, isolated in a forked worker.

Cheap checks (basis, functional, electron count, dispersion availability) run in the
parent so bad input costs no fork and gets a message that names the cause. The SCF runs
in a persistent `ForkWorker` child under a wall-clock limit; a non-converged SCF gets one
second-order (Newton) retry from its last density, because level shifting and damping did
not rescue distorted geometries where Newton did.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from alflow.geometry import charge_and_multiplicity
from alflow.errors import shorten
from alflow.oracles.base import ForkWorker, Oracle, Problem, failed
from alflow.spec import PySCFOracle

EV_PER_ANGSTROM = Hartree / Bohr  # Hartree/Bohr -> eV/Å


def _is_hf(method: str) -> bool:
    return method.strip().lower() == "hf"


@lru_cache(maxsize=256)
def _basis_check(basis: str, symbols: tuple[str, ...]) -> tuple[str | None, dict]:
    """(error message or None, per-element ECP map for bases that come with one).

    Cached: loading def2 basis and ECP files costs milliseconds, every call. Callers must
    not mutate the returned map.
    """
    from pyscf import gto
    from pyscf.gto.basis import BasisNotFoundError

    ecp = {}
    for sym in symbols:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "install basis-set-exchange" hints
            try:
                gto.basis.load(basis, sym)
            except BasisNotFoundError as exc:
                if "Unknown basis" in str(exc):
                    return f"unknown basis set {shorten(basis)} (PySCF does not know this name)", {}
                return f"basis set {shorten(basis)} has no functions for element {sym}", {}
            except Exception as exc:  # noqa: BLE001 - any other reason the name is unusable
                return f"unusable basis set {shorten(basis)} for {sym}: {shorten(str(exc), 200, quote=False)}", {}
            try:
                if gto.basis.load_ecp(basis, sym):
                    ecp[sym] = basis  # e.g. def2-* for heavy atoms: the basis expects its ECP
            except Exception:  # noqa: BLE001 - no ECP for this element
                pass
    return None, ecp


def _method_check(method: str, dispersion: str | None) -> tuple[str, str] | None:
    """(field, message) for an unknown functional or an unavailable dispersion model."""
    found = _method_message(method, dispersion)
    if found is None:
        return None
    field, message = found
    return field, shorten(message, 300, quote=False)


def _method_message(method: str, dispersion: str | None) -> tuple[str, str] | None:
    from pyscf.dft import libxc
    from pyscf.scf import dispersion as disp_mod

    xc = "hf"
    disp_from_name = None
    if not _is_hf(method):
        try:
            xc, _, disp_from_name = disp_mod.parse_dft(method)
            libxc.parse_xc(xc)
        except (KeyError, ValueError, NotImplementedError) as exc:
            return "method", f"unknown functional {shorten(method)} (PySCF/libxc: {shorten(str(exc), 120, quote=False)})"
    disp = dispersion or disp_from_name
    field = "dispersion" if dispersion else "method"
    if disp:
        try:
            _, version, _ = disp_mod.parse_disp(xc, disp)
        except Exception as exc:  # noqa: BLE001
            return field, f"unknown dispersion {shorten(disp)}: {shorten(str(exc), 120, quote=False)}"
        if version not in disp_mod.DISP_VERSIONS:
            return field, f"unknown dispersion {shorten(disp)}; PySCF offers {', '.join(disp_mod.DISP_VERSIONS)}"
        backend = disp_mod.dftd3 if version.startswith("d3") else disp_mod.dftd4
        if backend is None:
            return field, (
                f"dispersion {shorten(disp)} needs the optional package pyscf-dispersion "
                "(pip install pyscf-dispersion), which is not installed"
            )
    return None


def _electron_check(numbers: np.ndarray, charge: int, multiplicity: int) -> str | None:
    nelec = int(np.sum(numbers)) - charge
    unpaired = multiplicity - 1
    if multiplicity < 1:
        return f"multiplicity must be >= 1, got {multiplicity}"
    if nelec <= 0:
        return f"charge {charge} leaves {nelec} electrons"
    if unpaired > nelec or (nelec - unpaired) % 2:
        parity = "odd" if nelec % 2 else "even"
        return (
            f"{nelec} electrons ({parity}) cannot have multiplicity {multiplicity}; "
            f"an {parity} count needs multiplicity {'2, 4, ...' if nelec % 2 else '1, 3, ...'}"
        )
    return None


def _build_mol(job: dict):
    from pyscf import gto

    s = job["settings"]
    mol = gto.Mole()
    mol.atom = [(int(z), tuple(p)) for z, p in zip(job["numbers"], job["positions"])]
    mol.unit = "Angstrom"
    mol.basis = s["basis"]
    mol.ecp = dict(job["ecp"])
    mol.charge = job["charge"]
    mol.spin = job["multiplicity"] - 1
    mol.max_memory = s["max_memory_mb"]
    mol.verbose = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mol.build()
    return mol


def _make_scf(mol, s: dict):
    from pyscf import dft, scf

    open_shell = mol.spin != 0
    if _is_hf(s["method"]):
        mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
    else:
        mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
        mf.xc = s["method"]
        if s["grid_level"] is not None:
            mf.grids.level = s["grid_level"]
    if s["density_fit"]:
        mf = mf.density_fit()
    if s["dispersion"]:
        mf.disp = s["dispersion"]
    mf.conv_tol = s["conv_tol"]
    mf.max_cycle = s["max_cycle"]
    mf.verbose = 0
    return mf


def _run_job(job: dict) -> dict:
    """Runs in the worker child: SCF (+ one Newton retry), then analytic gradients."""
    from pyscf import lib

    lib.num_threads(job["settings"]["threads"])
    mf = _make_scf(_build_mol(job), job["settings"])
    mf.kernel()
    cycles = getattr(mf, "cycles", None)
    if not mf.converged:
        dm = mf.make_rdm1()
        mf = mf.newton()
        mf.kernel(dm0=dm)
        if not mf.converged:
            return failed(
                "scf_not_converged",
                f"SCF not converged in {job['settings']['max_cycle']} cycles "
                f"(last {cycles} cycles, E={mf.e_tot:.8f} Ha), nor with the second-order "
                "(Newton) retry from the last density",
            )
    grad = mf.nuc_grad_method().kernel()
    return {
        "status": "ok",
        "energy": float(mf.e_tot) * Hartree,
        "forces": -np.asarray(grad) * EV_PER_ANGSTROM,
    }


class PySCFLabeler(Oracle):
    """`PySCFLabeler(spec.PySCFOracle(...))(atoms) -> Label` for one non-periodic molecule."""

    code = "pyscf"

    def __init__(self, settings: PySCFOracle):
        super().__init__(settings)
        # Import what the child needs now, so the fork inherits it instead of paying again.
        import pyscf
        import pyscf.df
        import pyscf.dft
        import pyscf.grad
        import pyscf.scf
        import pyscf.soscf  # noqa: F401

        self._worker = ForkWorker(_run_job)
        self._method_error = _method_check(settings.method, settings.dispersion)

    @property
    def code_version(self) -> str:
        import pyscf

        return pyscf.__version__

    def method_settings(self) -> dict:
        s = self.settings
        return {
            "code": self.code,
            "method": s.method.strip().lower(),
            "basis": s.basis.strip().lower(),
            "density_fit": s.density_fit,
            "dispersion": s.dispersion.strip().lower() if s.dispersion else None,
            "grid_level": None if _is_hf(s.method) else s.grid_level,
            "conv_tol": s.conv_tol,
        }

    def _validate(self, atoms: Atoms) -> tuple[Problem | None, dict]:
        if atoms.pbc.any():
            pbc = atoms.pbc.tolist()
            return Problem("kind", f"PySCF oracle is molecular; got a periodic system (pbc={pbc})"), {}
        if self._method_error:
            return Problem(*self._method_error), {}
        charge, mult = charge_and_multiplicity(atoms)
        msg = _electron_check(atoms.numbers, charge, mult)
        if msg:
            return Problem(None, msg), {}
        msg, ecp = _basis_check(self.settings.basis, tuple(sorted(set(atoms.get_chemical_symbols()))))
        return (Problem("basis", msg) if msg else None), ecp

    def problem(self, atoms: Atoms) -> Problem | None:
        return self._validate(atoms)[0]

    def _compute(self, atoms: Atoms) -> dict:
        found, ecp = self._validate(atoms)
        if found:
            return failed("invalid_input", found.message)
        charge, mult = charge_and_multiplicity(atoms)
        job: dict[str, Any] = {
            "settings": self.settings.model_dump(),
            "numbers": np.asarray(atoms.numbers),
            "positions": np.asarray(atoms.positions, dtype=float),
            "charge": charge,
            "multiplicity": mult,
            "ecp": ecp,
        }
        try:  # the last cheap check: PySCF's own Mole.build, still in the parent
            _build_mol(job)
        except Exception as exc:  # noqa: BLE001
            return failed("invalid_input", f"PySCF rejected the molecule: {exc}")
        return self._worker.run(job, self.settings.timeout_s).label_fields()

    def close(self) -> None:
        self._worker.close()
