"""Ensemble inference: M members together vs M single-model passes, and the attack gradient.

Inputs: 64 rattled ethanols (9 atoms), M=4 PaiNN members of the default ModelSpec
(64 features, 3 interactions, 5 Å), float32, one torch thread (unless --threads).

Printed, per configuration, the median of --repeats interleaved timed runs after a warm-up:
- batched: `Ensemble(4 members).predict(frames)` (one neighbour list, one backward);
- loop:    4 × `Ensemble([member]).predict(frames)`, each a full single-model pass
           (own neighbour lists, own forward/backward) — the TARGET baseline;
- spk loop: 4 × SchNetPack's own path, `model(AtomsConverter(frames))`, for reference;
- grad:    ∂(Σ σ_F²)/∂R by second-order autograd (`predict_torch`), relative to one
           ensemble energy+forces pass on the same batch.

Ends with `TARGET batched_vs_loop <ratio> 2.0 PASS|MISS` (PASS iff ratio ≥ 2.0).

    .venv/bin/python benchmarks/ensemble_inference.py [--frames 64] [--repeats 7]
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
from alflow.spec import ModelSpec  # noqa: E402


def timed(configs: dict, repeats: int) -> dict[str, float]:
    """Median seconds per configuration; rounds interleave the configurations so that
    drift in machine load hits all of them alike."""
    for fn in configs.values():
        fn()  # warm-up (allocator, vmap tracing)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def tune_malloc() -> None:
    """Keep freed memory in the process (glibc): fewer page faults, steadier timings."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune-malloc", action="store_true", help="glibc: keep freed memory (fewer page faults)")
    args = ap.parse_args()
    if args.tune_malloc:
        tune_malloc()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.frames):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        frames.append(a)
    spec = ModelSpec()
    arch = {k: getattr(spec, k) for k in ("representation", "n_atom_basis", "n_interactions", "n_rbf", "cutoff")}
    members = [new_member(arch, [1, 6, 8], {1: -13.6, 6: -1030.0, 8: -2040.0}, seed=k) for k in range(args.members)]
    m, b = args.members, args.frames
    print(f"# {b} ethanol frames, M={m} PaiNN-{spec.n_atom_basis} x{spec.n_interactions}, "
          f"cutoff {spec.cutoff} Å, float32, torch threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, device cpu, malloc tuned={args.tune_malloc}")

    batched = {s: Ensemble(members, device="cpu", strategy=s) for s in ("loop", "vmap")}
    singles = [Ensemble([mem], device="cpu") for mem in members]

    import schnetpack as spk

    converter = spk.interfaces.AtomsConverter(
        neighbor_list=spk.transform.VesinNeighborList(cutoff=spec.cutoff), dtype=torch.float32
    )
    spk_models = [mem.model.float().eval() for mem in members]

    def spk_loop():
        for model in spk_models:
            model(converter(frames))["forces"].detach().numpy()

    ens = batched["loop"]
    pos0 = torch.tensor(np.concatenate([a.positions for a in frames]))

    def attack_grad():
        pos = pos0.clone().requires_grad_(True)
        out = ens.predict_torch(frames, pos)
        torch.autograd.grad(out.sigma_f2.sum(), pos)

    t = timed(
        {
            "loop": lambda: batched["loop"].predict(frames),
            "vmap": lambda: batched["vmap"].predict(frames),
            "singles": lambda: [e.predict(frames) for e in singles],
            "spk": spk_loop,
            "plain": lambda: ens.predict_torch(frames),
            "grad": attack_grad,
        },
        args.repeats,
    )
    t_batched = {"loop": t["loop"], "vmap": t["vmap"]}
    t_loop, t_spk, t_plain, t_grad = t["singles"], t["spk"], t["plain"], t["grad"]

    print(f"{'configuration':<44}{'ms':>10}{'geoms/s':>12}")
    rows = [
        ("batched ensemble (strategy=loop, default)", t_batched["loop"]),
        ("batched ensemble (strategy=vmap)", t_batched["vmap"]),
        (f"loop of {m} single-member alflow passes", t_loop),
        (f"loop of {m} SchNetPack model(AtomsConverter)", t_spk),
        ("ensemble energy+forces (predict_torch)", t_plain),
        ("ensemble + d(sum sigma_F^2)/dR (2nd order)", t_grad),
    ]
    for name, sec in rows:
        print(f"{name:<44}{sec * 1e3:>10.1f}{b / sec:>12.0f}")
    default = Ensemble(members, device="cpu").strategy  # what users get ("auto")
    best = t_batched[default]
    ratio = t_loop / best
    print(f"batched vs spk-native loop: {t_spk / best:.2f}x")
    print(f"grad cost / energy+forces pass: {t_grad / t_plain:.2f}x")
    print(f"TARGET batched_vs_loop {ratio:.2f} 2.0 {'PASS' if ratio >= 2.0 else 'MISS'}")


if __name__ == "__main__":
    main()
