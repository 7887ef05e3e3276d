"""Prefetch: the next batch is gathered (and on CuPy sent) while the current step runs.

NumPy: a background thread gathers each batch and does its device work (augmentation,
normalisation: NumPy too) into a bounded queue, DEPTH batches ahead. CuPy: the thread
gathers each batch into a pinned host buffer; the main thread sends it to the device on a
second stream, an event marks the copy done, and the caller's stream (the graphed step's)
waits for that event before its augmentation and normalisation read the batch. The copy
of batch k+1 is queued before batch k is handed out, so it overlaps step k. A slot (pinned
buffer + device buffer) is reused only after its copy finished (host waits on the copy's
event) and after the caller's stream is done reading it (the copy stream waits on an event
recorded there): no buffer is written while it is read.

Either way the batches are the very ones `iterate` gives without prefetch: the same host
gather, the same device functions, in the same order. An exception in the thread is raised
in the caller at the batch it happened; closing the generator (the end of the epoch, an
early exit, Ctrl-C or SIGTERM reaching the loop) stops the thread and joins it.
"""
import queue
import threading

from .. import backend

DEPTH = 2  # batches gathered ahead: one to hand out next, one in the making
_POLL = 0.1  # seconds between checks of the stop flag while the queue is full


class _Failed:
    def __init__(self, error):
        self.error = error


_END = object()


class _Worker:
    """Runs `produce(item)` for each item of `items` in a daemon thread, results into a
    bounded queue; `get()` returns them in order, raising what the thread raised."""

    def __init__(self, items, produce, depth):
        self.queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(items, produce), name="gpucnn-prefetch", daemon=True)
        self.thread.start()

    def _run(self, items, produce):
        try:
            for item in items:
                if not self._put(produce(item)):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the caller, who raises it
            self._put(_Failed(e))

    def _put(self, value):
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        value = self.queue.get()
        if isinstance(value, _Failed):
            raise value.error
        return value

    def close(self):
        self.stop.set()
        self.thread.join()


def prefetched(host_batches, finish, depth=DEPTH):
    """The generator `iterate(..., prefetch=True)` returns: finish(device x, HostBatch) of
    each HostBatch, prepared ahead of the caller."""
    if backend.is_cupy_array(finish.mul):
        return _on_cupy(host_batches, finish, depth)
    return _on_numpy(host_batches, finish, depth)


def _on_numpy(host_batches, finish, depth):
    worker = _Worker(host_batches, lambda hb: finish(hb.x, hb), depth)
    try:
        while (batch := worker.get()) is not _END:
            yield batch
    finally:
        worker.close()


class _Slot:
    """A pinned host buffer and a device buffer of one batch's images, with the events that
    say when each may be written again."""

    def __init__(self, cupy, shape, dtype):
        import cupyx

        self.pinned = cupyx.empty_pinned(shape, dtype)
        self.device = cupy.empty(shape, dtype)
        self.sent = None      # on the copy stream: the copy from `pinned` is done
        self.read = None      # on the caller's stream: its reads of `device` are done

    def fits(self, x):
        return self.pinned.shape[1:] == x.shape[1:] and self.pinned.dtype == x.dtype and len(self.pinned) >= len(x)


def _on_cupy(host_batches, finish, depth):
    # The thread only gathers (NumPy); every CUDA call stays in this thread, on this
    # process's device. Two slots: the batch handed out and the one being sent.
    cupy = backend.cupy_module()
    copy_stream = cupy.cuda.Stream(non_blocking=True)
    ring = [None, None]
    worker = _Worker(host_batches, lambda hb: hb, depth)

    def send(hb, k):
        n, slot = len(hb.x), ring[k % 2]
        if slot is None or not slot.fits(hb.x):
            slot = ring[k % 2] = _Slot(cupy, (max(n, 1), *hb.x.shape[1:]), hb.x.dtype)
            # A new device buffer comes from the caller's stream's pool: memory its queued
            # work may still use. The copy stream writes it only after that work.
            slot.read = cupy.cuda.get_current_stream().record()
        if slot.sent is not None:
            slot.sent.synchronize()  # the copy engine may still be reading the pinned buffer
        slot.pinned[:n] = hb.x
        if slot.read is not None:
            copy_stream.wait_event(slot.read)  # the caller's reads of the device buffer come first
        slot.device[:n].set(slot.pinned[:n], stream=copy_stream)
        slot.sent = copy_stream.record()
        return slot, hb

    try:
        k = 0
        pending = worker.get()
        pending = None if pending is _END else send(pending, k)
        while pending is not None:
            nxt = worker.get()
            nxt = None if nxt is _END else send(nxt, k + 1)  # queued now: overlaps the step on this batch
            slot, hb = pending
            caller = cupy.cuda.get_current_stream()
            caller.wait_event(slot.sent)
            batch = finish(slot.device[:len(hb.x)], hb)
            slot.read = caller.record()
            yield batch
            pending, k = nxt, k + 1
    finally:
        worker.close()
        copy_stream.synchronize()  # no copy is in flight when the buffers go back to the pools
