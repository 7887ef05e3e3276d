"""What every optimiser shares: the parameter list, the learning rate and step counter
kept on the device, per-parameter state buffers, state_dict / load_state_dict.

A training step (forward, backward, `step()`) may be captured once in a CUDA graph and
replayed. A replay re-runs the recorded kernels with the arguments they were recorded
with, so anything that changes between steps must live in device memory at a fixed
address and be updated in place: the learning rate, the step counter (Adam's bias
correction) and every state buffer. `step()` therefore never reads a device value back
to the host and never replaces an array.
"""
import numpy

from gpucnn import backend


class Optimizer:
    """Base class. Subclasses define `_buffer_names()`, `_update()` (the NumPy-readable
    reference, which also runs on CuPy) and `_fused_update()` (one CuPy kernel per tensor)."""

    def __init__(self, params, lr, hyper, fused=None):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        keys = [p.key for p in self.params]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"{type(self).__name__}: parameter keys repeat: {duplicates}")
        _check_nonnegative(type(self).__name__, "lr", lr)
        xp = backend.get_array_module(self.params[0].value)
        for p in self.params:
            if backend.get_array_module(p.value) is not xp:
                raise ValueError(f"{type(self).__name__}: {p.key} lives on another backend than {keys[0]}")
        self.xp = xp
        # Fixed for the optimiser's life: they are baked into kernels (and CUDA graphs).
        self.hyper = dict(hyper)
        self._lr_host = float(lr)
        self._lr = xp.full((), self._lr_host, dtype=numpy.float64)
        self._step = xp.zeros((), dtype=numpy.int64)
        # Allocated now, not at the first step, so a graph captured later sees the
        # addresses that every step uses. Zero buffers reproduce torch's first step.
        self.state = {p.key: {n: xp.zeros_like(p.value) for n in self._buffer_names()} for p in self.params}
        if fused is None:
            fused = xp is not numpy
        if fused and xp is numpy:
            raise ValueError(f"{type(self).__name__}: fused=True needs CuPy arrays")
        self.fused = bool(fused)
        if self.fused:  # the kernels (kernels/*.cu) index p and its state as flat C-order arrays
            for p in self.params:
                if not p.value.flags.c_contiguous:
                    raise ValueError(f"{type(self).__name__}: fused=True needs C-contiguous parameters; "
                                     f"{p.key} is not")

    def __repr__(self):
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self.lr}, {hyper}, params={len(self.params)})"

    # --- learning rate and step counter ---------------------------------------
    @property
    def lr(self):
        """The learning rate as a Python float (a host copy: reading it never syncs)."""
        return self._lr_host

    @lr.setter
    def lr(self, value):
        _check_nonnegative(type(self).__name__, "lr", value)
        if float(value) == self._lr_host:
            return  # the trainer sets lr every step; an unchanged value costs no device write
        self._lr_host = float(value)
        self._lr[...] = self._lr_host  # in place: a captured graph reads this very array

    @property
    def lr_array(self):
        """The 0-d float64 device array that `step()` reads the learning rate from."""
        return self._lr

    @property
    def step_array(self):
        """The 0-d int64 device array counting steps taken (incremented by `step()`)."""
        return self._step

    @property
    def steps(self):
        """Steps taken so far, read from the device (a host sync: not inside a captured step)."""
        return int(backend.to_numpy(self._step))

    # --- the update -------------------------------------------------------------
    def step(self):
        """Update every parameter whose grad is not None, in place."""
        self._step += 1  # on the device, so graph replays count too
        scalars = None if self.fused else self._scalars()
        for p in self.params:
            grad = p.grad
            if grad is None:
                continue
            value = p.value
            if grad.shape != value.shape:
                raise ValueError(f"{type(self).__name__}: {p.key} has shape {tuple(value.shape)} "
                                 f"but its grad has shape {tuple(grad.shape)}")
            if self.fused:
                if grad.dtype != value.dtype:  # the kernel reads both as one C type
                    raise ValueError(f"{type(self).__name__}: {p.key} is {value.dtype} but its grad is {grad.dtype}")
                self._fused_update(value, self.xp.ascontiguousarray(grad), self.state[p.key])
            else:
                self._update(value, grad, self.state[p.key], scalars)

    def _scalars(self):
        """Per-step 0-d device values shared by all parameters (computed on the device)."""
        return {"lr": self._lr}

    def _buffer_names(self):
        return ()

    # --- state ---------------------------------------------------------------------
    def state_dict(self):
        """Host copies: {"type", "lr", "step", "hyper", "state": {param key: {buffer: array}}}."""
        return {
            "type": type(self).__name__,
            "lr": float(backend.to_numpy(self._lr)),
            "step": self.steps,
            "hyper": dict(self.hyper),
            "state": {key: {n: backend.to_numpy(a).copy() for n, a in bufs.items()} for key, bufs in self.state.items()},
        }

    def load_state_dict(self, state):
        """Copy a state_dict's buffers, lr and step in place, after checking that its type,
        parameter keys, buffer names and shapes all match; nothing changes if one does not.
        Hyper-parameters other than lr stay those given to the constructor."""
        name = type(self).__name__
        if not isinstance(state, dict) or "state" not in state:
            raise ValueError(f"{name}.load_state_dict: not an optimiser state_dict")
        if state.get("type") != name:
            raise ValueError(f"{name}.load_state_dict: the state is from {state.get('type')!r}, not {name}")
        saved = state["state"]
        missing, unexpected = sorted(set(self.state) - set(saved)), sorted(set(saved) - set(self.state))
        if missing or unexpected:
            raise ValueError(f"{name}.load_state_dict: parameter keys do not match "
                             f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'})")
        for key, bufs in self.state.items():
            if set(bufs) != set(saved[key]):
                raise ValueError(f"{name}.load_state_dict: {key} has buffers {sorted(saved[key])}, this {name} "
                                 f"keeps {sorted(bufs)} (different hyper-parameters?)")
            for n, buf in bufs.items():
                shape = tuple(numpy.shape(saved[key][n]))
                if shape != tuple(buf.shape):
                    raise ValueError(f"{name}.load_state_dict: {key} {n} has shape {shape}, "
                                     f"this parameter has shape {tuple(buf.shape)}")
        for key, bufs in self.state.items():
            for n, buf in bufs.items():
                buf[...] = self.xp.asarray(backend.to_numpy(saved[key][n]), dtype=buf.dtype)
        self.lr = state["lr"]
        self._step[...] = int(state["step"])


def cast(scalar, like):
    """A 0-d device scalar in `like`'s dtype, so float32 parameters stay float32 math."""
    return backend.get_array_module(like).asarray(scalar, dtype=like.dtype)


def _check_nonnegative(owner, what, value):
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{owner}: {what} must be >= 0, got {value}")
