"""Content-addressed artifact store (checkpoints, trajectories).

A file is stored once under `<root>/<sha[:2]>/<sha>` and named by its sha256, so two
identical checkpoints share storage, a recorded artifact can be verified at any time, and
a path in the database never points at a file that was later overwritten.
"""

from __future__ import annotations

from alflow.geometry import sha256_file

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    uri: str
    size_bytes: int


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, path: str | Path, sha256: str | None = None) -> StoredArtifact:
        """Copy a file into the store (atomically; a no-op if already there)."""
        digest = sha256 or sha256_file(path)
        dest = self.path_for(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return StoredArtifact(digest, dest.as_uri(), dest.stat().st_size)

    def verify(self, sha256: str) -> bool:
        path = self.path_for(sha256)
        return path.is_file() and sha256_file(path) == sha256
