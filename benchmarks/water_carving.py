"""Liquid water from carved clusters: the water_carving campaign run to a result with GFN2-xTB.

What it shows: a potential trained only on non-periodic clusters carved out of a periodic
64-molecule box (attribution picks the uncertain atoms, carving cuts whole molecules within
the carving radius around them) runs NN-MD of the periodic box itself, and its O–O radial
distribution function can be set beside experiment. The workflow is
`workflows/water_carving.yaml` with the oracle swapped for GFN2-xTB (tblite: ~0.15 s per
~60-atom cluster on one core, where HF/STO-3G takes seconds to a minute) and the model,
training and samplers cut down to fit one core of a shared 2-core machine (`EDITS` below
says exactly what is changed and why).

Steps:
1. the campaign, through the engine on the in-process backend (`_molecules.run_inline`):
   generation 0 labels clusters carved around `initial_centres` random O atoms of the box;
   each generation trains an M-member PaiNN ensemble on every label so far, runs NN-MD
   walkers and adversarial attacks on the periodic box, carves clusters around the atoms
   its attribution flags, selects and labels them (GFN2-xTB on the clusters only);
2. NN-MD of the periodic box with the final generation's ensemble (the production path,
   `alflow.sampling.production.run_production_md`: BAOAB Langevin NVT, 0.5 fs, every step's
   calibrated σ_F recorded, flagged above the campaign's trust_hi, never stopped on it);
3. O–O g(r) (minimum image, ideal-gas normalised) over the frames after `--equil-ps`, its
   first peak (position, height: parabola through the highest bin and its neighbours),
   beside experiment (Skinner et al., J. Chem. Phys. 138, 074506 (2013): first peak at
   2.80 Å, g_max 2.57). A GFN2-xTB MD of the box as a second reference was measured at
   ~38 s per step on this machine (192 atoms, periodic) and is not run.

Tuning (seed 1, the only tuning run; seed 100 is the reported one): the first run used the
`EDITS` below with 16 initial centres; it took 14 min for 3 generations (training ~45 s per
member, MD sampling with carving ~2 min per generation, labelling ~2 s per 8 clusters) and
gave 2 held-out clusters only, so `initial_centres` went to 24 (~5 held out). Its NN-MD ran
at ~0.34 s per step of the box (M=3, one thread, loaded machine), which sets the NN-MD
length of the reported run (`--md-ps`). Nothing else was changed after seeing a result.

Prints a per-generation table (labels, carved cluster sizes, oracle calls and seconds,
held-out cluster force MAE), the NN-MD stability record and the peak figures; writes
`benchmarks/out/water_carving_rdf.png` and `.json`. No target: this is a result, so the
summary lines are `RESULT ...` lines, not TARGET lines.

    python benchmarks/water_carving.py [--seed 100] [--md-ps 5]

Measured (seed 100, shared 2-core machine, 2026-12-02; out/water_carving_seed100.log):
before carving's lone-hydrogen rule (out/*_before_lone_h_fix.*), the attacks' stretched O-H
(1.22 A) made generation 1's clusters OH radicals (11 of 16 SCF failures), and NN-MD of the box
stopped on min_distance at 229 fs (O-O peak 3.07 A / 2.10 over those 229 fs). With the rule
(same seed and settings, --md-ps 1.5 --equil-ps 0.3): 56 of 56 labels ok, 1219 s campaign,
NN-MD 1500 of 1500 fs (calibrated sigma_F median 0.112, max 0.124 eV/A), O-O first peak
2.864 A, height 2.45 (experiment 2.80 A, 2.57), no distinct second shell near 4.5 A; force MAE
on 24 liquid clusters carved from its own NN-MD frames 0.519 / 0.134 / 0.066 eV/A for
generations 0 / 1 / 2 (each run carves its own liquid clusters: not the same set as before).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "out"

EXPERIMENT = {"source": "Skinner et al., J. Chem. Phys. 138, 074506 (2013), X-ray, 295 K",
              "r_peak": 2.80, "g_peak": 2.57}

# What changes from workflows/water_carving.yaml, and why (tuned on seeds < 10, see --help):
EDITS = {
    # GFN2-xTB on the clusters: a method that labels a 60-atom cluster in ~0.15 s on one core
    "oracle": {"kind": "ase", "calculator": "tblite", "settings": {"method": "GFN2-xTB"}},
    # PaiNN-32x3 (not 64x3) and M=3 (not 4): training is the cost of a generation here
    "model": {"representation": "painn", "n_atom_basis": 32, "n_interactions": 3, "n_rbf": 20,
              "cutoff": 4.5, "ensemble_size": 3},
    "training": {"max_epochs": 60, "batch_size": 4, "learning_rate": 1.0e-3, "energy_weight": 0.5,
                 "forces_weight": 0.5, "patience": 15},
    # 2 walkers of 200 steps (100 fs) and 2 short attacks on the 192-atom box per generation
    "samplers": [
        {"kind": "md", "temperature_K": 300, "timestep_fs": 0.5, "friction_per_fs": 0.01,
         "steps": 200, "walkers": 2, "save_every": 20},
        {"kind": "adversarial", "kT_eV": 0.5, "steps": 20, "learning_rate": 0.005, "init_std": 0.01,
         "max_displacement": 0.2, "seeds": 2, "remove_rigid": True},
    ],
    "carving": {"enabled": True, "radius": 5.0, "z_score": 2.0, "use_force_variance": False,
                "initial_centres": 24},
    "selection": {"trust_lo": 0.05, "trust_hi": 0.4, "max_per_generation": 16, "dedupe_tol": 0.01,
                  "strategy": "farthest_point"},
    "evaluation": {"test_fraction": 0.2, "label_batch_size": 8},
    "stopping": {"max_generations": 3, "oracle_budget": 200, "max_failed_fraction": 0.3},
}


def campaign_spec(seed: int, generations: int, epochs: int | None) -> dict:
    spec = yaml.safe_load((ROOT / "workflows" / "water_carving.yaml").read_text())
    for source in spec["initial_geometries"]:
        source["path"] = str(ROOT / "workflows" / source["path"])
    spec.update(json.loads(json.dumps(EDITS)))
    spec["stopping"]["target_force_mae"] = None
    spec["stopping"]["max_generations"] = generations
    if epochs is not None:
        spec["training"]["max_epochs"] = epochs
    spec["name"] = f"water_carving_xtb_s{seed}"
    spec["seed"] = seed
    return spec


# ------------------------------------------------------------------------ RDF
def oo_rdf(frames, r_max: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """O–O g(r) over `frames` (periodic, any cell): minimum-image distances, each shell
    normalised by the ideal-gas count N_O·ρ_O·4πr²dr. r_max must stay below half the
    shortest cell height (checked), where minimum image gives every pair once."""
    from ase.geometry import get_distances

    edges = np.linspace(0.0, r_max, bins + 1)
    hist = np.zeros(bins)
    n_o = None
    volume = 0.0
    for a in frames:
        o = a.positions[a.numbers == 8]
        n_o = len(o)
        cell = a.cell
        heights = a.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        if r_max > heights.min() / 2:
            raise ValueError(f"r_max {r_max} Å exceeds half the cell height ({heights.min() / 2:.2f} Å)")
        _, d = get_distances(o, cell=cell, pbc=a.pbc)
        d = d[np.triu_indices(n_o, k=1)]
        hist += np.histogram(d, bins=edges)[0]
        volume += a.cell.volume
    t = len(frames)
    rho = n_o / (volume / t)
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = hist / (t * 0.5 * n_o * rho * shell)  # pairs counted once: N/2 per-atom normalisation
    return 0.5 * (edges[1:] + edges[:-1]), g


def first_peak(r: np.ndarray, g: np.ndarray, lo: float = 2.3, hi: float = 3.3) -> tuple[float, float]:
    """Position and height of the highest g(r) in [lo, hi] Å, refined by the parabola through
    that bin and its two neighbours (the bin width, not noise, would otherwise set the
    position's resolution)."""
    idx = np.flatnonzero((r >= lo) & (r <= hi))
    k = idx[np.argmax(g[idx])]
    y0, y1, y2 = g[k - 1], g[k], g[k + 1]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    dr = r[1] - r[0]
    return float(r[k] + shift * dr), float(y1 - 0.25 * (y0 - y2) * shift)


# ------------------------------------------------------------------------ campaign facts
def generation_table(url: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    rows = []
    with engine.connect() as c:
        gens = c.execute(sa.text("SELECT id, idx, state FROM generation ORDER BY idx")).all()
        for gid, idx, state in gens:
            labels = c.execute(sa.text(
                "SELECT geo.natoms, l.status, l.wall_s FROM label l JOIN task t ON t.id = l.task_id "
                "JOIN geometry geo ON geo.id = l.geometry_id WHERE t.generation_id = :g"), {"g": gid}).all()
            ev = c.execute(sa.text(
                "SELECT force_mae, energy_mae, n_frames, calibration_scale FROM model_eval "
                "WHERE generation_id = :g AND model_id IS NULL AND eval_set = 'test' ORDER BY id"),
                {"g": gid}).first()
            sizes = [n for n, _, _ in labels]
            rows.append({
                "generation": idx, "state": state, "oracle_calls": len(labels),
                "ok": sum(s == "ok" for _, s, _ in labels),
                "atoms_min": min(sizes, default=0), "atoms_median": float(np.median(sizes)) if sizes else 0,
                "atoms_max": max(sizes, default=0), "cost_n3": float(sum(float(n) ** 3 for n in sizes)),
                "oracle_wall_s": float(sum(w or 0.0 for _, _, w in labels)),
                "test_force_mae": None if ev is None else ev[0],
                "test_energy_mae": None if ev is None else ev[1],
                "test_frames": None if ev is None else ev[2],
                "calibration_scale": None if ev is None else ev[3],
            })
        stop = c.execute(sa.text("SELECT stop_reason FROM campaign")).scalar()
    return rows, stop


def ensembles(url: str, name: str) -> list[tuple[int, object, float, float]]:
    """Every generation with ≥ 2 trained members: (index, ensemble, calibration scale,
    trust_hi in calibrated eV/Å), oldest first; the checkpoints are hash-verified."""
    import sqlalchemy as sa

    from alflow.db import models as m
    from alflow.engine.campaign import load_context
    from alflow.potentials.ensemble import Ensemble

    ctx = load_context(url, name)
    out = []
    with ctx.Session() as s:
        gens = s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == ctx.id)
                         .order_by(m.Generation.idx)).all()
        for gen in gens:
            ref, ids = ctx.ensemble(s, gen.id)
            if len(ids) >= 2:
                ens = Ensemble.load(list(ref.checkpoints), list(ref.sha256s), device="cpu")
                out.append((gen.idx, ens, ctx.calibration_scale(s, gen.id), ctx.thresholds(s, gen.id)[1]))
    if not out:
        raise RuntimeError("no generation has a trained ensemble")
    return out


def liquid_clusters(frames, n: int, radius: float, seed: int):
    """`n` clusters carved (whole molecules, radius Å) around random O atoms of random NN-MD
    frames, labelled with GFN2-xTB: a held-out set from the liquid the final potential
    visits, which the campaign's own test set (clusters of the starting grid) is not."""
    from alflow.oracles.ase_calc import build_calculator
    from alflow.sampling.carving import carve_clusters

    rng = np.random.default_rng(seed)
    atoms, energies, forces = [], [], []
    for _ in range(5 * n):
        if len(atoms) == n:
            break
        frame = frames[int(rng.integers(len(frames)))].copy()
        frame.calc = None
        frame.info = {"charge": 0, "multiplicity": 1}
        centre = int(rng.choice(np.flatnonzero(frame.numbers == 8)))
        carved = carve_clusters(frame, [centre], radius, dedupe_tol=None).clusters
        if not carved:  # rejected (atoms too close: a frame near a collapse)
            continue
        c = carved[0].atoms
        c.calc = build_calculator("tblite", {"method": "GFN2-xTB"}, c)
        energies.append(float(c.get_potential_energy()))
        forces.append(c.get_forces().copy())
        c.calc = None
        atoms.append(c)
    return atoms, energies, forces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=100, help="report runs: 100; tuning used seeds < 10")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override training.max_epochs")
    ap.add_argument("--md-ps", type=float, default=5.0, help="NN-MD length of the box (ps)")
    ap.add_argument("--equil-ps", type=float, default=1.0, help="leading NN-MD discarded for g(r)")
    ap.add_argument("--workdir", default=None, help="keep the campaign here (default: a temp dir)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--reuse", action="store_true", help="analyse the campaign already in --workdir")
    ap.add_argument("--liquid-clusters", type=int, default=24, help="held-out clusters from the NN-MD")
    args = ap.parse_args()

    import torch
    from ase.io import read

    from _molecules import run_inline
    from alflow.sampling.production import run_production_md
    from alflow.spec import MDSettings

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="water-carving-") if args.workdir is None else None
    tmp = Path(args.workdir or tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    spec = campaign_spec(args.seed, args.generations, args.epochs)
    print(f"# water_carving with GFN2-xTB (tblite) on carved clusters, seed {args.seed}; edits of "
          f"workflows/water_carving.yaml: {json.dumps(EDITS, separators=(',', ':'))}", flush=True)

    t0 = time.perf_counter()
    db = tmp / f"{spec['name']}.db"
    if args.reuse and db.exists():  # rerun only the analysis of a finished campaign
        url = f"sqlite:///{db}"
    else:
        url = run_inline(spec, tmp, tmp / "reference")
    t_campaign = time.perf_counter() - t0
    rows, stop = generation_table(url)
    print(f"\ncampaign: {t_campaign:.0f} s wall, stop: {stop}")
    print(f"{'gen':>3} {'calls':>5} {'ok':>3} {'atoms min/med/max':>18} {'Σn³':>10} {'oracle s':>8} "
          f"{'test F MAE':>10} {'test E MAE':>10} {'n_test':>6} {'calib':>6}")
    for r in rows:
        fm = "-" if r["test_force_mae"] is None else f"{r['test_force_mae']:.4f}"
        em = "-" if r["test_energy_mae"] is None else f"{r['test_energy_mae']:.4f}"
        cs = "-" if r["calibration_scale"] is None else f"{r['calibration_scale']:.2f}"
        print(f"{r['generation']:>3} {r['oracle_calls']:>5} {r['ok']:>3} "
              f"{r['atoms_min']:>6}/{r['atoms_median']:>5.0f}/{r['atoms_max']:<5} {r['cost_n3']:>10.3e} "
              f"{r['oracle_wall_s']:>8.1f} {fm:>10} {em:>10} {str(r['test_frames']):>6} {cs:>6}")

    per_gen = ensembles(url, spec["name"])
    gen_idx, ens, scale, trust_hi = per_gen[-1]
    box = read(ROOT / "workflows" / "geometries" / "water_box_64.extxyz")
    box.info.update(charge=0, multiplicity=1)
    dt = 0.5
    steps = int(round(args.md_ps * 1000 / dt))
    save_every = 20
    md = MDSettings(temperature_K=300.0, timestep_fs=dt, friction_per_fs=0.01, steps=steps,
                    save_every=save_every, bond_guard=0.5, min_distance=0.6)
    t1 = time.perf_counter()
    res = run_production_md(ens, box, md, rng_seed=args.seed, threshold=trust_hi,
                            calibration_scale=scale, on_uncertain="flag")
    t_md = time.perf_counter() - t1
    sig = np.asarray(res.sigma_cal)
    n_eval = len(sig)
    ran_fs = res.steps * dt
    print(f"\nNN-MD of the 192-atom box with generation {gen_idx}'s ensemble (M={len(ens.members)}): "
          f"{res.steps}/{steps} steps ({ran_fs:.0f} fs) in {t_md:.0f} s ({1000 * t_md / max(n_eval, 1):.1f} ms/step), "
          f"stop: {res.stop_reason}; calibrated σ_F median {np.median(sig):.3f}, max {sig.max():.3f} eV/Å, "
          f"flagged steps (σ ≥ trust_hi {trust_hi:.2f}): {int((sig >= trust_hi).sum())}")
    quarters = np.array_split(sig, 4)
    print("σ_F by quarter of the run (median): " + ", ".join(f"{np.median(q):.3f}" for q in quarters))

    frames = [f for f in res.frames if f.info.get("time_fs", 0.0) >= args.equil_ps * 1000]
    g_from_ps = args.equil_ps
    if len(frames) < 5:  # the run ended before equilibration was over: g(r) of what it ran
        frames = [f for f in res.frames if f.info.get("step", 0) > 0]
        g_from_ps = 0.0
        print(f"NN-MD ended at {ran_fs:.0f} fs, before the {args.equil_ps:g} ps equilibration: g(r) "
              f"below is over all {len(frames)} saved frames, mostly a memory of the starting grid")
    r, g = oo_rdf(frames, r_max=6.0, bins=120)
    r_peak, g_peak = first_peak(r, g)
    r0, g0 = oo_rdf([box], r_max=6.0, bins=120)
    print(f"O–O g(r) over {len(frames)} frames ({g_from_ps:g}–{ran_fs / 1000:.2f} ps): first peak "
          f"{r_peak:.3f} Å, height {g_peak:.2f}; experiment {EXPERIMENT['r_peak']:.2f} Å, "
          f"{EXPERIMENT['g_peak']:.2f}")

    t2 = time.perf_counter()
    la, le, lf = liquid_clusters(res.frames, args.liquid_clusters, spec["carving"]["radius"], args.seed + 1)
    liquid = {}
    for idx, e_gen, _, _ in per_gen:
        pred = e_gen.predict(la)
        fmae = float(np.mean([np.abs(f - ref).mean() for f, ref in zip(pred.forces, lf)]))
        emae = float(np.mean([abs(e - ref) / len(a) for e, ref, a in zip(pred.energy, le, la)]))
        liquid[idx] = {"force_mae": fmae, "energy_mae_per_atom": emae}
    print(f"held-out liquid clusters: {len(la)} carved from the NN-MD frames (atoms "
          f"{min(map(len, la))}-{max(map(len, la))}), GFN2-xTB labels in {time.perf_counter() - t2:.0f} s")
    for idx, v in liquid.items():
        print(f"  generation {idx}'s ensemble: force MAE {v['force_mae']:.4f} eV/Å, energy MAE "
              f"{1000 * v['energy_mae_per_atom']:.2f} meV/atom")

    survived = res.stop_reason == "max_steps"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(r, g, lw=1.8, label=f"NN (carved clusters, gen {gen_idx}), NVT 300 K, "
                                f"{g_from_ps:g}–{ran_fs / 1000:.2f} ps" + ("" if survived else f" ({res.stop_reason})"))
    ax.plot(r0, g0, lw=0.8, color="0.6", ls=":", label="starting box (jittered grid)")
    ax.plot([EXPERIMENT["r_peak"]], [EXPERIMENT["g_peak"]], "k*", ms=11,
            label="experiment first peak (Skinner 2013)")
    ax.plot([r_peak], [g_peak], "o", mfc="none", color="C0", ms=9)
    ax.axhline(1.0, color="0.8", lw=0.6)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g$_{OO}$(r)")
    ax.set_xlim(2.0, 6.0)
    ax.set_ylim(0.0, max(3.5, 1.25 * float(g.max())))  # the grid's sharp shells would flatten the liquid's
    ax.set_title(f"64 H$_2$O box, O–O g(r): NN peak {r_peak:.2f} Å / {g_peak:.2f}; "
                 f"exp. 2.80 Å / 2.57", fontsize=9)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    png = out / "water_carving_rdf.png"
    fig.savefig(png, dpi=130)
    result = {"seed": args.seed, "edits": EDITS, "campaign_wall_s": t_campaign, "stop_reason": stop,
              "generations": rows, "final_generation": gen_idx, "calibration_scale": scale,
              "trust_hi": trust_hi, "md": {"steps_run": res.steps, "steps_asked": steps, "dt_fs": dt,
                                            "wall_s": t_md, "stop_reason": res.stop_reason,
                                            "sigma_cal_median": float(np.median(sig)),
                                            "sigma_cal_max": float(sig.max()),
                                            "flagged": int((sig >= trust_hi).sum())},
              "rdf": {"r": r.tolist(), "g": g.tolist(), "frames": len(frames), "from_ps": g_from_ps},
              "first_peak": {"r": r_peak, "g": g_peak}, "experiment": EXPERIMENT,
              "liquid_clusters": {"n": len(la), "per_generation": liquid}}
    (out / "water_carving_rdf.json").write_text(json.dumps(result, indent=1))
    print(f"figure: {png}")
    print(f"RESULT water_oo_first_peak_r_A {r_peak:.3f} (experiment 2.80)")
    print(f"RESULT water_oo_first_peak_g {g_peak:.2f} (experiment 2.57)")
    print(f"RESULT water_nnmd_stable_fs {ran_fs:.0f} of {steps * dt:.0f} ({'survived' if survived else res.stop_reason})")
    print(f"RESULT water_final_liquid_cluster_force_mae_eV_A {liquid[gen_idx]['force_mae']:.4f}")
    if tmp_ctx is not None:
        tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
