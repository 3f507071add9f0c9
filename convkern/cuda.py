"""The CUDA runtime under convkern's kernels: a caching device allocator, one stream per device,
device-side checks read lazily, and CUDA graphs of a training step.

    import convkern.cuda
    convkern.cuda.memory_stats()   # {"alloc_calls": ..., "bytes_in_use": ..., "host_transfers": ...}
    convkern.cuda.empty_cache()    # give idle cached blocks back to the driver
    graph = convkern.cuda.capture(step)    # then graph.replay() for every later step

**Allocator.** Every device array convkern makes (tensors, uploads, kernel workspaces) comes from
a caching allocator modelled on PyTorch's: a request is rounded up to a size class (multiples of
ROUND bytes up to SMALL_SIZE, then DIVISIONS classes per power of two), served from the idle
blocks of that class when there is one, and only otherwise from the driver (``cuMemAlloc``). A
block whose last array is garbage-collected goes back to the idle list at once, with no
``cuMemFree`` and no host synchronisation: every kernel and copy of convkern is queued on one
stream per device (``stream()``), so work that used the block's old contents is ordered before
any work that uses it again (the allocator is *stream-ordered*; memory handed to another stream
must be synchronised by whoever does that). Installed as Numba's External Memory Management
plugin (``CachingMemoryManager``; set before the first CUDA context, unless the environment
chose another with ``NUMBA_CUDA_MEMORY_MANAGER``), it also serves Numba's own allocations
(``cuda.to_device``, ``cuda.device_array``). Under the simulator the same pool runs on host
bytes, so the counters of ``memory_stats`` mean the same thing in the test suite.

**Lazy checks.** Kernels that validate their input on the device (cross-entropy labels,
max_unpool2d indices) set a flag instead of making the host wait; the next host read
(``to_host``, ``Tensor.numpy()``, ``item()``) or ``synchronize()`` reads the flags and raises
``DeviceCheckError`` (a ValueError) naming the op.

**Graphs.** ``capture(step)`` records the kernels of one call of ``step`` into a CUDA graph
(numba-cuda launches into a ``cuda.core`` stream capture) and ``replay()`` runs them again with
one launch. Memory the step allocates while captured is reserved for the graph until it is
closed. Not available under the simulator, which cannot record kernels.
"""
import contextlib
import ctypes
import threading
import weakref

import numpy as np
from numba import cuda

from convkern.kernels import cuda_util
from convkern.kernels.cuda_util import SIMULATOR, DeviceCheckError, device_id, stream

__all__ = ["CachingMemoryManager", "CudaGraph", "DeviceCheckError", "capture", "check_graphs", "empty", "empty_cache",
           "memory_stats", "size_class", "stream", "synchronize", "to_host", "upload"]

ROUND = 512                  # bytes: the smallest block and the step of the small size classes
SMALL_SIZE = 1 << 20         # up to here sizes round to a multiple of ROUND
DIVISIONS = 4                # above it, 4 classes per power of two (waste under 25 %)
STAT_KEYS = ("alloc_calls", "free_calls", "requests", "cache_hits", "bytes_in_use", "bytes_cached",
             "peak_bytes", "host_transfers")


def size_class(nbytes):
    """The block size that serves a request of ``nbytes``: a multiple of ROUND up to SMALL_SIZE,
    above it the next of DIVISIONS equal steps between two powers of two."""
    nbytes = int(nbytes)
    if nbytes <= SMALL_SIZE:
        return max(ROUND, -(-nbytes // ROUND) * ROUND)
    step = (1 << ((nbytes - 1).bit_length() - 1)) // DIVISIONS
    return -(-nbytes // step) * step


class _Block:
    __slots__ = ("memory", "size", "graph")

    def __init__(self, memory, size):
        self.memory = memory     # what the driver returned: a CUdeviceptr, or host bytes when simulated
        self.size = size
        self.graph = None        # the _GraphPool it is reserved for, if any


class _GraphPool:
    """The blocks a captured graph uses: taken while capturing, kept from everyone else until the
    graph is closed, because each replay writes them again."""

    def __init__(self):
        self.idle = {}           # size -> blocks the graph's step freed (reusable inside that step)
        self.open = True


class _DriverMemory:
    """cuMemAlloc and cuMemFree of the current context."""

    def malloc(self, nbytes):
        from numba.cuda.cudadrv.driver import CudaAPIError, binding, driver
        try:
            return driver.cuMemAlloc(nbytes)
        except CudaAPIError as exc:
            if exc.code == binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
                raise MemoryError(str(exc)) from exc
            raise

    def free(self, memory):
        from numba.cuda.cudadrv.driver import driver
        driver.cuMemFree(memory)


class _HostMemory:
    """Host bytes standing in for device memory under the simulator."""

    def malloc(self, nbytes):
        return np.empty(nbytes, np.uint8)

    def free(self, memory):
        pass


class _Pool:
    """One device's caching allocator (see the module docstring) and its counters."""

    def __init__(self, memory):
        self.memory = memory
        self.idle = {}                   # size -> [blocks], last freed first
        self.capture = None              # the _GraphPool of a capture in progress
        self.lock = threading.RLock()    # finalizers may run on any thread, or inside allocate
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    def allocate(self, nbytes):
        size = size_class(nbytes)
        with self.lock:
            self.stats["requests"] += 1
            block = self._take(size)
            if block is None:
                block = _Block(self._malloc(size), size)
                self.stats["alloc_calls"] += 1
            else:
                self.stats["cache_hits"] += 1
                self.stats["bytes_cached"] -= size
            if self.capture is not None:
                block.graph = self.capture
            self.stats["bytes_in_use"] += size
            self.stats["peak_bytes"] = max(self.stats["peak_bytes"], self.stats["bytes_in_use"])
            return block

    def _take(self, size):
        for idle in ((self.capture.idle,) if self.capture is not None else ()) + (self.idle,):
            if idle.get(size):
                return idle[size].pop()
        return None

    def _malloc(self, size):
        try:
            return self.memory.malloc(size)
        except MemoryError:
            self.empty_cache()          # idle blocks of other sizes may make room
            try:
                return self.memory.malloc(size)
            except MemoryError as exc:
                raise MemoryError(f"CUDA out of memory allocating {size} bytes; convkern holds "
                                  f"{self.stats['bytes_in_use']} bytes in use ({exc})") from None

    def release(self, block):
        with self.lock:
            self.stats["bytes_in_use"] -= block.size
            self.stats["bytes_cached"] += block.size
            owner = block.graph
            if owner is None and self.capture is not None:
                # the graph being captured may read this block on every replay
                block.graph = owner = self.capture
            target = owner.idle if owner is not None and owner.open else self.idle
            if owner is not None and not owner.open:
                block.graph = None
            target.setdefault(block.size, []).append(block)

    def close_graph(self, graph_pool):
        """Give the blocks a closed graph held idle back to everyone."""
        with self.lock:
            graph_pool.open = False
            for size, blocks in graph_pool.idle.items():
                for block in blocks:
                    block.graph = None
                self.idle.setdefault(size, []).extend(blocks)
            graph_pool.idle = {}

    def empty_cache(self):
        """Free every idle block that no graph holds (after the stream has drained)."""
        with self.lock:
            if not SIMULATOR:
                stream().synchronize()
            for blocks in self.idle.values():
                for block in blocks:
                    self.memory.free(block.memory)
                    self.stats["free_calls"] += 1
                    self.stats["bytes_cached"] -= block.size
            self.idle = {}

    def forget(self):
        """The context was reset: its memory is gone, drop the idle blocks without freeing them."""
        with self.lock:
            for blocks in self.idle.values():
                self.stats["bytes_cached"] -= sum(b.size for b in blocks)
            self.idle = {}


_POOLS = {}
_POOLS_LOCK = threading.Lock()


def _pool(dev=None):
    dev = device_id() if dev is None else dev
    with _POOLS_LOCK:
        if dev not in _POOLS:
            _POOLS[dev] = _Pool(_HostMemory() if SIMULATOR else _DriverMemory())
        return _POOLS[dev]


# ---------------------------------------------------------------------------------------------
# device arrays from the pool
# ---------------------------------------------------------------------------------------------

def c_strides(shape, itemsize):
    """Byte strides of a C-contiguous array of ``shape`` with ``itemsize``-byte elements."""
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _memory_pointer(pool, block, context):
    """A Numba memory pointer owning ``block``: reference-counted over every view of the array,
    and the block goes back to ``pool`` when the last one is gone (Numba's own ownership model,
    with a release instead of cuMemFree)."""
    from numba.cuda.cudadrv.driver import AutoFreePointer
    key = int(block.memory)

    def release():
        _LIVE.pop(key, None)
        pool.release(block)
    mem = AutoFreePointer(weakref.proxy(context), block.memory, block.size, finalizer=release)
    _LIVE[key] = mem            # the owned pointers below hold only a weak proxy of it
    return mem.own()


_LIVE = {}


def _simulated_array(pool, block, shape, dtype):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    owner = (ctypes.c_char * block.size).from_address(block.memory.ctypes.data)
    owner.bytes = block.memory
    # every view of the array keeps ``owner`` alive; when the last view goes, the block returns
    weakref.finalize(owner, pool.release, block)
    count = int(np.prod(shape, dtype=np.int64))
    return FakeCUDAArray(np.frombuffer(owner, dtype, count).reshape(shape), stream=stream())


def empty(shape, dtype):
    """An uninitialised C-contiguous device array of ``shape`` and ``dtype`` from the caching
    allocator, queued on ``stream()``."""
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return cuda.device_array(shape, dtype, stream=stream())
    pool = _pool()
    block = pool.allocate(nbytes)
    if SIMULATOR:
        return _simulated_array(pool, block, shape, dtype)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    gpu_data = _memory_pointer(pool, block, cuda.current_context())
    return DeviceNDArray(shape, c_strides(shape, dtype.itemsize), dtype, stream=stream(), gpu_data=gpu_data)


cuda_util.set_allocator(empty)


def upload(host, out=None):
    """The NumPy array ``host`` copied into the device array ``out`` (a new one by default), queued
    on ``stream()``; returns ``out``."""
    host = np.ascontiguousarray(host)
    if out is None:
        out = empty(host.shape, host.dtype)
    elif tuple(out.shape) != host.shape or np.dtype(out.dtype) != host.dtype:
        raise ValueError(f"upload: out is {tuple(out.shape)} {out.dtype}, the host array {host.shape} {host.dtype}")
    if out.size:
        out.copy_to_device(host, stream=stream())
    return out


def to_host(array, out=None):
    """The device array ``array`` copied into ``out`` (a new NumPy array by default), after its
    stream has done everything queued before. Counted in ``memory_stats()["host_transfers"]``;
    raises ``DeviceCheckError`` first when a device-side check queued before has failed."""
    _check_capture("to_host")
    raise_failed_checks()
    if out is None:
        out = np.empty(array.shape, array.dtype)
    if array.size:
        array.copy_to_host(out, stream=stream())
        stream().synchronize()
        _pool().stats["host_transfers"] += 1
    return out


def synchronize():
    """Wait for everything queued on this device's stream, then raise ``DeviceCheckError`` if a
    device-side check has failed."""
    _check_capture("synchronize")
    stream().synchronize()
    raise_failed_checks()


def raise_failed_checks():
    """Read the flags of the checks launched since the last read (one host transfer) and raise
    ``DeviceCheckError`` naming the op when one is set; the flags are then cleared."""
    flags, armed = cuda_util.take_checks()
    if not armed:
        return
    host = np.empty(flags.shape, flags.dtype)
    flags.copy_to_host(host, stream=stream())
    stream().synchronize()
    _pool().stats["host_transfers"] += 1
    failed = [message for slot, message in sorted(armed.items()) if host[slot]]
    if failed:
        flags.copy_to_device(np.zeros(flags.shape, flags.dtype), stream=stream())
        raise DeviceCheckError("; ".join(failed) + " (checked on the device; reported at the first host read "
                               "after the launch)")


def memory_stats():
    """Counters of this device's caching allocator, as a dict:

    - ``alloc_calls``, ``free_calls``: calls to the driver's allocator (cuMemAlloc / cuMemFree);
    - ``requests``, ``cache_hits``: allocations asked of the cache, and those served by idle blocks;
    - ``bytes_in_use``: bytes of the blocks arrays hold now; ``peak_bytes``: its maximum so far;
    - ``bytes_cached``: bytes of idle blocks kept for reuse (including those reserved by graphs);
    - ``host_transfers``: device-to-host copies convkern made (reads of results and of check flags).
    """
    pool = _pool()
    with pool.lock:
        return dict(pool.stats)


def empty_cache():
    """Give every idle block back to the driver (cuMemFree), except those CUDA graphs hold."""
    _check_capture("empty_cache")
    _pool().empty_cache()


# ---------------------------------------------------------------------------------------------
# Numba's External Memory Management plugin
# ---------------------------------------------------------------------------------------------

if not SIMULATOR:
    from numba.cuda import GetIpcHandleMixin, HostOnlyCUDAMemoryManager, MemoryInfo

    class CachingMemoryManager(GetIpcHandleMixin, HostOnlyCUDAMemoryManager):
        """Numba's device allocations (``cuda.device_array``, ``cuda.to_device``, ...) from
        convkern's caching allocator; host allocations stay Numba's."""

        def initialize(self):
            self.deallocations.memory_capacity = self.get_memory_info().total

        def memalloc(self, size):
            pool = _pool(self.context.device.id)
            return _memory_pointer(pool, pool.allocate(size), self.context)

        def get_memory_info(self):
            from numba.cuda.cudadrv.driver import driver
            free, total = driver.cuMemGetInfo()
            return MemoryInfo(free=free, total=total)

        def reset(self):
            super().reset()
            _pool(self.context.device.id).forget()

        @property
        def interface_version(self):
            return 1

    _numba_memory_manager = CachingMemoryManager      # for NUMBA_CUDA_MEMORY_MANAGER=convkern.cuda

    from numba.core import config as _config
    if _config.CUDA_MEMORY_MANAGER == "default":
        cuda.set_memory_manager(CachingMemoryManager)
else:
    class CachingMemoryManager:
        """Numba's device allocations from convkern's caching allocator, on a real GPU; the
        simulator has no External Memory Management plugins, so there it does nothing and
        ``empty`` serves every array convkern makes."""


# ---------------------------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------------------------

_CAPTURING = threading.local()


def capturing():
    """True while ``capture`` records a step on this thread."""
    return getattr(_CAPTURING, "active", False)


def _check_capture(what):
    if capturing():
        raise RuntimeError(f"convkern.cuda.{what}: called while a CUDA graph is being captured; a graph "
                           "cannot wait for the device or read its memory on the host: move the host read "
                           "out of the captured step")


class CudaGraph:
    """A captured step. ``replay()`` runs its kernels again (on ``stream()``, without waiting);
    ``outputs`` is what the step returned when captured: tensors whose memory every replay
    rewrites. The memory the step allocated stays reserved until ``close()`` (or garbage
    collection)."""

    def __init__(self, graph, core_stream, outputs, pool, graph_pool, checks):
        self._graph = graph
        self._stream = core_stream
        self.outputs = outputs
        self._checks = checks
        self._close = weakref.finalize(self, _close_graph, graph, pool, graph_pool)

    def replay(self):
        if not self._close.alive:
            raise RuntimeError("CudaGraph.replay: the graph was closed")
        self._graph.launch(self._stream)
        cuda_util.arm_checks(self._checks)

    def close(self):
        """Destroy the graph and give its memory back to the allocator."""
        self._close()


def _close_graph(graph, pool, graph_pool):
    graph.close()
    pool.close_graph(graph_pool)


def check_graphs(what):
    """Raise RuntimeError, naming ``what``, where CUDA graphs cannot be captured (the simulator)."""
    if SIMULATOR:
        raise RuntimeError(f"{what}: CUDA graphs need a real GPU; Numba's CUDA simulator runs each kernel as "
                           "Python threads and has nothing to record (run the steps without a graph)")


def capture(step, *args, **kwargs):
    """Record the CUDA work of one call ``step(*args, **kwargs)`` as a CUDA graph, without running
    it; returns a ``CudaGraph`` whose ``replay()`` runs it (the first replay is the step's first
    real run) and whose ``outputs`` is what ``step`` returned.

    Like any CUDA graph, a replay repeats the captured launches exactly: the same device memory
    (inputs are read from the tensors the step read when captured: copy new data into them
    before each replay), the same scalar arguments (a learning rate, a dropout seed drawn on the
    host, Adam's step count are frozen) and no Python code of the step runs again. Call the step
    once before capturing it, so that autotuning has chosen its algorithms and its kernels are
    compiled; the step must not read device memory on the host. Needs a real GPU."""
    check_graphs("convkern.cuda.capture")
    from cuda.core import Stream
    synchronize()
    pool = _pool()
    core_stream = Stream.from_handle(int(stream().handle))
    builder = core_stream.create_graph_builder()
    graph_pool = _GraphPool()
    with _recording(pool, graph_pool):
        builder.begin_building("relaxed")
        try:
            outputs = step(*args, **kwargs)
        finally:
            builder.end_building()
    checks = cuda_util.armed_checks()        # synchronize() above disarmed the older ones
    try:
        graph = builder.complete()
    except Exception:
        pool.close_graph(graph_pool)
        raise
    finally:
        builder.close()
    return CudaGraph(graph, core_stream, outputs, pool, graph_pool, checks)


@contextlib.contextmanager
def _recording(pool, graph_pool):
    with pool.lock:
        if pool.capture is not None:
            raise RuntimeError("convkern.cuda.capture: a capture is already in progress on this device")
        pool.capture = graph_pool
    _CAPTURING.active = True
    try:
        yield
    finally:
        _CAPTURING.active = False
        with pool.lock:
            pool.capture = None

