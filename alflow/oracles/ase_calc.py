"""ASE oracle: any ASE calculator by name ("emt", "lj", "tblite" or "module.path:ClassName").

A fresh calculator is built for every call, so no state (cached results, a half-updated
wavefunction) leaks from one geometry to the next; for EMT, LJ and tblite that costs
microseconds. Calls run in-process unless `timeout_s` is set, in which case they run in a
forked worker that is killed (with its process group, i.e. an external code's processes)
when the limit passes: worth it for VASP/CP2K-style codes that can hang, not for EMT.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from alflow.errors import shorten
from alflow.geometry import charge_and_multiplicity
from alflow.oracles.base import ForkWorker, Oracle, Problem, failed
from alflow.spec import ASEOracle

ALIASES = {
    "emt": "ase.calculators.emt:EMT",
    "lj": "ase.calculators.lj:LennardJones",
    "lennardjones": "ase.calculators.lj:LennardJones",
    "tblite": "tblite.ase:TBLite",
}
DEFAULTS = {"tblite": {"method": "GFN2-xTB", "verbosity": 0}}
# Keyword arguments that change where or how loudly a code runs, not its numbers.
NOT_METHOD = frozenset({"verbosity", "directory", "label", "txt", "command", "profile"})


def _resolve(name: str) -> type:
    """The calculator class for a name; raises ValueError with a readable message."""
    target = ALIASES.get(name.lower(), name)
    if ":" not in target:
        raise ValueError(
            f"unknown calculator {name!r}: use one of {sorted(ALIASES)} or 'module.path:ClassName'"
        )
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ValueError(f"calculator {name!r}: cannot import {module} ({exc})") from None
    except AttributeError:
        raise ValueError(f"calculator {name!r}: {module} has no {cls}") from None


def _keywords(cls: type) -> tuple[set[str], bool]:
    """(keyword arguments the class names, whether it takes others too).

    Follows `**kwargs` up the `__init__` chain; ASE's `Calculator.__init__` turns its
    `**kwargs` into `parameters` (via `set`) without checking them, so there the chain
    is open-ended."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return names, True
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        except (TypeError, ValueError):  # a builtin without a signature
            return names, True
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
        if klass is Calculator:
            return names, True
    return names, True


# Calculators whose settings are exactly their `default_parameters` (plus the named
# arguments of their __init__ chain): anything else they silently take and ignore
# (`EMT(foo=1)` computes plain EMT), so a typo would label a whole campaign with the
# wrong method. Other `**kwargs` classes are trusted with their keywords, and built once.
_CLOSED = frozenset(ALIASES.values())


def settings_problem(name: str, settings: dict, atoms: Atoms) -> Problem | None:
    """Why the calculator `name` cannot be built with `settings` (keyword arguments), or
    None: an unknown name or module, a keyword its class does not take, or an exception
    from building it once for `atoms`. Computes nothing."""
    try:
        cls = _resolve(name)
    except ValueError as exc:
        return Problem("calculator", shorten(str(exc), 300, quote=False))
    kwargs = {**DEFAULTS.get(name.lower(), {}), **settings}
    names, open_ended = _keywords(cls)
    shown = sorted(names)
    if f"{cls.__module__}:{cls.__qualname__}" in _CLOSED and isinstance(
            getattr(cls, "default_parameters", None), dict):
        shown = sorted(cls.default_parameters)
        names |= set(cls.default_parameters)
        open_ended = False
    unknown = [k for k in kwargs if k not in names]
    if unknown and not open_ended:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        takes = ", ".join(shown[:15]) + (", ..." if len(shown) > 15 else "") if shown else "nothing"
        return Problem("settings", f"calculator {shorten(name)} takes no setting "
                                   f"{shorten(unknown[0], 60)}{hint}; it takes: {takes}")
    try:
        build_calculator(name, settings, atoms)
    except Exception as exc:  # noqa: BLE001 - whatever the class raises for its arguments
        return Problem("settings", f"calculator {shorten(name)} refused its settings: "
                                   f"{type(exc).__name__}: {shorten(str(exc), 200, quote=False)}")
    return None


def build_calculator(name: str, settings: dict, atoms: Atoms):
    """A fresh ASE calculator for `atoms` by name (also used for reference MD)."""
    cls = _resolve(name)
    kwargs = {**DEFAULTS.get(name.lower(), {}), **settings}
    if name.lower() == "tblite":  # xTB needs the total charge and spin of the molecule
        charge, mult = charge_and_multiplicity(atoms)
        kwargs.setdefault("charge", charge)
        kwargs.setdefault("multiplicity", mult)
    return cls(**kwargs)


def _evaluate(job: tuple[str, dict, Atoms]) -> dict:
    """Energy, forces (and stress when fully periodic) of one geometry; may raise."""
    name, kwargs, atoms = job
    atoms = atoms.copy()
    atoms.calc = build_calculator(name, kwargs, atoms)
    energy = atoms.get_potential_energy()
    # The force-consistent (free) energy is what the forces differentiate, where they differ.
    energy = atoms.calc.results.get("free_energy", energy)
    forces = atoms.get_forces()
    stress = None
    if atoms.pbc.all():
        try:
            stress = atoms.get_stress(voigt=False)
        except PropertyNotImplementedError:
            stress = None
    return {"status": "ok", "energy": energy, "forces": forces, "stress": stress}


class ASELabeler(Oracle):
    """`ASELabeler(spec.ASEOracle(calculator="emt"))(atoms) -> Label`."""

    code = "ase"

    def __init__(self, settings: ASEOracle):
        super().__init__(settings)
        self._name = settings.calculator
        self._kwargs = {**DEFAULTS.get(self._name.lower(), {}), **settings.settings}
        try:
            self._cls = _resolve(self._name)
            self._resolve_error = None
        except ValueError as exc:
            self._cls, self._resolve_error = None, str(exc)
        self._worker = ForkWorker(_evaluate) if settings.timeout_s is not None else None
        self._settings_problem: Problem | None | bool = False  # False: not checked yet

    def problem(self, atoms: Atoms) -> Problem | None:
        """An unknown calculator, or settings it does not take (checked once: the class
        signature, then building it for the first geometry)."""
        if self._resolve_error:
            return Problem("calculator", shorten(self._resolve_error, 300, quote=False))
        if self._settings_problem is False:
            self._settings_problem = settings_problem(self._name, self.settings.settings, atoms)
        return self._settings_problem

    @property
    def code_version(self) -> str:
        """ASE's version, plus the calculator package's where it has one."""
        import ase

        version = f"ase {ase.__version__}"
        top = (self._cls.__module__.split(".")[0]) if self._cls else None
        if top and top != "ase":
            try:
                from importlib.metadata import version as dist_version

                version += f"; {top} {dist_version(top)}"
            except Exception:  # noqa: BLE001 - a module without distribution metadata
                pass
        return version

    def method_settings(self) -> dict:
        name = self._name.lower() if self._name.lower() in ALIASES else self._name
        return {
            "code": self.code,
            "calculator": name,
            "method": str(self._kwargs.get("method", name)),
            "settings": {k: v for k, v in self._kwargs.items() if k not in NOT_METHOD},
        }

    def _compute(self, atoms: Atoms) -> dict:
        if self._resolve_error:
            return failed("invalid_input", self._resolve_error)
        job = (self._name, self._kwargs, atoms)
        if self._worker is None:
            try:
                return _evaluate(job)
            except MemoryError as exc:
                return failed("oom", f"MemoryError: {exc}")
            except Exception as exc:  # noqa: BLE001 - any calculator failure is a label
                return failed("calculator_error", f"{type(exc).__name__}: {exc}")
        return self._worker.run(job, self.settings.timeout_s).label_fields()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
