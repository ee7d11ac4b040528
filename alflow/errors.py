"""Error types shared by every layer.

`InputError` is the one class the CLI turns into "exit code 2, one clear message":
anything a user can fix by editing their input (a spec, a geometry file, a query).
"""


class InputError(ValueError):
    """Bad user input. The message names what is wrong and where (file, field)."""

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)
