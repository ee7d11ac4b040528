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


def fail(message: str) -> typer.Exit:
    """Print one error line and return the exit-code-2 signal (bad input)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@spec_app.command("validate")
def spec_validate(path: str = typer.Argument(..., help="Campaign spec YAML file.")) -> None:
    """Check a campaign spec and its geometry files; print a summary."""
    from alflow.errors import InputError
    from alflow.spec import load_spec

    try:
        loaded = load_spec(path)
    except InputError as exc:
        raise fail(str(exc)) from None
    n_atoms = sum(len(a) for a in loaded.geometries)
    typer.echo(
        f"{path}: valid (campaign {loaded.spec.name!r}, {len(loaded.geometries)} initial "
        f"geometries, {n_atoms} atoms, oracle {loaded.spec.oracle.kind}, "
        f"spec sha256 {loaded.sha256[:12]})"
    )
