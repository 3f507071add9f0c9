"""The ``convkern`` command: ``bench``, ``train``, ``summary``, ``kernels`` (GPU build check), ``tune``
(re-time the autotune cache) and ``info``."""
import argparse
import os
import platform
import sys

from convkern import cli_args


def _info(args):
    import numba
    import numpy

    import convkern
    from convkern import backend
    from convkern.kernels import cuda_util
    print(f"convkern {convkern.__version__}")
    print(f"python   {platform.python_version()}  numpy {numpy.__version__}  numba {numba.__version__}")
    try:
        from importlib.metadata import version
        print(f"numba-cuda {version('numba-cuda')}")
    except Exception:
        print("numba-cuda not installed")
    print(f"cpu threads {numba.get_num_threads()} (of {os.cpu_count()} cores)")
    kind = backend.cuda_kind()
    line = {"real": "real GPU", "simulated": "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", "none": "none"}[kind]
    if kind == "real":
        from numba import cuda
        dev = cuda.get_current_device()
        line += f": {dev.name.decode() if isinstance(dev.name, bytes) else dev.name} cc {dev.compute_capability}"
    print(f"cuda     {line}")
    print(f"kernels  {len(cuda_util.REGISTRY)} CUDA kernel builds registered")
    from convkern import autotune
    state = "on" if autotune.enabled("cpu") else "off: CONVKERN_AUTOTUNE=0"
    print(f"autotune cache {autotune.cache_path()} ({state})")
    here = autotune.machine("cpu")
    print(f"autotune this machine {autotune.machine_id(here)}: " + ", ".join(f"{k} {v}" for k, v in here.items()))
    for mid, p in sorted(autotune.provenance().items(), key=lambda kv: not kv[1]["current"]):
        desc = ", ".join(f"{k} {v}" for k, v in p["machine"].items()) or "no description"
        print(f"autotune   {mid}{' (this machine)' if p['current'] else ''}: {p['entries']} choices; {desc}")
    from convkern import distributed
    print(f"mpi      {distributed.library_version()}; mpiexec {distributed.find_mpiexec() or 'not found'}")
    if distributed.size() == 1:
        world = "1 process (not started by an MPI launcher)" if not distributed.launched_by_mpi() else "1 process"
    else:
        world = (f"{distributed.size()} processes, this is rank {distributed.rank()} (local rank "
                 f"{distributed.local_rank()}); CUDA-aware MPI: {'yes' if distributed.cuda_aware() else 'no'}")
    print(f"world    {world}")
    return 0


def _tune(args):
    from convkern import autotune
    changes = autotune.retune(args.device, log=sys.stdout)
    changed = sum(old != new for _, _, old, new in changes)
    print(f"re-timed {len(changes)} cached choices on {args.device}; {changed} changed")
    return 0


def _summary(args):
    from convkern import models
    from convkern.layer_summary import summary
    factory, shape = models.REGISTRY[args.model]
    model = factory()
    if args.batch_size > 1:
        # A batch-1 pass first: what the batch asked for would need, before allocating it.
        forward, training = summary(model, (1,) + shape).estimate_bytes(args.batch_size)
        cli_args.check_memory(forward, f"--batch-size {args.batch_size} with {args.model}", "its forward pass",
                              note=f"a training step would need about {cli_args.format_bytes(training)}")
    print(summary(model, (args.batch_size,) + shape, name=args.model))
    return 0


# Exit statuses: bad arguments or input files (argparse's own status for a bad command line),
# a run that failed, and an interrupted one (128 + SIGINT, as the shell reports it).
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError)
FAILURES = (RuntimeError, OSError, MemoryError)


def main(argv=None):
    """Run one ``convkern`` command and return its exit status (also for a bad command line:
    argparse's usage error is returned as 2, not raised). Errors from bad arguments and files,
    failures (OSError, MemoryError, RuntimeError) and Ctrl-C are reported in one line without a
    traceback; any other exception is a bug and keeps its traceback."""
    from convkern import bench, buildcheck, models, train
    parser = argparse.ArgumentParser(prog="convkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bench", help="time every conv algorithm x pass on a shape suite")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
    p = sub.add_parser("train", help="train a reference CNN on real data (embedded MNIST split by default)")
    train.add_arguments(p)
    p.set_defaults(func=train.run)
    p = sub.add_parser("summary", help="per-layer shapes, parameters, FLOPs and memory of a reference CNN")
    p.add_argument("model", choices=tuple(models.REGISTRY))
    p.add_argument("--batch-size", action=cli_args.Checked, check=cli_args.positive_int, default=1, metavar="N",
                   help="default: %(default)s")
    p.set_defaults(func=_summary)
    p = sub.add_parser("kernels", help="compile every CUDA kernel to SASS (sm_80, sm_90): registers, spills, occupancy, SASS mix")
    buildcheck.add_arguments(p)
    p.set_defaults(func=buildcheck.run)
    p = sub.add_parser("tune", help="re-time this machine's cached autotune choices and keep the new winners")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.set_defaults(func=_tune)
    p = sub.add_parser("info", help="versions, devices, threads, the autotune cache's provenance")
    p.set_defaults(func=_info)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (already printed) or --help
        return 0 if e.code is None else int(e.code)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` starts ranks with the same line
    try:
        return args.func(args)
    except USAGE_ERRORS + FAILURES + (KeyboardInterrupt,) as e:
        return _report(args.command, e)


def _report(command, error):
    """Print ``error`` as one line and return the exit status; under MPI end every rank."""
    from convkern import distributed
    if isinstance(error, KeyboardInterrupt):
        kind, text, status = "interrupted", "", EXIT_INTERRUPTED
    else:
        text = str(error) or type(error).__name__
        text = f": out of memory: {text}" if isinstance(error, MemoryError) else f": {text}"
        kind, status = "error", EXIT_USAGE if isinstance(error, USAGE_ERRORS) else EXIT_FAILURE
    if distributed.is_initialized() and distributed.size() > 1:
        # The other ranks may be waiting in a collective for this one: end them all.
        print(f"convkern {command}: {kind} on {distributed.where()}{text}", file=sys.stderr)
        distributed.abort(status)
    print(f"convkern {command}: {kind}{text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
