"""Images/s of one data-parallel ResNet-18 training step at world sizes 1 and 2 on this machine,
one thread per rank, and the share of the step spent in the gradient all-reduce.

    python bench/distributed_step.py                      # worlds 1 and 2, table on stdout
    python bench/distributed_step.py --worlds 1 2 4 --steps 8 --json bench/results/distributed-resnet18.json

Each world runs as ``mpiexec -n W python bench/distributed_step.py --rank`` with
NUMBA_NUM_THREADS=OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1. The model is ``convkern train
resnet18``'s: 1x32x32 inputs (MNIST padded), 10 classes, SGD, a global batch of 64 (64/W per
rank). A step is forward, loss, backward and ``DistributedOptimizer.step()``; its time is the
median over the timed steps of the slowest rank's time. "all-reduce" is the time in
``synchronize()`` (packing, MPI, unpacking, and waiting for the slower rank); "all-reduce alone"
reduces the same gradients again right after a barrier, which leaves out the waiting.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def rank_main(args):
    import convkern as ck
    from convkern import distributed as dist
    from convkern import functional as F
    from convkern import models
    dist.init()
    world, rank = dist.size(), dist.rank()
    share = args.batch // world
    ck.manual_seed(0)
    net = models.resnet18(num_classes=10, in_channels=1)
    dist.broadcast_parameters(net)
    opt = dist.DistributedOptimizer(ck.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    rng = np.random.default_rng(rank)
    x = rng.random((share, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, share)
    steps, reduces, alone = [], [], []
    for i in range(args.warmup + args.steps):
        dist.barrier()
        before, t0 = opt.allreduce_seconds, time.perf_counter()
        loss = F.cross_entropy(net(ck.tensor(x)), ck.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step = time.perf_counter() - t0
        dist.barrier()
        t1 = time.perf_counter()
        opt.synchronize()
        if i >= args.warmup:
            steps.append(step)
            reduces.append(opt.allreduce_seconds - before)
            alone.append(time.perf_counter() - t1)
    table = [dist.broadcast_object(np.array([steps, reduces, alone]), root=r) for r in range(world)]
    if rank == 0:
        step_s = float(np.median(np.max([t[0] for t in table], axis=0)))
        reduce_s = float(np.median(np.max([t[1] for t in table], axis=0)))
        alone_s = float(np.median(np.max([t[2] for t in table], axis=0)))
        print(json.dumps({"world_size": world, "global_batch": args.batch, "steps": args.steps,
                          "step_seconds": round(step_s, 4), "images_per_second": round(args.batch / step_s, 2),
                          "allreduce_seconds": round(reduce_s, 4), "allreduce_share": round(reduce_s / step_s, 4),
                          "allreduce_alone_seconds": round(alone_s, 4),
                          "gradient_bytes": int(sum(p.size * p.dtype.itemsize for p in net.parameters())),
                          "mpi": dist.library_version()}), flush=True)


def launch(args):
    from convkern import distributed as dist
    mpiexec = dist.find_mpiexec()
    if mpiexec is None:
        sys.exit(f"no mpiexec: {dist.INSTALL_HINT}")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    records = []
    for world in args.worlds:
        if args.batch % world:
            sys.exit(f"--batch {args.batch} is not divisible by world size {world}")
        out = subprocess.run([mpiexec, "-n", str(world), sys.executable, __file__, "--rank", "--batch",
                              str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(out.stdout + out.stderr)
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = records[0]["images_per_second"]
    print("| world size | images/s | speed-up | step (s) | all-reduce (s) | all-reduce share | all-reduce alone (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['world_size']} | {r['images_per_second']:.1f} | {r['images_per_second'] / base:.2f} | "
              f"{r['step_seconds']:.3f} | {r['allreduce_seconds']:.4f} | {100 * r['allreduce_share']:.1f} % | "
              f"{r['allreduce_alone_seconds']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per world")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the records here")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (rank_main if args.rank else launch)(args)


if __name__ == "__main__":
    main()
