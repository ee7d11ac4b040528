"""Member checkpoints: a state_dict plus a JSON config, addressed by sha256.

Why this format: `torch.load(weights_only=True)` can read it (no pickled code runs when a
checkpoint from a shared artifact store is opened), and the model is rebuilt from the
config with stock SchNetPack classes. Every file is written with its sha256 (returned,
and in a `<file>.sha256` sidecar in `sha256sum` format); loading refuses a file whose
bytes do not hash to the expected value, so a truncated copy or a swapped artifact is an
error that names the file and both hashes instead of a silently different model.

For SchNetPack users, `export_schnetpack` also writes the member as a plain pickled
SchNetPack model (energy in eV incl. the element reference, forces, optional stress):

    import schnetpack as spk
    calc = spk.interfaces.SpkCalculator(
        model="member.spk.pt",                     # SpkCalculator's argument is `model`
        neighbor_list=spk.transform.VesinNeighborList(cutoff=5.0),  # the member's cutoff
        energy_unit="eV", position_unit="Angstrom",   # spk defaults to kcal/mol otherwise
        stress_key="stress",                       # periodic systems only; optional
    )

That file needs `torch.load(weights_only=False)` (SchNetPack's `load_model` does this):
open it only from a trusted source. alflow never reads it. Members of absolute positions
(representation "coordinates") have no SchNetPack form and cannot be exported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch

from alflow.potentials.model import MAX_Z, MEMBER_FORMAT, Member, build_model


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read (hash mismatch, wrong format)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _write_with_hash(path: Path, write) -> str:
    """Write via a temporary file + rename (never a half-written checkpoint), then hash it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def save_member(member: Member, path: str | Path) -> str:
    """Write a member checkpoint; return its sha256."""
    payload = {
        "format": MEMBER_FORMAT,
        "config_json": json.dumps(member.config, sort_keys=True),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in member.model.state_dict().items()},
    }
    return _write_with_hash(Path(path), lambda p: torch.save(payload, p))


def expected_sha256(path: str | Path, sha256: str | None) -> str:
    """The hash to verify against: the one given, else the sidecar's."""
    if sha256:
        return sha256.lower()
    side = sidecar_path(path)
    if not side.exists():
        raise CheckpointError(
            f"{path}: no expected sha256 given and no sidecar {side.name}; "
            "refusing to load an unverified checkpoint"
        )
    return side.read_text().split()[0].lower()


def verify(path: str | Path, sha256: str | None = None) -> str:
    """Check the file's sha256 against `sha256` (or its sidecar); return the hash."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    want = expected_sha256(path, sha256)
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(
            f"{path}: sha256 mismatch: expected {want}, file has {got} "
            "(corrupted, truncated or replaced checkpoint)"
        )
    return got


def load_member(path: str | Path, sha256: str | None = None, map_location: str = "cpu") -> Member:
    """Verify and load a member checkpoint (weights only; the model is rebuilt from config)."""
    verify(path, sha256)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable alflow checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MEMBER_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: format {got!r}, expected {MEMBER_FORMAT!r}")
    config = json.loads(payload["config_json"])
    model = build_model(config["model"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config ({exc})") from exc
    return Member(model=model, config=config)


def export_schnetpack(member: Member, path: str | Path) -> str:
    """Write the member as a pickled SchNetPack model (see module docstring); return sha256.

    Adds a `Strain` input module (so SpkCalculator's `stress_key` works) and, as
    postprocessors, a cast to float64 and the element reference (`AddOffsets`), so the
    file predicts absolute energies in eV. Raises ValueError for a member without a
    SchNetPack form (representation "coordinates").
    """
    if not member.has_schnetpack_form:
        raise ValueError(
            f"a {member.representation!r} member has no SchNetPack form: it is an external-"
            "field model of absolute coordinates (E = Σ_i MLP(R_i)), which SchNetPack's "
            "pair-vector models cannot express; use alflow's checkpoint (save_member) and "
            "Ensemble/EnsembleCalculator instead"
        )
    import schnetpack as spk

    model = copy.deepcopy(member.model).to("cpu").float()
    model.input_modules = torch.nn.ModuleList([spk.atomistic.Strain(), *model.input_modules])
    table = torch.tensor(member.reference_table(), dtype=torch.float64)
    assert table.shape == (MAX_Z,)
    model.postprocessors = torch.nn.ModuleList([
        spk.transform.CastTo64(),
        spk.transform.AddOffsets("energy", add_atomrefs=True, atomrefs=table, zmax=MAX_Z),
    ])
    model.do_postprocessing = True
    model.collect_derivatives()
    model.collect_outputs()
    model.eval()
    return _write_with_hash(Path(path), lambda p: torch.save(model, p))
