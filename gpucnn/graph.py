"""Replay a whole training step as one CUDA graph.

Small nets are bound by kernel launches (about 8-13 us each from Python), not arithmetic;
a replayed graph node costs about 1.2 us. The step is captured once per batch shape:
each new batch is copied into the same static input arrays and the graph replayed;
its outputs (loss, number correct) live in arrays allocated during capture.
Nothing inside the step may synchronise with the host, and every array it updates
(parameters, optimiser state, BatchNorm statistics, the learning rate) must be updated
in place, since the graph holds their addresses.

Arrays the step allocates while being captured come from a pool private to that graph.
Freed at the end of the capture, their blocks would otherwise go back to CuPy's default
pool, be handed to an array made later (a running loss sum, an eval batch), and be
overwritten by the next replay: PyTorch keeps graph-private pools for the same reason.
One pool per graph, not one for all: a pool short of memory frees its cached blocks and
retries, and those blocks would be another graph's scratch space.

Before a capture, the eager warm-up step's arrays are released for real: the step drops
its references (saved activations, im2col columns, BatchNorm tensors, gradients, the
loss's probabilities) and the default pool then hands their blocks back to the driver.
Otherwise they would be freed only during the capture, too late, and stay cached in the
default pool for the whole run: one extra step of activations beside the graph's own.

Everything a GraphedStep holds on the device (graphs, their pools, the cuBLAS handle with
its workspace, the stream) is given back when it is dropped. Its graphs must go before the
NCCL communicator whose collectives they captured: NCCL (2.26 and later) makes
ncclCommDestroy and ncclCommAbort wait until every such graph is destroyed, and a traceback
can keep the step alive past the communicator. `closed_after` destroys them when the loop
ends, except on a rank-local error of a data-parallel job, which goes straight to MPI_Abort.
"""
import contextlib
import weakref

from gpucnn import backend, gemm


class GraphedStep:
    """Calls `step(x, y) -> outputs` through CUDA graphs, one per input shape."""

    def __init__(self, step):
        cupy = backend.cupy_module()
        if cupy is None:
            raise RuntimeError("CUDA graphs need the CuPy backend")
        self.step = step
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # A non-blocking stream does not wait for the default stream, where the model and
        # optimiser state were just copied to the device: wait for that work once, here.
        # (fit() then runs everything on self.stream, so __call__'s own wait never fires.)
        self.stream.wait_event(cupy.cuda.get_current_stream().record())
        self.cublas = gemm.prepare_capture(self.stream)  # ours: destroyed when we are dropped
        self.pools = []  # one MemoryPool per captured graph
        release = getattr(step, "release", None)
        if release is not None:
            # The layers keep the last replay's arrays, which live in our pools: drop them
            # before the pools go with us, or the layers would point at freed memory.
            weakref.finalize(self, release).atexit = False
        self._graphs = {}  # (x shape, y shape) -> (graph, static x, static y, outputs)
        self._warm = set()  # shapes already run once eagerly
        self.warmup_peak_bytes = 0  # device memory CuPy's pools held before a capture emptied one

    def __call__(self, x, y):
        cupy = backend.cupy_module()
        key = (tuple(x.shape), tuple(y.shape))
        caller = cupy.cuda.get_current_stream()
        other = caller.ptr != self.stream.ptr
        if other:  # parameters, lr and inputs may still be being written on the caller's stream
            self.stream.wait_event(caller.record())
        with self.stream:
            if key not in self._warm:
                # A shape's first step runs eagerly (a real step, not a throw-away): it
                # compiles every kernel and sets up cuBLAS outside the capture.
                self._warm.add(key)
                outputs = self.step(x, y)
            else:
                entry = self._graphs.get(key)
                if entry is None:
                    entry = self._graphs[key] = self._capture(cupy, x, y)
                graph, sx, sy, outputs = entry
                sx[...] = x
                sy[...] = y
                graph.launch(stream=self.stream)
        if other:  # the outputs are then safe to read on the caller's stream
            caller.wait_event(self.stream.record())
        return outputs

    def close(self):
        """Destroy the graphs and their pools now (a later call warms up and captures anew)."""
        release = getattr(self.step, "release", None)
        if release is not None:
            release()  # the layers point into the pools: let go first
        self._graphs.clear()
        self._warm.clear()
        self.pools.clear()

    def pool_bytes(self):
        """Device memory held by the graphs' private pools."""
        return sum(pool.total_bytes() for pool in self.pools)

    def peak_bytes(self):
        """The most device memory CuPy's pools have held with this step: now, or just before a
        capture emptied the default pool (a pool only grows until emptied, so these moments
        bound every other)."""
        now = backend.cupy_module().get_default_memory_pool().total_bytes() + self.pool_bytes()
        return max(now, self.warmup_peak_bytes)

    def _capture(self, cupy, x, y):
        sx = cupy.empty_like(x)
        sy = cupy.empty_like(y)
        # The capture allocates every temporary afresh from its own pool: first let go of
        # the eager step's (see the module docstring), or peak memory holds both steps.
        release = getattr(self.step, "release", None)
        if release is not None:
            release()
        default_pool = cupy.get_default_memory_pool()
        self.warmup_peak_bytes = max(self.warmup_peak_bytes, default_pool.total_bytes() + self.pool_bytes())
        default_pool.free_all_blocks()  # cudaFree waits until the eager step is done with them
        pool = cupy.cuda.MemoryPool()
        self.pools.append(pool)
        with cupy.cuda.using_allocator(pool.malloc):
            self.stream.begin_capture()
            try:
                outputs = self.step(sx, sy)
            except BaseException:
                try:  # end the broken capture, but report the step's own error
                    self.stream.end_capture()
                except Exception:
                    pass
                raise
            graph = self.stream.end_capture()
        # Whatever of the default pool's the capture let go (what the step held that
        # `release` does not reach) would stay cached too.
        default_pool.free_all_blocks()
        return graph, sx, sy, outputs


@contextlib.contextmanager
def closed_after(step, comm):
    """Close `step` (a GraphedStep; anything else is left alone) when the block ends: normally,
    or by an exception every rank raises together. A rank-local error of a data-parallel job
    leaves it as it is: that rank is on its way to MPI_Abort, and freeing device memory
    synchronises with a device that may wait in a collective the other ranks never join."""
    close = getattr(step, "close", None)
    try:
        yield step
    except BaseException as e:
        if close is not None and (comm.size == 1 or getattr(e, "collective", False)):
            try:
                close()
            except Exception:  # a broken device fails this too: report the error that broke it
                pass
        raise
    if close is not None:
        close()
