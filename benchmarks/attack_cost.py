"""Adversarial-attack throughput: many seeds in one ensemble pass vs one attack at a time.

Inputs: rattled ethanols (`molecule("CH3CH2OH")`, 9 atoms), M=4 PaiNN members of the default
ModelSpec (64 features, 3 interactions, 5 Å), random init (speed does not depend on the
weights), float32, one torch thread (unless --threads).

Printed: seconds per `attack(...)` call of --steps Adam steps for batch sizes 1, 8 and 64
(median of --repeats), throughput in seed·steps/s, and the time of 64 single-seed attacks
(--singles of them are run, one after the other, and scaled to 64) against one batch-64
attack. Each attack call also evaluates its seeds once before and once after the path, as
`attack` does in production. For reference, NN-MD steps/s for 1 and 8 walkers.

Ends with `TARGET attack_batch64_vs_single <ratio> 5.0 PASS|MISS` (PASS iff ratio ≥ 5.0).

    .venv/bin/python benchmarks/attack_cost.py [--steps 5] [--repeats 3] [--singles 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import molecule  # noqa: E402

from alflow.potentials.ensemble import Ensemble  # noqa: E402
from alflow.potentials.model import new_member  # noqa: E402
from alflow.sampling.adversarial import attack  # noqa: E402
from alflow.sampling.md import run_md  # noqa: E402
from alflow.spec import AdversarialSampler, MDSampler, ModelSpec  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--singles", type=int, default=64, help="single attacks actually run (scaled to 64)")
    ap.add_argument("--md-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    seeds = []
    for _ in range(64):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        seeds.append(a)
    spec = ModelSpec()
    arch = {k: getattr(spec, k) for k in ("representation", "n_atom_basis", "n_interactions", "n_rbf", "cutoff")}
    members = [new_member(arch, [1, 6, 8], {1: -13.6, 6: -1030.0, 8: -2040.0}, seed=k)
               for k in range(args.members)]
    ens = Ensemble(members, device="cpu")
    settings = AdversarialSampler(steps=args.steps, kT_eV=0.1, learning_rate=0.01)
    e_pa = np.array([-1600.0])  # only log Q's constant depends on it
    print(f"# ethanol (9 atoms), M={args.members} PaiNN-{spec.n_atom_basis} x{spec.n_interactions}, "
          f"cutoff {spec.cutoff} Å, float32, {args.steps} Adam steps per attack, "
          f"torch threads={torch.get_num_threads()}, torch {torch.__version__}, device cpu")

    def run(batch):
        return attack(ens, batch, settings, train_energies_per_atom=e_pa, rng_seed=0)

    print(f"{'batch':>6}{'s/attack call':>16}{'ms/step':>10}{'seed*steps/s':>15}")
    per_call = {}
    for b in (1, 8, 64):
        sec = median_time(lambda b=b: run(seeds[:b]), args.repeats)
        per_call[b] = sec
        print(f"{b:>6}{sec:>16.3f}{sec / args.steps * 1e3:>10.1f}{b * args.steps / sec:>15.1f}")

    n = max(1, min(64, args.singles))
    t = time.perf_counter()
    for s in seeds[:n]:
        run([s])
    singles = (time.perf_counter() - t) * 64 / n
    ratio = singles / per_call[64]
    print(f"64 single attacks: {singles:.2f} s ({n} run, scaled to 64); one batch-64 attack: "
          f"{per_call[64]:.2f} s")

    # NN-MD reference: the same batching argument for walkers. Random members with small
    # output weights (gentle forces) and loose guards, so every walker runs all its steps.
    soft = Ensemble([new_member(arch, [1, 6, 8], {1: -13.6, 6: -1030.0, 8: -2040.0}, seed=k,
                                energy_scale=0.01) for k in range(args.members)], device="cpu")
    md = MDSampler(steps=args.md_steps, save_every=10_000, temperature_K=300, bond_guard=10.0, min_distance=0.1,
                   energy_blowup_per_atom=1e9)
    for w in (1, 8, 64):
        def walk(w=w):
            res = run_md(soft, seeds[:w], md, trust_hi=np.inf, rng_seed=0)
            assert all(r.steps == args.md_steps for r in res.walkers), [r.stop_reason for r in res.walkers]
        sec = median_time(walk, 1)
        print(f"NN-MD {w:>2} walker(s): {w * args.md_steps / sec:>6.0f} walker-steps/s "
              f"({args.md_steps / sec:.0f} steps/s)")

    print(f"TARGET attack_batch64_vs_single {ratio:.2f} 5.0 {'PASS' if ratio >= 5.0 else 'MISS'}")


if __name__ == "__main__":
    main()
