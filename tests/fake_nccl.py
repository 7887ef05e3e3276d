"""A stand-in for cupy.cuda.nccl and the few mpi4py calls the NCCL communicator makes,
recording calls: the communicator's logic without a GPU. With tests/fake_cupy.py installed,
a collective issued while a stream captures is held by the graph, and ncclCommAbort or
ncclCommDestroy of a communicator some live graph holds never returns (as NCCL 2.26 and
later wait for such graphs), which the stand-in shows by raising `WouldHang`."""
import sys

import numpy


class WouldHang(BaseException):
    """NCCL would wait here for ever; a BaseException, so no `except Exception` hides it."""


class FakeNccl:
    NCCL_SUM, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64 = 0, 7, 8, 4

    def __init__(self):
        self.calls = []
        self.held_by_graphs = 0
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                fake.calls.append(("init", ndev, uid, rank))

            def allReduce(self, send, recv, count, dtype, op, stream):
                fake.calls.append(("allReduce", send, recv, count, dtype, op, stream))
                fake._captured()

            def bcast(self, buf, count, dtype, root, stream):
                fake.calls.append(("bcast", buf, count, dtype, root, stream))
                fake._captured()

            def abort(self):
                fake._would_wait("ncclCommAbort")
                fake.calls.append(("abort",))

            def destroy(self):
                fake._would_wait("ncclCommDestroy")
                fake.calls.append(("destroy",))

        self.NcclCommunicator = NcclCommunicator

    def _captured(self):
        cupy = sys.modules.get("cupy")
        if not getattr(cupy, "is_stand_in", False):  # tests/fake_cupy.py's streams only
            return
        stream = cupy.cuda.get_current_stream()
        if stream.capturing:
            self.held_by_graphs += 1
            stream.retain(self._released)

    def _released(self):
        self.held_by_graphs -= 1

    def _would_wait(self, what):
        if self.held_by_graphs:
            raise WouldHang(f"{what} waits for the {self.held_by_graphs} live graph(s) that captured a collective")

    def get_unique_id(self):
        return (1, 2, 3)

    def get_version(self):
        return 22800


class FakeDeviceArray:
    def __init__(self, size, dtype, ptr=4096):
        self.size, self.dtype, self.device = size, numpy.dtype(dtype), 0
        self.data = type("Mem", (), {"ptr": ptr})()
        self.flags = type("Flags", (), {"c_contiguous": True})()


class FakeMpiComm:
    """COMM_WORLD of `size` ranks as rank `rank` sees it; Abort ends the 'process' (SystemExit)."""

    def __init__(self, rank=0, size=2):
        self.rank, self.size, self.bcasts, self.aborted = rank, size, [], []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind, key=0):
        return self

    def Free(self):
        pass

    def bcast(self, obj, root=0):
        self.bcasts.append(obj)
        return obj

    def Abort(self, code):
        self.aborted.append(code)
        raise SystemExit(code)


FakeMpi = type("MPI", (), {"COMM_TYPE_SHARED": 1})
