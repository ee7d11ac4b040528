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
