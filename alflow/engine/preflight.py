"""Every check a campaign's inputs get before anything is written.

`alflow spec validate` and `alflow run` call the same functions, so a spec that validates
is one that `run` accepts, and `run` writes nothing (not even the schema) until every input
is checked, in this order: the spec and its geometries (`load_spec`), the site
(`check_site`), the oracle and the validation reference against the geometries
(`preflight`), the run directory (`check_writable`), and last the database
(`alflow.db.session.check_connection`). Each failure is one `InputError` naming the file
and field (or option) at fault.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from alflow.errors import InputError, shorten

if TYPE_CHECKING:
    from alflow.engine.sites import SiteSpec
    from alflow.spec import LoadedSpec


def preflight(loaded: LoadedSpec) -> None:
    """Refuse a campaign whose oracle cannot label its own starting geometries (an unknown
    basis, functional or calculator, settings the calculator does not take, a basis
    without an element of the geometries), or whose validation reference cannot be built."""
    from alflow.oracles import make_oracle

    source = str(loaded.path)
    oracle = make_oracle(loaded.spec.oracle)
    try:
        for atoms in loaded.geometries:
            if atoms.pbc.any() and loaded.spec.carving.enabled:
                continue  # labelled as carved clusters, not whole
            problem = oracle.problem(atoms)
            if problem:
                field = f"oracle.{problem.field}" if problem.field else "oracle"
                raise InputError(f"field '{field}': {problem.message}", source=source)
    finally:
        oracle.close()
    _check_reference(loaded)


def _check_reference(loaded: LoadedSpec) -> None:
    """The calculator of the per-generation reference MD builds (else the campaign would
    stop after generation 0 had been labelled and trained)."""
    from alflow.oracles.ase_calc import settings_problem

    v = loaded.spec.validation
    if not v.enabled or v.reference in (None, "oracle") or not loaded.geometries:
        return  # 'oracle': the campaign's oracle, checked above
    problem = settings_problem(v.reference, v.reference_settings, loaded.geometries[0])
    if problem:
        field = "validation.reference" if problem.field == "calculator" else "validation.reference_settings"
        raise InputError(f"field '{field}': {problem.message}", source=str(loaded.path))


def check_site(loaded: LoadedSpec, site: str | None = None) -> SiteSpec:
    """The campaign's site (`--site` if given, else the spec's `site` field), validated and
    feasible; an InputError blames the option or the spec field that named it, and the
    site file for what is wrong inside it."""
    from alflow.engine.sites import check_site as load_and_check

    if site is not None:
        return load_and_check(site, origin="--site")
    return load_and_check(loaded.spec.site, origin=f"{loaded.path}: field 'site'")


def check_campaign(loaded: LoadedSpec, site: str | None = None) -> SiteSpec:
    """Everything about a loaded spec that `run` checks before writing: site and oracle."""
    site_spec = check_site(loaded, site)
    preflight(loaded)
    return site_spec


def check_writable(path: str | Path, source: str, *, directory: bool = True) -> Path:
    """`path` can be created (or, if it exists, written): the nearest existing ancestor is a
    directory this process may write in (an unnamed temporary file is made and dropped
    there to be sure). Creates nothing that stays. `directory`: the path itself is
    to be a directory (a run directory, a report) rather than a file."""
    target = Path(path)
    try:
        absolute = target.absolute()
        if absolute.exists():
            if directory and not absolute.is_dir():
                raise InputError(f"{shorten(str(target))} exists and is not a directory", source=source)
            probe = absolute if absolute.is_dir() else absolute.parent
        else:
            probe = absolute.parent
            while not probe.exists():
                probe = probe.parent
        if not probe.is_dir():
            raise InputError(f"cannot create {shorten(str(target))}: {shorten(str(probe))} is a file, "
                             f"not a directory", source=source)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {shorten(str(target))}: {shorten(str(probe))} is not writable",
                             source=source)
        try:  # access() says yes to root everywhere, /proc included: try for real
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            raise InputError(f"cannot write {shorten(str(target))}: no file can be created in "
                             f"{shorten(str(probe))} ({exc.strerror or exc})", source=source) from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise InputError(f"cannot use {shorten(str(target))}: {exc.strerror or exc}", source=source) from None
    return target
