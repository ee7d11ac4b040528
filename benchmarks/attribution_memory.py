"""Peak memory and CPU time of gradient attribution of one large periodic water frame.

Why: issue 17 asks that attribution (A_j = mean_k |∂S/∂r_jk|, second order) of a
10,000-atom frame fit in 8 GB. Same frames, members and measurement as
`benchmarks/scaling.py` (water_box_64 replicas rattled by 0.02 Å, M=4 PaiNN-64x3, 4.5 Å,
20 RBF, float32, random weights, one torch thread; CPU seconds of this process; peak RSS
above the RSS before the step, VmHWM reset per step), attribution only, so that one
≥ 5 GB measurement runs at a time and nothing else shares the process's peak.

    python benchmarks/attribution_memory.py [--sizes 3x3x3,4x4x3,3x3x6] [--pair-chunk N]

Default: `attribute` as the project calls it. `--pair-chunk N` calls
`Ensemble.variance_gradient` with that chunk of the lean pair path
(`alflow.potentials.fast_painn`); `--pair-chunk 0` takes the plain double-backward path
(what attribution did before the lean path), for a before/after comparison. Ends with
`TARGET attribution_peak_rss_gib_10k <GiB> 8 PASS|MISS` for the largest size if it has
≥ 10,000 atoms.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from scaling import ARCH, measured, water_box

from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import new_member
from alflow.sampling.attribution import attribute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3x3x3,4x4x3,3x3x6")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--pair-chunk", type=int, default=None,
                    help="pairs per chunk of the lean second-order path; 0: plain autograd")
    args = ap.parse_args()
    torch.set_num_threads(1)
    members = [new_member(ARCH, [1, 8], {1: -13.6, 8: -2040.0}, seed=k) for k in range(args.members)]
    ens = Ensemble(members, device="cpu")

    def run(frame):
        if args.pair_chunk is None:  # what the project runs: attribute's default
            return attribute(ens, frame)
        chunk = args.pair_chunk or None  # 0: the plain autograd path
        return ens.variance_gradient([frame], pair_chunk=chunk).abs().mean(dim=1).numpy()

    run(water_box((1, 1, 1)))  # warm-up
    print(f"# attribution, M={args.members} PaiNN-64x3, float32, 1 thread, pair_chunk={args.pair_chunk}")
    print(f"{'atoms':>7}{'pairs':>9}{'cpu s':>9}{'wall s':>9}{'peak MiB':>10}{'MiB/atom':>10}")
    last = None
    for s in args.sizes.split(","):
        frame = water_box(tuple(int(x) for x in s.split("x")))
        n = len(frame)
        pairs = len(ens.graph([frame]).idx_i)
        _, cpu, wall, mib = measured(lambda f=frame: run(f))
        print(f"{n:>7}{pairs:>9}{cpu:>9.1f}{wall:>9.1f}{mib:>10.0f}{mib / n:>10.3f}", flush=True)
        last = (n, mib)
    if last and last[0] >= 10_000:
        gib = last[1] / 1024
        print(f"TARGET attribution_peak_rss_gib_10k {gib:.2f} 8 {'PASS' if gib <= 8 else 'MISS'}")


if __name__ == "__main__":
    main()
