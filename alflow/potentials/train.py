"""Train one ensemble member on labelled geometries (plain data in, checkpoint out).

A small torch loop around SchNetPack modules rather than SchNetPack's Lightning task: for
datasets of hundreds to thousands of small geometries the loop keeps neighbour lists
cached per geometry and has no trainer/datamodule start-up cost, and it needs no
on-disk ASE database.

Choices, and why:
- Train/validation split by geometry content hash (`split.py`): adding data never moves
  an old geometry between splits, and all members share the split.
- Energy reference per element (linear fit of energies on composition, or mean energy
  per atom) is subtracted, so the network learns residuals of order the force scale;
  the output layer is initialised scaled by the RMS training force for the same reason.
- Loss = w_E·mean((ΔE/n)²) + w_F·mean(ΔF²) [+ w_S·mean(Δσ²) for periodic frames with a
  stress label]; energies per atom so mixed sizes weigh alike.
- Early stopping on validation loss with `patience`; the best epoch's weights are kept.
  The learning rate halves when validation loss has not improved for patience/4 epochs.
  Below `min_val_frames` validation frames both follow the training loss instead: the
  loss of one or two frames is noise, and a campaign's first generations have no more.
- Warm start from a previous member: same architecture required; the previous element
  reference is kept (only new elements are fitted), so the warm weights stay meaningful.
- Members of absolute positions (representation "coordinates") train through the same
  loop: their cached graphs hold no pairs, and `energy_forces` takes forces as −∂E/∂R.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from ase import Atoms

from alflow.potentials.checkpoint import export_schnetpack, load_member, save_member
from alflow.potentials.ensemble import resolve_device
from alflow.potentials.graph import GeometryGraph, collate, geometry_graph
from alflow.potentials.model import architecture, energy_forces, new_member, uses_positions
from alflow.potentials.split import in_validation, split_indices  # noqa: F401 - re-exported
from alflow.spec import ModelSpec, TrainingSpec


@dataclass
class TrainResult:
    checkpoint: Path
    sha256: str
    metrics: dict[str, Any]
    schnetpack_model: Path | None = None  # plain SchNetPack export (see checkpoint.py)
    schnetpack_sha256: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def fit_energy_reference(
    numbers: Sequence[np.ndarray], energies: Sequence[float], kind: str = "linear",
    fixed: dict[int, float] | None = None,
) -> dict[int, float]:
    """Per-element eV/atom reference so Σ_atoms ref ≈ E.

    "linear": least squares of E on element counts (minimum norm when compositions do not
    determine every element, e.g. a single molecule). "mean": mean E/n for every element.
    `fixed` references are kept and only the other elements are fitted.
    """
    fixed = dict(fixed or {})
    elements = sorted({int(z) for nums in numbers for z in nums})
    free = [z for z in elements if z not in fixed]
    e = np.asarray(energies, dtype=np.float64)
    e_rest = e - np.array([sum(fixed.get(int(z), 0.0) for z in nums) for nums in numbers])
    if not free:
        return fixed
    if kind == "mean":
        counts_free = np.array([sum(int(z) in free for z in nums) for nums in numbers], float)
        ok = counts_free > 0
        value = float(np.sum(e_rest[ok]) / np.sum(counts_free[ok]))
        return {**fixed, **{z: value for z in free}}
    if kind != "linear":
        raise ValueError(f"unknown energy reference {kind!r} (linear or mean)")
    counts = np.array([[np.count_nonzero(nums == z) for z in free] for nums in numbers], float)
    coef, *_ = np.linalg.lstsq(counts, e_rest, rcond=None)
    return {**fixed, **{z: float(c) for z, c in zip(free, coef)}}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Sample:
    graph: GeometryGraph
    energy: float  # residual (reference removed), eV
    forces: np.ndarray
    stress: np.ndarray | None  # (3, 3) eV/Å³


def _as_3x3(stress: np.ndarray) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):  # Voigt xx yy zz yz xz xy (ASE)
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.shape != (3, 3):
        raise ValueError(f"stress must be (3, 3) or Voigt (6,), got {s.shape}")
    return s


class _Batch:
    """A collated batch with its targets, on the training device."""

    def __init__(self, samples: Sequence[_Sample], device: torch.device):
        self.g = collate([s.graph for s in samples]).to(device, torch.float32)
        self.energy = torch.tensor([s.energy for s in samples], dtype=torch.float64, device=device)
        self.forces = torch.from_numpy(np.concatenate([s.forces for s in samples])).to(device, torch.float32)
        has = [s.stress is not None for s in samples]
        self.stress_mask = torch.tensor(has, device=device)
        self.stress = torch.from_numpy(
            np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in samples])
        ).to(device, torch.float32)
        self.n = self.g.n_atoms.to(torch.float64)


def _loss(core, batch: _Batch, training: TrainingSpec, create_graph: bool) -> tuple[torch.Tensor, dict]:
    use_stress = training.stress_weight > 0 and bool(batch.stress_mask.any())
    energy, forces, virial = energy_forces(core, batch.g, create_graph=create_graph, stress=use_stress)
    de = (energy.to(torch.float64) - batch.energy) / batch.n
    df = forces - batch.forces
    loss = training.energy_weight * (de**2).mean() + training.forces_weight * (df**2).mean()
    s_abs, n_s = 0.0, 0
    if use_stress:
        volume = torch.linalg.det(batch.g.cell).abs().clamp_min(1e-12)
        ds = (virial / volume[:, None, None] - batch.stress)[batch.stress_mask]
        loss = loss + training.stress_weight * (ds**2).mean()
        s_abs, n_s = ds.abs().detach().sum().item(), ds.numel()
    stats = {
        "s_abs": s_abs,
        "n_s": n_s,
        "e_abs": (de.abs() * batch.n).detach().sum().item(),
        "e_abs_atom": de.abs().detach().sum().item(),
        "f_abs": df.abs().detach().sum().item(),
        "f_sq": (df**2).detach().sum().item(),
        "n_geo": batch.g.n_graphs,
        "n_comp": df.numel(),
    }
    return loss, stats


def _evaluate(core, batches: Sequence[_Batch], training: TrainingSpec) -> dict[str, float]:
    total = 0.0
    acc = {"e_abs": 0.0, "e_abs_atom": 0.0, "f_abs": 0.0, "f_sq": 0.0, "s_abs": 0.0, "n_s": 0, "n_geo": 0, "n_comp": 0}
    for batch in batches:
        loss, stats = _loss(core, batch, training, create_graph=False)
        total += loss.item() * stats["n_geo"]
        for k in acc:
            acc[k] += stats[k]
    n_geo = max(acc["n_geo"], 1)
    return {
        "loss": total / n_geo,
        "energy_mae": acc["e_abs"] / n_geo,
        "energy_mae_per_atom": acc["e_abs_atom"] / n_geo,
        "force_mae": acc["f_abs"] / max(acc["n_comp"], 1),
        "force_rmse": math.sqrt(acc["f_sq"] / max(acc["n_comp"], 1)),
        "stress_mae": acc["s_abs"] / acc["n_s"] if acc["n_s"] else None,
    }


def _check_inputs(atoms_list, energies, forces, stresses) -> None:
    n = len(atoms_list)
    if n == 0:
        raise ValueError("no training geometries")
    if len(energies) != n or len(forces) != n:
        raise ValueError(f"{n} geometries but {len(energies)} energies and {len(forces)} force arrays")
    if stresses is not None and len(stresses) != n:
        raise ValueError(f"{n} geometries but {len(stresses)} stresses")
    for k, (atoms, f) in enumerate(zip(atoms_list, forces)):
        if np.shape(f) != (len(atoms), 3):
            raise ValueError(f"geometry {k}: forces shape {np.shape(f)}, expected ({len(atoms)}, 3)")
    if not np.all(np.isfinite(np.asarray(energies, dtype=float))):
        raise ValueError("energies contain NaN or inf")


def train_member(
    train_atoms: Sequence[Atoms],
    energies: Sequence[float],
    forces: Sequence[np.ndarray],
    stresses: Sequence[np.ndarray | None] | None,
    model: ModelSpec,
    training: TrainingSpec,
    seed: int,
    workdir: str | Path,
    init_checkpoint: str | Path | None = None,
    device: str = "auto",
    *,
    init_sha256: str | None = None,
    export: bool = True,
) -> TrainResult:
    """Train one member; write `workdir/member.pt` (+ `member.spk.pt` when `export` and
    the representation has a SchNetPack form: not for "coordinates").

    Energies in eV, forces in eV/Å, stresses in eV/Å³ (ASE sign, (3, 3) or Voigt; None
    for frames without one). `init_checkpoint` warm-starts from a previous member when
    `training.warm_start` is true (its hash is checked against `init_sha256` or its
    sidecar). Metrics: ``val_energy_mae`` [eV/geometry], ``val_energy_mae_per_atom``,
    ``val_force_mae``, ``val_force_rmse`` [eV/Å], ``val_stress_mae`` [eV/Å³, None unless
    trained on stress], the same with ``train_``, ``n_train``,
    ``n_val``, ``epochs``, ``best_epoch``, ``stopped_early``, ``warm_started``,
    ``wall_s``, ``device``, ``seed``.
    """
    t0 = time.perf_counter()
    _check_inputs(train_atoms, energies, forces, stresses)
    dev = resolve_device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _torch_threads(training.threads):
        train_idx, val_idx = split_indices(train_atoms, training.val_fraction)
        if not train_idx:
            raise ValueError(
                f"all {len(train_atoms)} geometries fall in the validation split "
                f"(val_fraction={training.val_fraction}); add data or lower val_fraction"
            )
        elements = sorted({int(z) for k in train_idx for z in train_atoms[k].numbers})
        skipped = [k for k in val_idx if not set(train_atoms[k].numbers) <= set(elements)]
        val_idx = [k for k in val_idx if k not in set(skipped)]

        arch = architecture(model.model_dump(mode="json"))
        cutoff = None if uses_positions(arch) else model.cutoff  # no neighbour list
        warm = init_checkpoint is not None and training.warm_start
        train_numbers = [np.asarray(train_atoms[k].numbers) for k in train_idx]
        train_e = [float(energies[k]) for k in train_idx]
        if warm:
            member = load_member(init_checkpoint, init_sha256)
            old_arch = member.architecture
            if old_arch != arch:
                raise ValueError(f"cannot warm-start from {init_checkpoint}: architecture {old_arch} != {arch}")
            old_ref = {int(z): e for z, e in member.config["energy_reference"].items()}
            reference = fit_energy_reference(train_numbers, train_e, training.energy_reference, fixed=old_ref)
            member.config["elements"] = sorted(set(member.elements) | set(elements))
            member.config["energy_reference"] = {str(z): float(e) for z, e in sorted(reference.items())}
            member.config["seed"] = int(seed)
            torch.manual_seed(seed)
        else:
            reference = fit_energy_reference(train_numbers, train_e, training.energy_reference)
            f_train = np.concatenate([np.asarray(forces[k], float) for k in train_idx])
            scale = float(np.sqrt(np.mean(f_train**2))) or 1.0
            member = new_member(arch, elements, reference, seed, energy_scale=scale)
        member.config["model"] = model.model_dump(mode="json")
        member.config["training"] = training.model_dump()

        def sample(k: int) -> _Sample:
            nums = train_atoms[k].numbers
            ref = sum(reference[int(z)] for z in nums)
            s = None
            if stresses is not None and stresses[k] is not None and train_atoms[k].pbc.all():
                s = _as_3x3(stresses[k])
            return _Sample(geometry_graph(train_atoms[k], cutoff), float(energies[k]) - ref,
                           np.asarray(forces[k], dtype=np.float64), s)

        samples = {k: sample(k) for k in [*train_idx, *val_idx]}
        rng = np.random.default_rng(seed)
        pool = np.asarray(train_idx)
        if training.bootstrap:
            pool = rng.choice(pool, size=len(pool), replace=True)
        val_batches = [_Batch([samples[k] for k in val_idx[i : i + 256]], dev) for i in range(0, len(val_idx), 256)]

        net = member.model.to(dev).float().train()
        core = member.core()
        optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, training.patience // 4)
        )
        on_val = len(val_idx) >= training.min_val_frames
        best = (math.inf, copy.deepcopy(net.state_dict()), 0)
        bad, epoch, stopped = 0, 0, False
        for epoch in range(1, training.max_epochs + 1):
            order = rng.permutation(pool)
            train_loss, n_seen = 0.0, 0
            for i in range(0, len(order), training.batch_size):
                batch = _Batch([samples[k] for k in order[i : i + training.batch_size]], dev)
                loss, stats = _loss(core, batch, training, create_graph=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                train_loss += loss.item() * stats["n_geo"]
                n_seen += stats["n_geo"]
            score = _evaluate(core, val_batches, training)["loss"] if on_val else train_loss / n_seen
            scheduler.step(score)
            if score < best[0]:
                best, bad = (score, copy.deepcopy(net.state_dict()), epoch), 0
            else:
                bad += 1
                if bad >= training.patience:
                    stopped = True
                    break
        net.load_state_dict(best[1])
        net.eval()

        train_eval = [_Batch([samples[k] for k in train_idx[i : i + 256]], dev) for i in range(0, len(train_idx), 256)]
        metrics: dict[str, Any] = {f"train_{k}": v for k, v in _evaluate(core, train_eval, training).items()}
        val_metrics = _evaluate(core, val_batches, training) if val_batches else {}
        for k in ("loss", "energy_mae", "energy_mae_per_atom", "force_mae", "force_rmse", "stress_mae"):
            metrics[f"val_{k}"] = val_metrics.get(k)
        metrics.update(
            n_train=len(train_idx), n_val=len(val_idx), n_val_skipped_unknown_element=len(skipped),
            epochs=epoch, best_epoch=best[2], stopped_early=stopped, warm_started=warm,
            selected_on="validation" if on_val else "training",
            bootstrap=training.bootstrap, seed=int(seed), device=str(dev),
        )
        member.model = net.to("cpu")
        metrics["wall_s"] = time.perf_counter() - t0
        member.config["metrics"] = metrics
        ckpt = workdir / "member.pt"
        digest = save_member(member, ckpt)
        spk_path = spk_digest = None
        if export and member.has_schnetpack_form:
            spk_path = workdir / "member.spk.pt"
            spk_digest = export_schnetpack(member, spk_path)
    metrics["wall_s"] = time.perf_counter() - t0
    return TrainResult(ckpt, digest, metrics, spk_path, spk_digest, member.config)
