"""Data-parallel training over MPI ranks: one small communicator, and what the loop asks of it.

A run launched by mpirun / mpiexec / srun with several ranks trains one model: every rank
holds the same parameters, takes its share of every global batch, and the gradients are
summed over ranks in one all-reduce per step, so the update is the single-process one.

    Single          one process: every collective is a no-op (mpi4py is never imported)
    MPICommunicator mpi4py: start-up, host collectives, NumPy gradients (Allreduce IN_PLACE)
    NCCLCommunicator  MPI for control, cupy.cuda.nccl for device arrays, on the current stream

The loop calls into this module at three points: at the start (`synchronise_start`: rank
0's state is broadcast after checking every rank built the same run), after backward
(`GradientSync`, inside the possibly graph-captured step) and before evaluating and
checkpointing (`average_buffers`). Layers see a communicator only through the reduction
callable that `use_sync_bn` hands to BatchNorm.

The global batch: --batch-size is the batch of the whole job. Global batch k is cut into
contiguous shares by gpucnn.data.batches.share (the first n % size ranks take one more),
so a rank's share of the last batch may be empty; it still joins every collective. Each rank
scales its loss gradient by share / global batch, so the summed gradient is exactly the
gradient of the global batch's mean loss, whatever the split.

On the GPU, every collective of a step (the gradients' ncclAllReduce, and --sync-bn's) is
issued on the current stream, which in a graphed step is the capture stream: the graph holds
it between backward's kernels and the optimiser's, ordered by the stream, with no host sync.
NCCL allows capture (2.9 and later); a shape's first step runs eagerly (gpucnn.graph), so
NCCL sets its connections up outside any capture. Not yet run on a GPU (see the README).
"""
import contextlib
import os
import sys
import traceback

from gpucnn.errors import GpucnnError
from gpucnn.install_hint import install_hint

# NumPy is imported where it is used, not here: launch() may still set the BLAS thread
# count, which OpenBLAS reads once, when NumPy first loads.

# What launchers put in each process's environment: (size variable, rank variable).
# Checked in this order: an mpirun started inside a Slurm step sees both its own and
# Slurm's variables, and its own are the ones that describe this job.
LAUNCHER_VARS = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI's mpirun
    ("PMI_SIZE", "PMI_RANK"),                          # MPICH / Intel MPI hydra (PMI-1, PMI-2)
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),    # MVAPICH
    ("PMIX_SIZE", "PMIX_RANK"),                        # PMIx launchers that export a size
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),          # srun (set per step, not in an sbatch script)
)


class DistributedError(GpucnnError):
    """A launch that cannot work (wrong MPI, missing mpi4py or NCCL, runs that differ)."""


class RanksDisagree(DistributedError):
    """Raised on every rank at once (each saw the same gathered facts): exit, no abort."""

    collective = True


def launcher_size(environ=os.environ):
    """(ranks the launcher started, name of the variable that says so), or (None, None)
    when no launcher's variables are set. Only a PMIx rank without a size gives (0, name)."""
    for size_var, rank_var in LAUNCHER_VARS:
        if size_var in environ:
            try:
                return int(environ[size_var]), size_var
            except ValueError:
                raise DistributedError(f"{size_var}={environ[size_var]!r} is not a number of ranks") from None
    if "PMIX_RANK" in environ:
        return 0, "PMIX_RANK"
    return None, None


# --- the communicators ----------------------------------------------------------------
class Single:
    """One process: rank 0 of 1, every collective a no-op."""

    rank, size, local_rank, local_size = 0, 1, 0, 1
    description = "one process"

    def allreduce(self, buf):
        """Sum `buf` (a contiguous array) over ranks, in place."""
        return buf

    def broadcast(self, buf, root=0):
        """Overwrite `buf` with root's, in place."""
        return buf

    def sum_host(self, values):
        """A float64 NumPy array of `values` summed over ranks (metrics; never the hot path)."""
        import numpy

        return numpy.array(values, dtype=numpy.float64)

    def allgather_object(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)

    @contextlib.contextmanager
    def guard(self):
        """Any error on one rank ends the whole job (see MPICommunicator.guard)."""
        yield


class MPICommunicator(Single):
    """mpi4py over COMM_WORLD: NumPy buffers go straight to MPI, no copy."""

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this node
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.description = f"rank {self.rank} of {self.size} (MPI)"

    def allreduce(self, buf):
        self.comm.Allreduce(self.mpi.IN_PLACE, _host_buffer(buf), op=self.mpi.SUM)
        return buf

    def broadcast(self, buf, root=0):
        self.comm.Bcast(_host_buffer(buf), root=root)
        return buf

    def sum_host(self, values):
        import numpy

        a = numpy.array(values, dtype=numpy.float64)
        self.comm.Allreduce(self.mpi.IN_PLACE, a, op=self.mpi.SUM)
        return a

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    @contextlib.contextmanager
    def guard(self):
        """An exception on one rank would leave the others waiting in a collective for ever:
        print it, named by rank, and MPI_Abort the job (mpirun then ends every rank and
        exits non-zero). Errors every rank raised together, and a Ctrl-C stop that every
        rank agreed on, end the ranks normally instead."""
        try:
            yield
        except BaseException as e:
            if getattr(e, "collective", False) or isinstance(e, SystemExit) and not e.code:
                raise
            if isinstance(e, GpucnnError):
                print(f"gpucnn: error on {self.description}: {e}", file=sys.stderr)
                code = 2
            elif isinstance(e, KeyboardInterrupt):
                print(f"gpucnn: interrupted on {self.description}; aborting the job", file=sys.stderr)
                code = 130
            else:
                # The message on the first line: the launcher may drop what follows once Abort kills the rank.
                print(f"gpucnn: {type(e).__name__} on {self.description}: {e}; aborting the job", file=sys.stderr, flush=True)
                traceback.print_exc()
                code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
            self.abort(code)


class NCCLCommunicator(MPICommunicator):
    """MPI for start-up and control; device (CuPy) buffers go through NCCL on the current
    stream, which inside a graph capture is the capture stream (NCCL collectives capture)."""

    def __init__(self, comm, mpi, nccl=None, stream_ptr=None):
        super().__init__(comm, mpi)
        if nccl is None:
            nccl = nccl_module()
        self.nccl = nccl
        self._stream_ptr = stream_ptr or _current_stream_ptr
        uid = nccl.get_unique_id() if self.rank == 0 else None
        self.nccl_comm = nccl.NcclCommunicator(self.size, comm.bcast(uid, root=0), self.rank)
        self.description = f"rank {self.rank} of {self.size} (MPI + NCCL {nccl.get_version()})"

    def allreduce(self, buf):
        if not _is_device(buf):
            return super().allreduce(buf)
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf), self.nccl.NCCL_SUM,
                                 self._stream_ptr())
        return buf

    def broadcast(self, buf, root=0):
        if not _is_device(buf):
            return super().broadcast(buf, root)
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._type(buf), root, self._stream_ptr())
        return buf

    def barrier(self):
        # Work queued on the device (a last all-reduce, a checkpoint's copies) ends first.
        _synchronize_device()
        super().barrier()

    # abort: MPI_Abort alone, inherited. It ends every rank, those blocked in a device
    # collective included. ncclCommAbort first would never return while a captured graph
    # holds the communicator (NCCL 2.26 and later wait for every such graph to be
    # destroyed, and the failing frame's traceback keeps the step and its graphs alive).

    def _type(self, buf):
        import numpy

        name = f"NCCL_{numpy.dtype(buf.dtype).name.upper()}"
        if not buf.flags.c_contiguous or not hasattr(self.nccl, name):
            raise TypeError(f"NCCL all-reduce needs a contiguous float/int array, got {buf.dtype} "
                            f"(contiguous: {buf.flags.c_contiguous})")
        return getattr(self.nccl, name)


def nccl_module():
    """cupy.cuda.nccl, or a DistributedError saying how to get it."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise DistributedError(f"the cupy backend with several ranks needs NCCL (cupy.cuda.nccl: {e}); "
                               f"install it with: {install_hint('gpu')}, which brings nvidia-nccl-cu13") from None
    if not getattr(nccl, "available", True):
        raise DistributedError("CuPy was built without NCCL support (cupy.cuda.nccl.available is False)")
    return nccl


def _host_buffer(buf):
    if _is_device(buf):
        raise TypeError("MPICommunicator: a CuPy array; device arrays go through NCCLCommunicator")
    if not buf.flags.c_contiguous:
        raise TypeError("MPICommunicator: collectives need a contiguous array")
    return buf


def _is_device(buf):
    return hasattr(buf, "data") and hasattr(buf.data, "ptr") and hasattr(buf, "device")


def _current_stream_ptr():
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _synchronize_device():
    from gpucnn import backend

    backend.synchronize()


# --- start-up --------------------------------------------------------------------------
def launch(required=False, device=None, environ=os.environ):
    """The communicator for this process; call it before gpucnn.backend is first imported,
    so that on a GPU each rank creates its CUDA context on its own device.

    No launcher in the environment (or one of one rank) and not `required`: Single, and
    mpi4py is not imported. Otherwise MPI starts, and every way the launch cannot work is
    a DistributedError here, before any data is read.
    """
    want, var = launcher_size(environ)
    if not required and (want is None or want == 1):
        if device is not None and _cupy_wanted(environ):
            _use_device(0, device)
        return Single()
    where = f"{var}={want} says this process was started by an MPI launcher" if want is not None else \
        "--distributed was given"
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"{where}, but mpi4py is not installed ({e}); "
                               f"install it with: {install_hint('dist')}") from None
    except RuntimeError as e:  # mpi4py is there, the MPI library it loads at import is not
        found = " ".join(str(e).split())
        raise DistributedError(f"{where}, but mpi4py cannot load an MPI library ({found}); install one "
                               f"(pip install mpich, or your cluster's MPI) or point MPI4PY_LIBMPI at it") from None
    world = MPI.COMM_WORLD
    size = world.Get_size()
    if want and want != size:
        library = MPI.Get_library_version().strip().splitlines()[0]
        raise DistributedError(
            f"the launcher started {want} ranks ({var}={want}) but mpi4py's MPI sees {size} (this process is "
            f"rank {world.Get_rank()} of {size}): mpirun comes from another MPI than the one mpi4py loaded "
            f"({library}); use the mpirun of that MPI, or point mpi4py at the launcher's (MPI4PY_LIBMPI)")
    if size == 1:
        if required:
            raise DistributedError("--distributed: this is the only rank; launch with more than one, e.g. "
                                   "mpirun -n 2 gpucnn train ... (or srun -n 2 ...)")
        return Single()
    comm = MPICommunicator(world, MPI)
    _share_cores(comm.local_size, environ)
    with comm.guard():  # from here on, one rank's error must not leave the others waiting
        if _cupy_wanted(environ):
            _use_device(comm.local_rank, device)
        from gpucnn import backend

        # Before any collective that only one backend makes (NCCL's set-up): a rank whose
        # auto found no GPU would otherwise meet the others' in a collective of another kind.
        agree(comm, {"the array backend (--backend, $GPUCNN_BACKEND)": backend.name()})
        if backend.name() == "cupy":
            nccl = nccl_module()
            check_gpu_sharing(comm.allgather_object(_where_am_i(MPI)), nccl.get_version(), environ)
            return NCCLCommunicator(world, MPI, nccl)
    return comm


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cores(ranks_here, environ, numpy_loaded=None):
    """Ranks on one machine share its cores: unless the user set a BLAS thread count, give
    each rank cores / ranks BLAS threads (torchrun sets 1). Left as it was, every rank's
    OpenBLAS starts a thread per core, and the spinning threads of one rank take the cores
    the others need: a 2-rank LeNet step on 2 cores took 10x longer."""
    if numpy_loaded is None:
        numpy_loaded = "numpy" in sys.modules
    if any(v in environ for v in _THREAD_VARS) or numpy_loaded:
        return
    threads = str(max(1, (os.cpu_count() or 1) // ranks_here))
    for v in _THREAD_VARS:
        environ[v] = threads


def _cupy_wanted(environ):
    if environ.get("GPUCNN_BACKEND", "auto").strip().lower() == "numpy":
        return False
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def _use_device(local_rank, device):
    """One GPU per rank: the node-local rank's (modulo the devices this process sees), or `device`."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return  # no usable GPU: the backend's own probe reports it and falls back to NumPy
    chosen = local_rank % count if device is None else device
    if not 0 <= chosen < count:
        raise DistributedError(f"--device {chosen}: this process sees {count} CUDA device(s), 0..{count - 1}")
    cupy.cuda.runtime.setDevice(chosen)


def _where_am_i(mpi):
    import cupy

    return mpi.Get_processor_name(), cupy.cuda.Device().pci_bus_id


def check_gpu_sharing(places, nccl_version, environ=os.environ):
    """`places`: every rank's (host, PCI bus id). Ranks sharing a GPU are refused before NCCL
    would fail on them, unless NCCL allows it (2.30 and later, NCCL_MULTI_RANK_GPU_ENABLE=1).
    The same gathered list on every rank, so every rank raises the same error."""
    ranks = {}
    for rank, place in enumerate(places):
        ranks.setdefault(tuple(place), []).append(rank)
    shared = [(place, rs) for place, rs in ranks.items() if len(rs) > 1]
    if not shared or (nccl_version >= 23000 and environ.get("NCCL_MULTI_RANK_GPU_ENABLE") == "1"):
        return
    (host, bus), rs = shared[0]
    allow = ("set NCCL_MULTI_RANK_GPU_ENABLE=1 to let NCCL share it" if nccl_version >= 23000 else
             f"NCCL {nccl_version} cannot share one (2.30 and later can, with NCCL_MULTI_RANK_GPU_ENABLE=1)")
    raise RanksDisagree(f"ranks {', '.join(map(str, rs))} all use the GPU at {bus} on {host}: start one rank per "
                        f"GPU (or choose with --device), or {allow}")


# --- the three points the training loop calls ------------------------------------------
def agree(comm, facts):
    """Raise the same RanksDisagree on every rank, naming what differs, unless every rank's
    `facts` (a dict of picklable values) equal rank 0's.

    One gather of pickled objects (mpi4py's lowercase allgather: sizes first, then the
    bytes), so ranks whose facts differ in size or kind still gather them whole, and every
    rank sees the same list and takes the same branch."""
    if comm.size == 1:
        return
    everyone = comm.allgather_object(facts)
    keys = sorted(set().union(*everyone))
    problems = [f"rank {r}: {key} is {theirs.get(key)!r}, rank 0 has {everyone[0].get(key)!r}"
                for r, theirs in enumerate(everyone) for key in keys if theirs.get(key) != everyone[0].get(key)]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems) - 4} more)" if len(problems) > 4 else "")
        raise RanksDisagree(f"the ranks do not run the same training: {shown}")


def synchronise_start(comm, model, optimizer, config, data, starting_weights=None):
    """Check every rank built the same run, then give every rank rank 0's state.

    The check compares what each rank will train (configuration, architecture, optimiser,
    dataset sizes and label checksums, backend, and `starting_weights`: a checksum of what
    --resume or --init-from loaded) from one gather, so on a mismatch every rank raises the
    same RanksDisagree, naming what differs, instead of hanging in a collective of the
    wrong size. (The flags are compared earlier: gpucnn.same_run.)
    """
    if comm.size == 1:
        return
    agree(comm, {**_fingerprint(model, optimizer, config, data),
                 "the weights loaded (checksum)": starting_weights})
    for array in _state_arrays(model, optimizer):
        comm.broadcast(array)
    optimizer.lr = float(_host(optimizer.lr_array))


def _fingerprint(model, optimizer, config, data):
    import numpy

    import gpucnn
    from gpucnn import backend
    from gpucnn.same_run import dataset_fact

    # data_dir and a dataset's path (so its file or folder name) may differ between machines;
    # everything else must not
    config = {**config, "dataset": dataset_fact(config.get("dataset"))}
    return {
        **{f"--{k.replace('_', '-')}": v for k, v in sorted(config.items()) if k != "data_dir"},
        "the model": [(key, tuple(a.shape), str(a.dtype)) for key, a in _named_arrays(model)],
        "the optimiser": (type(optimizer).__name__, sorted(optimizer.hyper.items())),
        "the dataset (shapes, label checksums, classes)": data.fingerprint(),
        "gpucnn's version and backend": (gpucnn.__version__, backend.name()),
    }


def _named_arrays(model):
    """(key, array) for every parameter and buffer, in state_dict order."""
    return [(key, store[n]) for key, _, store, n in model._entries()]


def _state_arrays(model, optimizer):
    arrays = [a for _, a in _named_arrays(model)]
    arrays += [buf for key in sorted(optimizer.state) for _, buf in sorted(optimizer.state[key].items())]
    return arrays + [optimizer.lr_array, optimizer.step_array]


def _host(a):
    from gpucnn import backend

    return backend.to_numpy(a)


def average_buffers(comm, model):
    """Replace every floating-point buffer (BatchNorm's running statistics) by its mean over
    ranks, in place: per-rank statistics differ without --sync-bn, and what is evaluated and
    saved must be one model."""
    if comm.size == 1:
        return
    for key, layer, store, n in model._entries():
        a = store[n]
        if store is layer.buffers and a.dtype.kind == "f":
            comm.allreduce(a)
            a /= comm.size


def use_sync_bn(model, comm):
    """Give every BatchNorm the communicator's in-place sum: batch statistics over the global batch."""
    if comm.size == 1:
        return 0
    layers = [layer for _, layer, _, _ in model._entries() if hasattr(layer, "reduce")]
    for layer in set(layers):
        layer.reduce = comm.allreduce
    return len(set(layers))


class GradientSync:
    """Sums each step's gradients over ranks: one flat buffer per dtype, one all-reduce each.

    Called inside the training step after backward (so a CUDA graph captures it): copies
    every gradient into its slot of the flat buffer, all-reduces, and points each layer's
    gradient at its slot, where the optimiser reads it. Three more slots ride along in the
    first buffer, so one all-reduce also gives every rank the global batch's loss sum and
    number correct (the epoch line is the whole job's) and whether any rank saw Ctrl-C.

    The loop announces each global batch (`announce`) before its step: the host sets this
    rank's gradient scale, share / global batch, in a device scalar, read by the captured
    step, so one graph serves every batch of a shape even when the global batch changes.
    """

    LOSS, CORRECT, STOP = -3, -2, -1

    def __init__(self, comm, model, xp):
        import numpy

        self.comm, self.xp = comm, xp
        self.params = model.parameters()
        groups = {}
        for p in self.params:
            groups.setdefault(numpy.dtype(p.value.dtype), []).append(p)
        self.flats, self.slots = [], []
        for i, (dtype, params) in enumerate(groups.items()):
            total = sum(int(p.value.size) for p in params) + (3 if i == 0 else 0)
            flat = xp.zeros(total, dtype=dtype)
            offset = 0
            for p in params:
                self.slots.append((p, flat[offset:offset + p.value.size].reshape(p.value.shape)))
                offset += p.value.size
            self.flats.append(flat)
        first = self.flats[0]
        self.grad_scale = xp.ones((), dtype=first.dtype)
        self.inv_count = xp.ones((), dtype=first.dtype)
        self.stop_flag = xp.zeros((), dtype=first.dtype)
        self._scale_host = self._count = self._first_row = None
        self._stopping = False
        # layers whose random draws depend on the row's place in the global batch (Dropout)
        self.row_dependent = [leaf for leaf in model.leaves() if hasattr(leaf, "first_row")]

    @property
    def nbytes(self):
        return sum(int(f.nbytes) for f in self.flats)

    def announce(self, batches, n, batch_size, first, interrupt):
        """Yield `batches` (this rank's shares, from global batch `first` on), setting for each
        the global batch size, this rank's gradient scale and first row (for Dropout's masks),
        and the Ctrl-C flag once seen."""
        from gpucnn.data.batches import share

        for k, (xb, yb) in enumerate(batches, start=first):
            count = min(batch_size, n - k * batch_size)
            scale = len(yb) / count
            if scale != self._scale_host:  # a device write only when it changes
                self._scale_host = scale
                self.grad_scale[...] = scale
            if count != self._count:
                self._count = count
                self.inv_count[...] = 1.0 / count
            if self.row_dependent:
                first_row = share(count, self.comm.rank, self.comm.size)[0]
                if first_row != self._first_row:
                    self._first_row = first_row
                    for layer in self.row_dependent:
                        layer.first_row[...] = first_row
            if interrupt is not None and interrupt.requested and not self._stopping:
                self._stopping = True
                self.stop_flag[...] = 1
            yield xb, yb

    def global_count(self, yb):
        """Images in the global batch just stepped (what the epoch's sums count)."""
        return self._count

    def __call__(self, loss, correct, n):
        """After backward: all-reduce; return (mean loss, number correct) of the global batch."""
        xp = self.xp
        for p, slot in self.slots:
            grad = p.grad
            if grad is None:
                slot[...] = 0
            else:
                slot[...] = grad
            p.layer.grads[p.name] = slot
        extras = self.flats[0]
        # an empty share's mean loss is 0/0; its sum is 0
        extras[self.LOSS] = loss * n if n else 0
        extras[self.CORRECT] = correct
        extras[self.STOP] = self.stop_flag
        for flat in self.flats:
            self.comm.allreduce(flat)
        return extras[self.LOSS] * self.inv_count, extras[self.CORRECT].astype(xp.int64)

    def stop_seen(self):
        """Whether any rank asked to stop by the last step (a host read: same steps on every rank)."""
        return bool(_host(self.flats[0][self.STOP]) > 0)
