"""`alflow` command line (typer).

Every `InputError` becomes one clear message on stderr and exit code 2; nothing else in the
CLI decides exit codes.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Active-learning workflows for interatomic potentials.", no_args_is_help=True)
spec_app = typer.Typer(help="Campaign spec files.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@app.callback()
def _main() -> None:
    """alflow: label -> train -> sample -> select, recorded in a provenance database."""
