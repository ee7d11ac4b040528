"""The trained ensemble as something a user holds: list a campaign's generations, export one
generation's members (SchNetPack files, TorchScript, a manifest), load it back as an ASE
calculator from the database or from an export.

Which generation: an index, ``last`` (the newest generation with trained members) or
``best`` (lowest ensemble force MAE on the campaign's fixed held-out set, recorded by the
evaluate step; a tie goes to the later generation). The manifest says which rule chose it
and the figures it compared.

An export directory holds, per member k:
  member-k.spk.pt  the pickled SchNetPack model (energy in eV incl. the element reference,
                   forces, stress via a Strain input), for `spk.utils.load_model` /
                   `spk.interfaces.SpkCalculator` (energy_unit="eV", position_unit="Angstrom")
  member-k.jit.pt  the same model deployed as SchNetPack's `spkdeploy` does (TorchScript),
                   when scripting works; float64 throughout so the offsets keep their digits
  member-k.pt      alflow's weights-only checkpoint (what `load_potential` reads)
and manifest.json (campaign, generation, members, training-set hash, units, cutoff, elements,
calibration scale, oracle method, sha256 of every file). Everything is written to a
temporary sibling directory and renamed at the end: a failed export leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from alflow.db import models as m
from alflow.db.session import session_factory
from alflow.errors import InputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "alflow.model-export/1"


@dataclass(frozen=True)
class GenerationModels:
    """One generation's trained ensemble as the database records it."""

    idx: int
    generation_id: int
    state: str
    members: list[int]
    checkpoints: list[str]  # sha256 in the artifact store
    val_force_mae: list[float | None]  # per member, on its validation split
    force_mae: float | None  # ensemble, held-out test set (eV/Å)
    energy_mae: float | None  # ensemble, held-out test set (eV/atom)
    n_test: int | None
    calibration_scale: float | None
    stability_time_fs: float | None
    hr_error: float | None
    training_set_sha256: str | None
    training_set_sizes: dict[str, int] | None
    trust_hi: float | None = None  # the generation's resolved threshold, calibrated σ_F (eV/Å)


def _campaign(s, name: str) -> m.Campaign:
    camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
    if camp is None:
        raise InputError(f"no campaign named {name!r} in this database", source="campaign")
    return camp


def generations(url: str, name: str) -> tuple[m.Campaign, list[GenerationModels]]:
    """Every generation of campaign `name`, oldest first, with its members and figures."""
    with session_factory(url)() as s:
        camp = _campaign(s, name)
        s.expunge(camp)
        gens = s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == camp.id)
                         .order_by(m.Generation.idx)).all()
        out = []
        for g in gens:
            rows = s.execute(sa.select(m.Model, m.Artifact.sha256)
                             .join(m.Artifact, m.Artifact.id == m.Model.checkpoint_id)
                             .where(m.Model.generation_id == g.id).order_by(m.Model.member)).all()
            ens = s.scalars(sa.select(m.ModelEval).where(
                m.ModelEval.generation_id == g.id, m.ModelEval.model_id.is_(None))
                .order_by(m.ModelEval.id)).first()
            ts = None
            if rows:
                ts = s.get(m.TrainingSet, rows[0][0].training_set_id)
            out.append(GenerationModels(
                idx=g.idx, generation_id=g.id, state=g.state,
                members=[r.member for r, _ in rows], checkpoints=[sha for _, sha in rows],
                val_force_mae=[r.val_force_mae for r, _ in rows],
                force_mae=None if ens is None else ens.force_mae,
                energy_mae=None if ens is None else ens.energy_mae,
                n_test=None if ens is None else ens.n_frames,
                calibration_scale=None if ens is None else ens.calibration_scale,
                stability_time_fs=None if ens is None else ens.stability_time_fs,
                hr_error=None if ens is None else ens.hr_error,
                training_set_sha256=None if ts is None else ts.sha256,
                training_set_sizes=None if ts is None else {
                    "train": ts.n_train, "val": ts.n_val, "test": ts.n_test},
                trust_hi=g.trust_hi))
        return camp, out


def choose(gens: list[GenerationModels], which: str | int, name: str) -> tuple[GenerationModels, str]:
    """The generation `which` names (an index, 'last', 'best') and how it was chosen."""
    trained = [g for g in gens if g.members]
    if not trained:
        raise InputError("has no trained ensemble members yet (nothing to export or load)",
                         source=f"campaign {name}")
    which = str(which).strip().lower()
    if which == "last":
        return trained[-1], "last: the newest generation with trained members"
    if which == "best":
        scored = [g for g in trained if g.force_mae is not None]
        if not scored:
            raise InputError("no generation has a held-out force error (evaluation.test_fraction is "
                             "0 or nothing was evaluated); choose a generation with -g N or 'last'",
                             source=f"campaign {name}")
        best = min(scored, key=lambda g: (g.force_mae, -g.idx))
        figures = ", ".join(f"gen {g.idx}: {g.force_mae:.4g}" for g in scored)
        return best, ("best: lowest ensemble force MAE (eV/Å) on the campaign's fixed held-out set "
                      f"(ties to the later generation); {figures}")
    try:
        idx = int(which)
    except ValueError:
        raise InputError(f"must be a generation index, 'best' or 'last', not {which!r}",
                         source="--generation") from None
    for g in gens:
        if g.idx == idx:
            if not g.members:
                raise InputError(f"generation {idx} has no trained ensemble members",
                                 source=f"campaign {name}")
            return g, f"generation {idx}, as asked"
    raise InputError(f"has no generation {idx} (generations {gens[0].idx}..{gens[-1].idx})",
                     source=f"campaign {name}")


def _store(camp: m.Campaign):
    from alflow.engine.artifacts import ArtifactStore

    workdir = Path(camp.workdir or Path.cwd() / "alflow-runs" / camp.name)
    return ArtifactStore(workdir / "artifacts")


def _oracle_method(camp: m.Campaign) -> dict[str, Any]:
    oracle = dict(camp.spec.get("oracle") or {})
    return {"kind": oracle.get("kind"), "settings": oracle}


def _members(camp: m.Campaign, gen: GenerationModels):
    from alflow.potentials.checkpoint import CheckpointError, load_member

    store = _store(camp)
    out = []
    for member, sha in zip(gen.members, gen.checkpoints, strict=True):
        path = store.path_for(sha)
        try:
            out.append(load_member(path, sha))
        except CheckpointError as exc:
            raise InputError(f"member {member} of generation {gen.idx}: {exc}",
                             source=f"campaign {camp.name}") from None
    return out


def deploy_torchscript(spk_model_path: str | Path, out: str | Path) -> str:
    """SchNetPack's `spkdeploy` for an alflow export, in float64: drop the dtype casts (not
    scriptable), script, save with the cutoff as metadata. Returns the sha256."""
    import warnings

    import torch
    from schnetpack.transform import CastTo32, CastTo64
    from schnetpack.utils import load_model

    from alflow.potentials.checkpoint import file_sha256

    model = load_model(str(spk_model_path), device="cpu").double()
    model.postprocessors = torch.nn.ModuleList(
        [p for p in model.postprocessors if type(p) not in (CastTo32, CastTo64)])
    with warnings.catch_warnings():  # torch 2.x calls TorchScript deprecated; spkdeploy uses it
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    extra = {"cutoff": str(float(scripted.representation.cutoff.item())).encode("ascii")}
    torch.jit.save(scripted, str(out), _extra_files=extra)
    return file_sha256(out)


def export_model(url: str, name: str, which: str | int, out_dir: str | Path, *,
                 torchscript: bool = True) -> dict[str, Any]:
    """Write generation `which` of campaign `name` to `out_dir`; return the manifest."""
    from alflow.potentials.checkpoint import export_schnetpack, file_sha256, save_member

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("exists and is not an empty directory; choose another", source=str(out_dir))
    camp, gens = generations(url, name)
    gen, how = choose(gens, which, name)
    members = _members(camp, gen)
    if not all(mem.has_schnetpack_form for mem in members):
        rep = members[0].representation
        raise InputError(f"generation {gen.idx}'s members are {rep!r} models, which have no "
                         "SchNetPack form; only painn/schnet ensembles can be exported",
                         source=f"campaign {name}")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files: list[dict[str, Any]] = []
        ts_error = None
        for k, mem in zip(gen.members, members, strict=True):
            entry: dict[str, Any] = {"member": k, "seed": mem.config.get("seed")}
            ck = f"member-{k}.pt"
            entry["alflow_checkpoint"] = {"file": ck, "sha256": save_member(mem, tmp / ck)}
            (tmp / f"{ck}.sha256").unlink(missing_ok=True)
            spk = f"member-{k}.spk.pt"
            entry["schnetpack"] = {"file": spk, "sha256": export_schnetpack(mem, tmp / spk)}
            (tmp / f"{spk}.sha256").unlink(missing_ok=True)
            if torchscript and ts_error is None:
                jit = f"member-{k}.jit.pt"
                try:
                    entry["torchscript"] = {"file": jit, "sha256": deploy_torchscript(tmp / spk, tmp / jit)}
                except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # TorchScript is best effort; the manifest says why not
                    ts_error = f"{type(exc).__name__}: {exc}"[:500]
                    (tmp / jit).unlink(missing_ok=True)
            files.append(entry)
        if ts_error is not None:
            for entry in files:
                entry.pop("torchscript", None)
                (tmp / f"member-{entry['member']}.jit.pt").unlink(missing_ok=True)
        first = members[0]
        manifest = {
            "format": MANIFEST_FORMAT,
            "campaign": name,
            "campaign_spec_sha256": camp.spec_sha256,
            "generation": gen.idx,
            "chosen_by": how,
            "members": files,
            "n_members": len(files),
            "training_set_sha256": gen.training_set_sha256,
            "training_set_sizes": gen.training_set_sizes,
            "units": {"energy": "eV", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3",
                      "positions": "Angstrom", "sigma_f": "eV/Angstrom"},
            "representation": first.representation,
            "architecture": first.architecture,
            "cutoff": first.cutoff,
            "elements": first.elements,
            "energy_reference_eV_per_atom": first.config["energy_reference"],
            "calibration_scale": gen.calibration_scale,
            "trust_hi_eV_A": gen.trust_hi,  # `alflow md`'s default threshold (calibrated σ_F)
            "heldout": {"force_mae": gen.force_mae, "energy_mae_per_atom": gen.energy_mae,
                        "n_frames": gen.n_test, "members_val_force_mae": gen.val_force_mae},
            "validation": {"stability_time_fs": gen.stability_time_fs, "hr_error": gen.hr_error},
            "oracle_method": _oracle_method(camp),
            "torchscript": "produced" if torchscript and ts_error is None else (ts_error or "not asked"),
            "schnetpack_usage": (
                "spk.interfaces.SpkCalculator(model='member-0.spk.pt', "
                f"neighbor_list=spk.transform.VesinNeighborList(cutoff={first.cutoff}), "
                "energy_unit='eV', position_unit='Angstrom', stress_key='stress')"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
        for entry in files:
            for kind in ("alflow_checkpoint", "schnetpack", "torchscript"):
                if kind in entry:
                    assert file_sha256(tmp / entry[kind]["file"]) == entry[kind]["sha256"]
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --------------------------------------------------------------------------- loading
def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(export directory, manifest) with every listed file's sha256 checked."""
    from alflow.potentials.checkpoint import file_sha256

    path = Path(path)
    manifest_path = path / MANIFEST if path.is_dir() else path
    if not manifest_path.is_file():
        raise InputError("no manifest.json here (not an `alflow model export` directory)", source=str(path))
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", source=str(manifest_path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"format is not {MANIFEST_FORMAT!r}", source=str(manifest_path))
    root = manifest_path.parent
    for entry in manifest.get("members") or []:
        for kind in ("alflow_checkpoint", "schnetpack", "torchscript"):
            if kind not in entry:
                continue
            f = root / entry[kind]["file"]
            if not f.is_file():
                raise InputError(f"lists {entry[kind]['file']}, which is missing", source=str(manifest_path))
            got = file_sha256(f)
            if got != entry[kind]["sha256"]:
                raise InputError(f"sha256 mismatch: the manifest says {entry[kind]['sha256']}, "
                                 f"the file has {got} (corrupted or replaced)", source=str(f))
    if not manifest.get("members"):
        raise InputError("lists no members", source=str(manifest_path))
    return root, manifest


def load_ensemble(source: str | Path, name: str | None = None, generation: str | int = "last",
                  **ensemble_kw):
    """(Ensemble, calibration scale, description) from a database URL + campaign name, or
    from an export directory / manifest.json."""
    from alflow.potentials.checkpoint import CheckpointError, load_member
    from alflow.potentials.ensemble import Ensemble

    source_s = str(source)
    if "://" in source_s:
        if not name:
            raise InputError("a database URL needs the campaign's name", source="name")
        camp, gens = generations(source_s, name)
        gen, how = choose(gens, generation, name)
        members = _members(camp, gen)
        info = {"campaign": name, "generation": gen.idx, "chosen_by": how, "trust_hi": gen.trust_hi}
        return Ensemble(members, **ensemble_kw), gen.calibration_scale, info
    root, manifest = read_manifest(source)
    try:
        members = [load_member(root / e["alflow_checkpoint"]["file"], e["alflow_checkpoint"]["sha256"])
                   for e in manifest["members"]]
    except CheckpointError as exc:
        raise InputError(str(exc), source=str(root)) from None
    info = {k: manifest.get(k) for k in ("campaign", "generation", "chosen_by")}
    info["trust_hi"] = manifest.get("trust_hi_eV_A")
    return Ensemble(members, **ensemble_kw), manifest.get("calibration_scale"), info


def load_potential(db_url_or_manifest: str | Path, name: str | None = None,
                   generation: str | int = "last", **ensemble_kw):
    """An ASE calculator over a campaign's ensemble (see `EnsembleCalculator`): energy,
    free_energy, forces, stress (periodic cells), sigma_f2, sigma_f, atomic_uncertainty,
    energy_std and sigma_f_calibrated (σ_F times the generation's calibration scale)."""
    from alflow.potentials.calculator import EnsembleCalculator

    ensemble, scale, info = load_ensemble(db_url_or_manifest, name, generation, **ensemble_kw)
    calc = EnsembleCalculator(ensemble, calibration_scale=scale)
    calc.source = info
    return calc
