"""Data parallelism across processes and machines, on MPI (``mpi4py``; install ``convkern[mpi]``).

    import convkern as ck
    from convkern import distributed as dist
    dist.init()                                   # from the MPI environment; a world of one otherwise
    dist.broadcast_parameters(model, root=0)      # every rank starts from rank 0's weights
    opt = dist.DistributedOptimizer(ck.optim.SGD(model.parameters(), lr=0.1))
    loss.backward(); opt.step()                   # gradients averaged over ranks, then the update

Start the processes with MPI's launcher (``mpiexec -n 4 python train.py``; across machines
``mpiexec -hosts a,b -n 8 ...``). Without one, ``init()`` makes a world of one and every call
here is a local no-op (``allreduce`` returns a copy), so the same script runs alone.

Gradients are reduced in buckets of at most ``BUCKET_BYTES`` (one MPI all-reduce per bucket),
parameters taken in the optimizer's order, which is the same on every rank; the mean is the sum
divided by the world size. NumPy arrays go to MPI as they are. CUDA device arrays go to MPI
directly when the MPI library is CUDA-aware (``MPIX_Query_cuda_support``, or
``CONVKERN_MPI_CUDA_AWARE=1``), otherwise through pinned host buffers (a device-to-host copy,
the reduction on the host, a copy back); arrays of Numba's CUDA simulator always take the host
path.

When the world has more than one rank, ``init()`` turns an uncaught exception on any rank into
``MPI_Abort`` after printing it with the rank's number, so the other ranks never wait forever in
a collective for a rank that has gone.
"""
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from convkern import backend
from convkern import cuda as runtime
from convkern import functional as F
from convkern.autograd import Function, Tensor
from convkern.kernels import batchnorm, elementwise
from convkern.kernels.cuda_util import SIMULATOR, is_device_array
from convkern.ops.common import as_tensor, check_float, check_same

BUCKET_BYTES = 4 * 2**20  # per all-reduce: far above network latency; on one host 1-64 MB measured alike
OPS = ("sum", "mean")
ABORT_GRACE_SECONDS = 0.5
# Set by MPI launchers in the processes they start: MPICH/Intel MPI (hydra), PMIx, Open MPI, MVAPICH.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
INSTALL_HINT = "pip install 'convkern[mpi]' (mpi4py and the mpich wheel, which brings libmpi and mpiexec)"


class _World:
    """The communicator and what init() learnt about it; ``comm`` is None for a world of one."""
    comm = None
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    cuda_aware = False
    initialized = False


_world = _World()


# ---------------------------------------------------------------- the MPI environment

def launched_by_mpi():
    """True when this process was started by an MPI launcher (``mpiexec``, ``mpirun``, ``srun``
    with PMI/PMIx). ``CONVKERN_MPI=1`` forces True (a launcher convkern does not recognise),
    ``CONVKERN_MPI=0`` forces False."""
    forced = os.environ.get("CONVKERN_MPI")
    if forced in ("0", "1"):
        return forced == "1"
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def _mpi():
    """The ``mpi4py.MPI`` module, imported without initialising MPI (init() does that)."""
    try:
        import mpi4py
    except ImportError:
        raise RuntimeError(f"convkern.distributed: MPI needs mpi4py, which is not installed: {INSTALL_HINT}") from None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True
    from mpi4py import MPI
    return MPI


def init(comm=None):
    """Join the world: MPI's ``COMM_WORLD`` (duplicated, so convkern's traffic never matches the
    caller's) when started by an MPI launcher or when ``comm`` (an ``mpi4py`` communicator) is
    given, else a world of one without MPI. Idempotent; the other functions here call it first.

    With more than one rank it also gives each rank an equal share of its host's cores for
    Numba's kernels (unless ``NUMBA_NUM_THREADS`` is set) and makes an uncaught exception abort
    every rank (see the module docstring)."""
    if _world.initialized:
        return
    if comm is None and launched_by_mpi():
        MPI = _mpi()
        if not MPI.Is_initialized():
            MPI.Init_thread(MPI.THREAD_FUNNELED)  # only the main thread calls MPI
        comm = MPI.COMM_WORLD
    if comm is not None:
        MPI = _mpi()
        _world.comm = comm.Dup()
        _world.rank, _world.size = _world.comm.Get_rank(), _world.comm.Get_size()
        node = _world.comm.Split_type(MPI.COMM_TYPE_SHARED)
        _world.local_rank, _world.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        _world.cuda_aware = _query_cuda_aware()
    _world.initialized = True
    if _world.size > 1:
        _share_cores()
        _abort_on_uncaught_exceptions()


def is_initialized():
    """Whether ``init()`` has run (it runs at the first call of anything here)."""
    return _world.initialized


def cuda_aware():
    """Whether CUDA device arrays go to MPI directly (else through pinned host buffers)."""
    init()
    return _world.cuda_aware


def rank():
    """This process's number in the world, 0 .. size() - 1."""
    init()
    return _world.rank


def size():
    """The number of processes in the world (1 when not started by an MPI launcher)."""
    init()
    return _world.size


def local_rank():
    """This process's number among the world's processes on the same host (pick a GPU with it)."""
    init()
    return _world.local_rank


def barrier():
    """Wait until every rank has called ``barrier()``."""
    init()
    if _world.comm is not None:
        _world.comm.Barrier()


def abort(code=1):
    """End every rank of the world now with exit status ``code`` (``MPI_Abort``); a plain exit
    in a world of one."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _world.comm is not None and _world.size > 1:
        # The launcher forwards output asynchronously and may tear the job down as soon as it hears
        # of the abort: give it a moment to pass on the message that says why.
        time.sleep(ABORT_GRACE_SECONDS)
        _mpi().COMM_WORLD.Abort(code)
    sys.exit(code)


def where():
    """"rank R of W" for messages, "" in a world of one."""
    return f"rank {rank()} of {size()}" if size() > 1 else ""


def _query_cuda_aware():
    """Whether the MPI library takes CUDA device pointers: ``CONVKERN_MPI_CUDA_AWARE`` (0 or 1)
    if set, else its ``MPIX_Query_cuda_support()`` (MPICH, Open MPI); never under the simulator,
    whose "device" arrays are host memory that MPI reaches through the host path."""
    forced = os.environ.get("CONVKERN_MPI_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1" and not SIMULATOR
    if SIMULATOR or not backend.cuda_available():
        return False
    for library in _loaded_mpi_libraries():
        query = getattr(ctypes.CDLL(library), "MPIX_Query_cuda_support", None)
        if query is not None:
            return bool(query())
    return False


def _loaded_mpi_libraries():
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi" in line and "/" in line}
    except OSError:
        return []
    return sorted(paths)


def _share_cores():
    """Numba threads per rank = this host's cores / ranks on it, unless the user chose a count."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    import numba
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, cores // _world.local_size)))


def _abort_on_uncaught_exceptions():
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write(f"convkern.distributed: uncaught exception on {where()}; aborting every rank\n")
        previous(kind, value, tb)
        abort(1)
    sys.excepthook = hook


def processes():
    """``[(pid, hostname), ...]`` of every rank, in rank order (collective)."""
    mine = (os.getpid(), socket.gethostname())
    init()
    return [mine] if _world.comm is None else _world.comm.allgather(mine)


def library_version():
    """The MPI library's version line (e.g. "MPICH Version: 5.0.2"), or why there is none."""
    try:
        MPI = _mpi()
    except RuntimeError:
        return f"none (mpi4py not installed: {INSTALL_HINT})"
    import mpi4py
    first = MPI.Get_library_version().strip().splitlines()[0].strip()
    return f"{' '.join(first.split())} (mpi4py {mpi4py.__version__})"


def find_mpiexec():
    """The ``mpiexec`` to start ranks with: ``$CONVKERN_MPIEXEC``, else the one beside this Python
    (the mpich wheel installs it into the environment's ``bin/``), else the first on ``PATH``;
    None if there is none."""
    named = os.environ.get("CONVKERN_MPIEXEC")
    if named:
        return named
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / "mpiexec").is_file():
            return str(folder / "mpiexec")
    return shutil.which("mpiexec")


def launch(nproc, command):
    """Run ``command`` (a list) as ``nproc`` local MPI ranks under ``mpiexec -n nproc`` and return
    its exit status. Each rank gets ``cores // nproc`` threads for Numba, OpenMP and BLAS unless
    the environment already sets ``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ..."""
    import subprocess
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError(f"no mpiexec found (not beside {sys.executable}, not on PATH, CONVKERN_MPIEXEC unset): "
                           f"{INSTALL_HINT}")
    env = dict(os.environ)
    share = str(max(1, (os.cpu_count() or 1) // nproc))
    for name in THREAD_VARIABLES:
        env.setdefault(name, share)
    child = subprocess.Popen([mpiexec, "-n", str(nproc), *command], env=env)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # mpiexec got it too and stops the ranks; wait for that
            continue


def _launcher_identity():
    def first(names, default):
        return next((os.environ[n] for n in names if n in os.environ), default)
    return first(_RANK_VARIABLES, "?"), first(_SIZE_VARIABLES, "?")


def supervise():
    """Fork this rank: the child returns and runs the program; the parent waits for it and, when it
    dies of a signal or exits non-zero, prints which rank it was (stderr) and exits with its status
    (128 + the signal's number for a signal), so the launcher tears the whole job down with a message naming the rank. Signals
    sent to the parent are passed on to the child, and the child dies with the parent (Linux).
    Call it before ``init()``; without ``os.fork`` it does nothing."""
    if not hasattr(os, "fork"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the supervisor
        if os.getppid() != parent:
            os._exit(1)
        return
    # The parent keeps its copy of the launcher's PMI socket (PMI_FD) open: if the rank dies, the
    # launcher must learn it from this process's exit, after the message, not from the socket.
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    status = os.waitpid(child, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    r, w = _launcher_identity()
    who = f"rank {r} of {w} (pid {child} on {socket.gethostname()})"
    if code < 0:
        if not forwarded:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
            sys.stderr.write(f"convkern: {who} was killed by signal {-code} ({name})\n")
        code = 128 - code
    elif code != 0 and not forwarded:
        sys.stderr.write(f"convkern: {who} exited with status {code}\n")
    sys.stderr.flush()
    os._exit(code)  # the parent ran none of the program: skip the interpreter's exit handlers


# ---------------------------------------------------------------- collectives

def _check_op(op, dtype, name="allreduce"):
    if op not in OPS:
        raise ValueError(f"{name}: op must be 'sum' or 'mean', got {op!r}")
    if op == "mean" and dtype.kind not in "fc":
        raise TypeError(f"{name}: op='mean' needs a floating array, got {dtype}; use op='sum' and divide")


def _host_array(array, name):
    host = np.asarray(array, order="C")
    if host.dtype.kind not in "iufc" or not host.dtype.isnative:
        raise TypeError(f"{name}: array must have a native numeric dtype (int, uint, float, complex), got {host.dtype}")
    return host


def _reduce_host(buffer, op):
    """Sum (or mean) ``buffer`` over ranks, in place."""
    if _world.comm is not None:
        _world.comm.Allreduce(_mpi().IN_PLACE, buffer, op=_mpi().SUM)
    if op == "mean":
        np.divide(buffer, buffer.dtype.type(_world.size), out=buffer)


def _reduce_device(array, op, name):
    """A new device array: ``array`` summed (or averaged) over ranks."""
    if _world.cuda_aware and _world.comm is not None:
        from numba import cuda
        out = cuda.device_array(array.shape, array.dtype)
        cuda.synchronize()  # MPI reads the memory outside the stream's order
        _world.comm.Allreduce(backend.flat(array), backend.flat(out), op=_mpi().SUM)
        if op == "mean":
            if out.dtype not in backend.FLOAT_DTYPES:
                raise TypeError(f"{name}: op='mean' on the device needs float32 or float64, got {out.dtype}")
            elementwise.scalar("mul", backend.flat(out), 1.0 / _world.size, backend.flat(out))
        return out
    host = _pinned(array.shape, array.dtype)
    runtime.to_host(array, host)
    _reduce_host(host, op)
    return backend.to_device(host, "cuda")


def _pinned(shape, dtype):
    from numba import cuda
    return cuda.pinned_array(shape, dtype=dtype)


def allreduce(array, op="sum"):
    """``op`` over every rank of ``array`` (same shape and dtype on each): "sum", or "mean" (the sum
    divided by ``size()``, floating arrays only). Takes a NumPy array (or anything
    ``np.asarray`` takes, any shape including 0-d and empty, any native int/uint/float/complex
    dtype), a CUDA device array, or a ``Tensor``; returns a new one of the same kind, device,
    shape and dtype. Collective: every rank must call it."""
    init()
    if isinstance(array, Tensor):
        return Tensor(allreduce(array.data, op))
    if is_device_array(array):
        _check_op(op, np.dtype(array.dtype))
        if not array.is_c_contiguous():
            raise ValueError("allreduce: CUDA arrays must be C-contiguous")
        return _reduce_device(array, op, "allreduce")
    host = _host_array(array, "allreduce")
    _check_op(op, host.dtype)
    out = host.copy()
    _reduce_host(out.reshape(-1), op)
    return out


def _allgather_host(array):
    """``(size(), *array.shape)``: every rank's ``array`` stacked in rank order."""
    array = np.asarray(array, order="C")
    out = np.empty((_world.size,) + array.shape, array.dtype)
    if _world.comm is None:
        out[0] = array
    else:
        _world.comm.Allgather(array, out)
    return out


def broadcast_object(obj, root=0):
    """``obj`` from rank ``root`` (pickled) on every rank; the others' ``obj`` is ignored. Collective."""
    init()
    _check_root(root, "broadcast_object")
    return obj if _world.comm is None else _world.comm.bcast(obj, root=root)


def _check_root(root, name):
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < _world.size:
        raise ValueError(f"{name}: root must be a rank in 0..{_world.size - 1}, got {root!r}")


def _named_tensors(model, name):
    """(name, Tensor) pairs of a Module (parameters, then buffers), a dict or an iterable of Tensors."""
    if hasattr(model, "named_parameters") and hasattr(model, "named_buffers"):
        return list(model.named_parameters()) + list(model.named_buffers())
    items = list(model.items()) if isinstance(model, dict) else list(enumerate(model))
    for key, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a Module, a dict of Tensors or an iterable of Tensors; "
                            f"entry {key!r} is {type(t).__name__}")
    return [(str(k), t) for k, t in items]


def broadcast_parameters(model, root=0):
    """Overwrite every parameter and buffer of ``model`` (a Module, a dict of Tensors such as
    ``dict(model.named_parameters())``, or an iterable of Tensors) with rank ``root``'s values,
    in place and bitwise. Every rank must hold tensors of the same names, shapes and dtypes;
    otherwise every rank raises ValueError naming the first difference. Collective."""
    init()
    _check_root(root, "broadcast_parameters")
    named = _named_tensors(model, "broadcast_parameters")
    if _world.comm is None:
        return
    layout = [(n, t.shape, str(t.dtype)) for n, t in named]
    layouts = _world.comm.allgather(layout)
    for r, other in enumerate(layouts):
        if other != layouts[root]:
            diff = next((a, b) for a, b in zip(other + [None], layouts[root] + [None]) if a != b)
            raise ValueError(f"broadcast_parameters: rank {r}'s tensors differ from rank {root}'s: {diff[0]} "
                             f"vs {diff[1]} (name, shape, dtype)")
    for _, t in named:
        t.data = _broadcast_array(t.data, root)


def _broadcast_array(array, root):
    if not is_device_array(array):
        host = np.asarray(array, order="C")
        _world.comm.Bcast(host.reshape(-1), root=root)
        return host
    if _world.cuda_aware:
        from numba import cuda
        cuda.synchronize()
        _world.comm.Bcast(backend.flat(array), root=root)
        return array
    host = _pinned(array.shape, array.dtype)
    runtime.to_host(array, host)
    _world.comm.Bcast(host.reshape(-1), root=root)
    array.copy_to_device(host)
    return array


def average_buffers(model):
    """Make every rank's buffers (BatchNorm running statistics, ...) of ``model`` equal: floating
    buffers become their mean over ranks, the others (counters) take rank 0's value. Collective."""
    init()
    if _world.comm is None:
        return
    for _, b in model.named_buffers():
        if b.dtype.kind == "f":
            b.data = allreduce(b.data, "mean")
        else:
            b.data = _broadcast_array(b.data, 0)


# ---------------------------------------------------------------- the optimizer wrapper

class DistributedOptimizer:
    """Wraps a ``convkern.optim`` optimizer: ``step()`` first all-reduces every gradient to its
    mean over ranks, then runs the wrapped optimizer's step (Horovod's shape). Everything else
    (``param_groups``, ``state``, ``zero_grad``, ``state_dict``, ``load_state_dict``, schedulers)
    is the wrapped optimizer's.

    Gradients are packed, in the optimizer's parameter order, into buckets of one device and dtype
    of at most ``bucket_bytes`` (a larger gradient is a bucket of its own); each bucket is one
    all-reduce. A parameter with a gradient on some ranks but not on others counts as zero where
    it is missing; one with no gradient anywhere is left without one (one small all-reduce of
    these flags per step keeps every rank's buckets the same). ``allreduce_seconds`` accumulates
    the time spent in ``synchronize()``."""

    def __init__(self, optimizer, bucket_bytes=BUCKET_BYTES):
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise TypeError(f"DistributedOptimizer: optimizer must be a convkern.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"DistributedOptimizer: bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.optimizer = optimizer
        self.bucket_bytes = bucket_bytes
        self.allreduce_seconds = 0.0
        self._buffers = {}

    param_groups = property(lambda self: self.optimizer.param_groups)
    state = property(lambda self: self.optimizer.state)

    def zero_grad(self):
        self.optimizer.zero_grad()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def synchronize(self):
        """Overwrite every gradient, in place, with its mean over ranks (collective; nothing in a world of one)."""
        init()
        if _world.size == 1:
            return
        start = time.perf_counter()
        params = self._params()
        present = allreduce(np.array([p.grad is not None for p in params], np.int32)) > 0
        reduced = []
        for p, anywhere in zip(params, present):
            if anywhere:
                if p.grad is None:
                    p.grad = Tensor(backend.zeros(p.shape, p.dtype, p.device))
                reduced.append(p)
        for index, bucket in enumerate(self._buckets(reduced)):
            self._reduce_bucket(index, bucket)
        self.allreduce_seconds += time.perf_counter() - start

    def _buckets(self, params):
        bucket, key, nbytes = [], None, 0
        for p in params:
            k = (p.device, p.dtype)
            if bucket and (k != key or nbytes + p.size * p.dtype.itemsize > self.bucket_bytes):
                yield bucket
                bucket, nbytes = [], 0
            bucket.append(p)
            key, nbytes = k, nbytes + p.size * p.dtype.itemsize
        if bucket:
            yield bucket

    def _buffer(self, index, device, dtype, n):
        """The bucket's reusable flat buffer: pinned host memory, or device memory for CUDA-aware MPI."""
        key = (index, device, dtype, n)
        if key not in self._buffers:
            if device == "cuda" and _world.cuda_aware:
                from numba import cuda
                self._buffers[key] = cuda.device_array(n, dtype)
            elif device == "cuda":
                self._buffers[key] = _pinned(n, dtype)
            else:
                self._buffers[key] = np.empty(n, dtype)
        return self._buffers[key]

    def _reduce_bucket(self, index, bucket):
        device, dtype = bucket[0].device, bucket[0].dtype
        offsets = np.cumsum([0] + [p.size for p in bucket])
        buffer = self._buffer(index, device, dtype, int(offsets[-1]))
        grads = [backend.flat(p.grad.data) for p in bucket]
        for g, lo, hi in zip(grads, offsets[:-1], offsets[1:]):
            if device == "cpu":
                buffer[lo:hi] = g
            elif _world.cuda_aware:
                buffer[lo:hi].copy_to_device(g)
            else:
                runtime.to_host(g, buffer[lo:hi])
        if device == "cuda" and _world.cuda_aware:
            from numba import cuda
            cuda.synchronize()
            _world.comm.Allreduce(_mpi().IN_PLACE, buffer, op=_mpi().SUM)
            elementwise.scalar("mul", buffer, 1.0 / _world.size, buffer)
        else:
            _reduce_host(buffer, "mean")
        for g, lo, hi in zip(grads, offsets[:-1], offsets[1:]):
            if device == "cpu":
                g[...] = buffer[lo:hi]
            else:
                g.copy_to_device(buffer[lo:hi])

    def step(self):
        """``synchronize()``, then the wrapped optimizer's ``step()``."""
        self.synchronize()
        self.optimizer.step()


# ---------------------------------------------------------------- synchronised batch normalisation

def _global_moments(mean, var, count):
    """Mean and biased variance over every rank's batch from each rank's (count, mean, var),
    combined in float64 in rank order (Chan et al.'s pairwise formula), so every rank gets the
    same bits: ``mean = Σ n_r·mean_r / M``, ``var = Σ n_r·(var_r + (mean_r - mean)²) / M``."""
    C = len(mean)
    mine = np.concatenate([[count], backend.to_numpy(mean), backend.to_numpy(var)]).astype(np.float64)
    table = _allgather_host(mine)
    counts, means, variances = table[:, :1], table[:, 1:C + 1], table[:, C + 1:]
    total = counts.sum()
    gmean = (counts * means).sum(axis=0) / total
    gvar = (counts * (variances + (means - gmean) ** 2)).sum(axis=0) / total
    return gmean, gvar, int(total)


class SyncBatchNormFunction(Function):
    """Training-mode batch normalisation with the statistics of the global batch: the forward
    all-gathers each rank's per-channel (count, mean, variance), the backward all-reduces the
    per-channel ``Σdy`` and ``Σdy·xhat`` (``dx = weight·invstd·(dy - Σdy/M - xhat·Σdy·xhat/M)``,
    M the global count). Weight and bias gradients are this rank's share (the optimizer averages
    them over ranks, as every other gradient)."""

    def forward(self, x, w, b):
        p = self.params
        N, C = x.shape[0], x.shape[1]
        shape3 = (N, C, x.size // (N * C))
        x3 = x.reshape(shape3)
        mean = backend.empty((C,), x.dtype, self.device)
        var = backend.empty((C,), x.dtype, self.device)
        batchnorm.batchnorm_stats(x3, mean, var)
        gmean, gvar, total = _global_moments(mean, var, N * shape3[2])
        if total < 2:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all ranks, got {total}")
        mean = backend.to_device(gmean.astype(x.dtype), self.device)
        var = backend.to_device(gvar.astype(x.dtype), self.device)
        if p["running_mean"] is not None:
            batchnorm.batchnorm_update_running(p["running_mean"], p["running_var"], mean, var, p["momentum"],
                                               total / (total - 1))
        y = backend.empty(x.shape, x.dtype, self.device)
        batchnorm.batchnorm_fwd(x3, mean, var, w, b, p["eps"], y.reshape(shape3))
        self.shape3, self.share = shape3, N * shape3[2] / total
        self.save_for_backward(x3, mean, var, w)
        return y

    def backward(self, dy):
        p = self.params
        need_x, need_w, need_b = self.needs_input_grad
        C = self.shape3[1]
        x3, mean, var, w = self.saved
        dy3 = dy.reshape(self.shape3)
        sum_dy = backend.empty((C,), dy.dtype, self.device)
        sum_dy_xhat = backend.empty((C,), dy.dtype, self.device)
        batchnorm.batchnorm_bwd_reduce(x3, dy3, mean, var, p["eps"], sum_dy, sum_dy_xhat)
        mine = np.concatenate([backend.to_numpy(sum_dy), backend.to_numpy(sum_dy_xhat)]).astype(np.float64)
        _reduce_host(mine, "sum")
        # The kernel divides the sums by the local count; scaling them by local/global count makes it M.
        local = (mine * self.share).astype(dy.dtype)
        dx = None
        if need_x:
            dx = backend.empty(dy.shape, dy.dtype, self.device)
            batchnorm.batchnorm_bwd_data(x3, dy3, mean, var, w, backend.to_device(local[:C].copy(), self.device),
                                         backend.to_device(local[C:].copy(), self.device), p["eps"], True,
                                         dx.reshape(self.shape3))
        return dx, (sum_dy_xhat if need_w else None), (sum_dy if need_b else None)


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5):
    """``convkern.functional.batch_norm`` whose training statistics are those of the global batch
    over every rank (``SyncBatchNormFunction``); in eval mode, or in a world of one, it is
    ``batch_norm`` itself. Collective in training: every rank must call it, in the same order."""
    if not training or size() == 1:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training=training, momentum=momentum,
                            eps=eps)
    op = "sync_batch_norm"
    x = as_tensor(input, "input", op)
    check_float(x, "input", op)
    if x.ndim < 2 or x.size == 0:
        raise ValueError(f"{op}: input must be (N, C, ...) with no zero-size dimension, got shape {x.shape}")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            t = as_tensor(t, name, op)
            check_same(t, x, name, "input", op)
            if t.shape != (x.shape[1],):
                raise ValueError(f"{op}: {name} must have shape (C,) = ({x.shape[1]},), got {t.shape}")
    stats = [None if t is None else as_tensor(t, "running", op).data for t in (running_mean, running_var)]
    return SyncBatchNormFunction.apply(x, None if weight is None else as_tensor(weight, "weight", op),
                                       None if bias is None else as_tensor(bias, "bias", op),
                                       running_mean=stats[0], running_var=stats[1], momentum=float(momentum),
                                       eps=float(eps))


__all__ = ["DistributedOptimizer", "SyncBatchNormFunction", "abort", "allreduce", "average_buffers",
           "barrier", "broadcast_object", "broadcast_parameters", "cuda_aware", "find_mpiexec", "init",
           "is_initialized", "launch", "launched_by_mpi", "library_version", "local_rank", "processes", "rank", "size",
           "supervise", "sync_batch_norm", "where"]
