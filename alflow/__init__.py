"""alflow: active-learning workflows for machine-learned interatomic potentials.

Layers (data flows down): cli -> engine -> (db, science). Science modules
(`oracles`, `potentials`, `sampling`) take and return plain data and never import
Parsl or the database.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alflow")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

__all__ = ["__version__"]


def load_potential(db_url_or_manifest, name=None, generation="last", **ensemble_kw):
    """A campaign's trained ensemble as an ASE calculator (energy, forces, stress for periodic
    cells, and the uncertainties), from a database URL and campaign name or from an
    `alflow model export` directory / its manifest.json. See
    `alflow.engine.model_export.load_potential`."""
    from alflow.engine.model_export import load_potential as _load

    return _load(db_url_or_manifest, name, generation, **ensemble_kw)


__all__ += ["load_potential"]
