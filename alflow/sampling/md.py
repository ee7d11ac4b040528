"""MD walkers: batched Langevin NVT that stops where the model stops being trusted.

The one MD of alflow: NN-MD sampling with the ensemble, and the validation's NN-MD and
reference MD (an ASE calculator behind `alflow.potentials.CalculatorModel`) all run here,
with one stop vocabulary and one settings object (`alflow.spec.MDSettings`).

Why a walker: MD with the current ensemble visits the thermally accessible geometries the
model believes in; where the ensemble disagrees (σ_F rises) or the physics breaks, the
walker has left what the model knows, and the frames just before are what to label next.

Integrator: our own vectorised BAOAB Langevin (Leimkuhler & Matthews) over *all* walkers,
so every step is ONE batched `ensemble.predict` over the active walkers. Measured
(benchmarks/attack_cost.py, ethanol, M=4 PaiNN-64, 1 CPU thread): 121 steps/s for one
walker, 342 walker-steps/s for 8 and 405 for 64 (3.3× per geometry; the integrator and
guards are ~5 % of a step). ASE supplies only units and the Maxwell–Boltzmann velocities. One step of length dt, friction γ, kT = k_B T:

    B  v += dt/2 · F/m            A  x += dt/2 · v
    O  v  = c v + sqrt((1 − c²) kT/m) ξ,   c = exp(−γ dt)
    A  x += dt/2 · v              (guards on x, then F(x) from the ensemble)
    B  v += dt/2 · F/m

With γ = 0 this is velocity Verlet (NVE); tests check its energy conservation. Periodic
cells run NVT at fixed cell: there is no batched barostat here (ASE's NPT integrators work
on one Atoms at a time and would undo the batching).

Stopping, checked every step in this order (a broken geometry is never labelled):

- ``min_distance``: two atoms closer than `settings.min_distance` (minimum image);
- ``bond_guard``: a bond (pair closer than `bond_tolerance`·(r_cov,i + r_cov,j) in the
  seed) longer or shorter than its seed length by more than `settings.bond_guard` Å
  (the "Forces are not enough" stability criterion);
- ``energy_blowup``: |E − E₀|/n above `energy_blowup_per_atom` (eV/atom), or E or F not
  finite;
- ``trust_hi``: the frame's σ_F = sqrt(σ_F²) [eV/Å] ≥ `trust_hi` — the same frame scalar
  the selection buckets by, so a walker runs exactly as long as its frames can still be
  candidates. ``stop_on="atom"`` uses sqrt(max_i u_i) instead (stricter: catches one
  uncertain atom in a large frame; σ_F² = mean_i u_i ≤ max_i u_i);
- ``max_steps``: `settings.steps` done.

Frames returned (relation "md"): every `save_every` steps; on ``trust_hi`` the frame that
tripped it and the last frame below it (the most uncertain frame still a candidate); on a
physical guard the last good frame before the broken one. The seed itself (step 0) is
never returned. Every step's max and mean u_i are kept per walker (`WalkerRecord`).

`model` is anything with ``predict(atoms_list, batch_size=...) -> Prediction`` (an
`Ensemble`, or a `CalculatorModel` around an ASE calculator, whose uncertainty is NaN and so
never trips trust_hi).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from scipy.spatial.distance import pdist

from alflow.bonds import bond_list
from alflow.potentials.graph import neighbour_list
from alflow.sampling.base import Candidate
from alflow.spec import MDSettings

StopReason = Literal["trust_hi", "bond_guard", "min_distance", "energy_blowup", "max_steps"]
PHYSICAL_STOPS: frozenset[str] = frozenset({"bond_guard", "min_distance", "energy_blowup"})
BATCH_SIZE = 64  # geometries per model call


@dataclass(frozen=True, eq=False)
class WalkerRecord:
    """One walker's story. `steps`: the last step whose frame was evaluated and recorded
    (frames 0..steps); `stop_step`: the step that tripped `stop_reason`; `sigma_f_stop`:
    the trust scalar of the tripping frame (eV/Å: σ_F, or sqrt(max u_i) with
    stop_on="atom"; None for other stops); per evaluated frame (index = step, 0 = seed):
    `u_max`, `u_mean` [eV²/Å²], `epot`, `ekin` [eV]."""

    walker: int
    parent: int
    steps: int
    stop_reason: StopReason
    stop_step: int
    sigma_f_stop: float | None
    n_frames: int
    u_max: np.ndarray
    u_mean: np.ndarray
    epot: np.ndarray
    ekin: np.ndarray

    def stability_time_fs(self, timestep_fs: float, total_steps: int) -> float:
        """Time of the first physically broken frame, or the whole run if none broke."""
        step = self.stop_step if self.stop_reason in PHYSICAL_STOPS else total_steps
        return float(step * timestep_fs)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("u_max", "u_mean", "epot", "ekin"):
            out[k] = [v if math.isfinite(v) else None for v in np.asarray(out[k], float).tolist()]
        return out


@dataclass(frozen=True, eq=False)
class MDResult:
    """Candidates of all walkers (sorted by walker, then step) and one record per walker."""

    candidates: list[Candidate]
    walkers: list[WalkerRecord] = field(default_factory=list)

    def frames_of(self, walker: int) -> list[Candidate]:
        return [c for c in self.candidates if c.info["walker"] == walker]


def _walker_seeds(n: int, rng_seed: int) -> list[np.random.Generator]:
    """One independent generator per walker: a walker's noise does not depend on others."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(rng_seed).spawn(n)]


class _Walker:
    """One trajectory's fixed data and bookkeeping (state lives in the batched arrays)."""

    def __init__(self, index: int, parent: int, seed: Atoms, bond_tolerance: float):
        self.index, self.parent = index, parent
        self.template = seed.copy()
        self.template.calc = None
        self.n = len(seed)
        bonds = bond_list(seed, bond_tolerance).unique()
        self.bi, self.bj, self.boff = bonds.i, bonds.j, bonds.offsets(seed.positions)
        self.b0 = bonds.lengths
        self.active = True
        self.steps = 0
        self.stop_reason: StopReason | None = None
        self.stop_step: int | None = None
        self.sigma_f_stop: float | None = None
        self.u_max: list[float] = []
        self.u_mean: list[float] = []
        self.epot: list[float] = []
        self.ekin: list[float] = []
        self.saved: set[int] = set()
        self.last: tuple[int, np.ndarray, dict[str, Any]] | None = None  # last evaluated frame

    def atoms_at(self, positions: np.ndarray) -> Atoms:
        a = self.template.copy()
        a.positions = positions
        return a

    def geometry_guard(self, x: np.ndarray, min_distance: float, bond_guard: float) -> StopReason | None:
        if not np.all(np.isfinite(x)):
            return "energy_blowup"
        t = self.template
        if self.n > 1:
            if not t.pbc.any() and self.n <= 256:  # small molecule: all pairs is cheapest
                too_close = pdist(x).min() < min_distance
            else:  # minimum image, O(n): a cell list
                too_close = len(neighbour_list(t.numbers, x, t.cell.array, t.pbc, min_distance)[0]) > 0
            if too_close:
                return "min_distance"
        if len(self.bi):
            d = np.linalg.norm(x[self.bj] - x[self.bi] + self.boff, axis=1)
            if np.any(np.abs(d - self.b0) > bond_guard):
                return "bond_guard"
        return None

    def stop(self, reason: StopReason, step: int, sigma_f: float | None = None) -> None:
        self.active, self.stop_reason, self.stop_step, self.sigma_f_stop = False, reason, step, sigma_f

    def record(self) -> WalkerRecord:
        return WalkerRecord(
            walker=self.index, parent=self.parent, steps=self.steps,
            stop_reason=self.stop_reason or "max_steps", stop_step=int(self.stop_step or 0),
            sigma_f_stop=self.sigma_f_stop, n_frames=len(self.saved),
            u_max=np.asarray(self.u_max), u_mean=np.asarray(self.u_mean),
            epot=np.asarray(self.epot), ekin=np.asarray(self.ekin),
        )


def run_md(
    model,
    seeds: Sequence[Atoms],
    settings: MDSettings,
    *,
    rng_seed: int,
    trust_hi: float = math.inf,
) -> MDResult:
    """Run one Langevin walker from each of `seeds` with `model` until a stop rule trips.

    `trust_hi` is in eV/Å, on sqrt(σ_F²) (or sqrt(max u_i) with ``settings.stop_on ==
    "atom"``); infinite by default (validation and reference MD never stop on it). A seed
    listed k times gives k independent walkers. ``settings.friction_per_fs == 0`` is NVE.
    Reproducible: the same inputs and `rng_seed` give the same trajectories, and a walker's
    trajectory does not depend on the other walkers.
    """
    seeds = list(seeds)
    walkers = [_Walker(k, k, s, settings.bond_tolerance) for k, s in enumerate(seeds)]
    if not walkers:
        return MDResult([], [])
    gens = _walker_seeds(len(walkers), rng_seed)

    # flat state over all walkers' atoms
    sizes = np.array([w.n for w in walkers])
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sl = [slice(s, s + n) for s, n in zip(start, sizes)]
    atom_walker = np.repeat(np.arange(len(walkers)), sizes)
    x = np.concatenate([w.template.positions for w in walkers]).astype(np.float64)
    masses = np.concatenate([w.template.get_masses() for w in walkers])[:, None]
    kT = units.kB * settings.temperature_K
    v = np.empty_like(x)
    for w, g, s in zip(walkers, gens, sl):
        a = w.template.copy()
        MaxwellBoltzmannDistribution(a, temperature_K=settings.temperature_K, rng=g)
        if w.n > 1:
            Stationary(a)
            if not a.pbc.any():
                ZeroRotation(a)
        v[s] = a.get_velocities()

    dt = settings.timestep_fs * units.fs
    gamma_dt = settings.friction_per_fs * settings.timestep_fs
    c1 = np.exp(-gamma_dt)
    c2 = np.sqrt(max(0.0, 1.0 - c1 * c1))
    sigma_v = np.sqrt(kT / masses)
    f = np.zeros_like(x)
    e0 = np.zeros(len(walkers))
    candidates: list[Candidate] = []

    def frame_scalar(pred: dict[str, Any]) -> float:
        u = pred["u"]
        val = np.max(u) if settings.stop_on == "atom" else pred["sigma_f2"]
        return float(np.sqrt(max(val, 0.0)))

    def save(w: _Walker, step: int, pos: np.ndarray, pred: dict[str, Any], event: str, sigma0: float) -> None:
        if step == 0 or step in w.saved:
            return
        w.saved.add(step)
        atoms = w.atoms_at(pos)
        if atoms.pbc.any():
            atoms.wrap()
        candidates.append(Candidate(
            atoms=atoms, parent=w.parent, relation="md", step=step,
            sigma_f2=pred["sigma_f2"], sigma_f2_initial=sigma0, energy_mean=pred["energy"],
            atomic_uncertainty=pred["u"],
            info={"walker": w.index, "event": event, "temperature_K": settings.temperature_K},
        ))

    def evaluate(active: list[int]) -> dict[int, dict[str, Any]]:
        batch = [walkers[k].atoms_at(x[sl[k]]) for k in active]
        out = model.predict(batch, batch_size=BATCH_SIZE)
        res = {}
        for b, k in enumerate(active):
            res[k] = {"energy": float(out.energy[b]), "sigma_f2": float(out.sigma_f2[b]),
                      "u": np.asarray(out.atomic_uncertainty[b], dtype=np.float64),
                      "forces": np.asarray(out.forces[b], dtype=np.float64)}
        return res

    def ekin(k: int) -> float:
        return float(0.5 * np.sum(masses[sl[k]] * v[sl[k]] ** 2))

    sigma_init = np.zeros(len(walkers))

    def observe(k: int, step: int, pred: dict[str, Any]) -> None:
        """Record frame `step` of walker k; decide energy/trust stops; save frames."""
        w = walkers[k]
        e, u = pred["energy"], pred["u"]
        if step == 0:
            e0[k] = e
            sigma_init[k] = pred["sigma_f2"]
        finite = np.isfinite(e) and np.all(np.isfinite(pred["forces"]))  # u is NaN for M=1
        if not finite or abs(e - e0[k]) / w.n > settings.energy_blowup_per_atom:
            w.stop("energy_blowup", step)
            if w.last is not None:
                save(w, *w.last, "before_energy_blowup", sigma_init[k])
            return
        w.steps = step
        w.u_max.append(float(np.max(u)) if len(u) else 0.0)
        w.u_mean.append(float(np.mean(u)) if len(u) else 0.0)
        w.epot.append(e)
        w.ekin.append(ekin(k))
        s = frame_scalar(pred)
        if s >= trust_hi:
            w.stop("trust_hi", step, s)
            if w.last is not None:
                save(w, *w.last, "last_below_trust_hi", sigma_init[k])
            save(w, step, x[sl[k]].copy(), pred, "trust_hi", sigma_init[k])
            return
        if step > 0 and step % settings.save_every == 0:
            save(w, step, x[sl[k]].copy(), pred, "periodic", sigma_init[k])
        w.last = (step, x[sl[k]].copy(), pred)

    # step 0: the seeds themselves
    for k, w in enumerate(walkers):
        reason = w.geometry_guard(x[sl[k]], settings.min_distance, np.inf)
        if reason is not None:
            w.stop(reason, 0)
    active = [k for k, w in enumerate(walkers) if w.active]
    if active:
        for k, pred in evaluate(active).items():
            f[sl[k]] = pred["forces"]
            observe(k, 0, pred)

    for step in range(1, settings.steps + 1):
        active = [k for k, w in enumerate(walkers) if w.active]
        if not active:
            break
        mask = np.zeros(len(walkers), bool)
        mask[active] = True
        on = mask[atom_walker][:, None]
        noise = np.concatenate([g.standard_normal((w.n, 3)) for g, w in zip(gens, walkers)])
        v_new = v + 0.5 * dt * f / masses                       # B
        x_new = x + 0.5 * dt * v_new                            # A
        v_new = c1 * v_new + c2 * sigma_v * noise               # O
        x_new = x_new + 0.5 * dt * v_new                        # A
        x = np.where(on, x_new, x)
        v = np.where(on, v_new, v)
        evaluate_now = []
        for k in active:
            reason = walkers[k].geometry_guard(x[sl[k]], settings.min_distance, settings.bond_guard)
            if reason is None:
                evaluate_now.append(k)
                continue
            w = walkers[k]
            w.stop(reason, step)
            if w.last is not None:
                save(w, *w.last, f"before_{reason}", sigma_init[k])
        if not evaluate_now:
            continue
        for k, pred in evaluate(evaluate_now).items():
            f[sl[k]] = pred["forces"]
            v[sl[k]] += 0.5 * dt * f[sl[k]] / masses[sl[k]]     # B
            observe(k, step, pred)

    for w in walkers:
        if w.active:
            w.stop("max_steps", w.steps)
    candidates.sort(key=lambda c: (c.info["walker"], c.step))
    return MDResult(candidates, [w.record() for w in walkers])
