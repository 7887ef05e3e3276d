"""An exponential moving average of a net's weights, kept on the device beside it.

After every optimiser step, inside the same (graph-captured) training step:

    shadow <- decay * shadow + (1 - decay) * param        for every learned parameter
    shadow <- buffer                                       for every buffer (BatchNorm statistics)

The shadow starts as a copy of the initial weights; decay is fixed for the run. BatchNorm's
running statistics are copied, not averaged: they are already a moving average, of
activations computed with the live weights, and copying is what timm's ModelEmaV2 and
torch.optim.swa_utils.AveragedModel (use_buffers=False) keep for evaluation; averaging them
a second time would only make them lag the live net further.
All arrays are updated in place, so a CUDA graph that captured the step replays the update.
"""
import contextlib

import numpy

from gpucnn import backend, kernels
from gpucnn.sequential import walk


class EMA:
    def __init__(self, model, decay):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ValueError(f"--ema: the decay must be in (0, 1) (0.999 is usual), got {decay!r}")
        self.decay = float(decay)
        self.averaged, self.copied = [], []  # (key, live array, shadow array)
        for prefix, leaf in walk(model):
            for n, a in leaf.params.items():
                self.averaged.append((prefix + n, a, a.copy()))
            for n, a in leaf.buffers.items():
                self.copied.append((prefix + n, a, a.copy()))

    def update(self):
        """One averaging step, on the device, in place (no host sync)."""
        d = self.decay
        for _, live, shadow in self.averaged:
            if backend.is_cupy_array(live):
                live = backend.cupy_module().ascontiguousarray(live)
                kernels.launch("ema.cu", "ema_update", live.dtype, live.size,
                               (live, numpy.float64(d), shadow, numpy.int64(live.size)))
            else:
                shadow *= d
                shadow += (1.0 - d) * live
        self.copy_buffers()

    def copy_buffers(self):
        """shadow <- buffer for every buffer (also after the trainer averages them over ranks)."""
        for _, live, shadow in self.copied:
            shadow[...] = live

    @contextlib.contextmanager
    def swapped(self):
        """Inside the block the net holds the averaged weights (copied in place), after it its own."""
        pairs = [(live, shadow) for _, live, shadow in self.averaged + self.copied]
        kept = [live.copy() for live, _ in pairs]
        for live, shadow in pairs:
            live[...] = shadow
        try:
            yield
        finally:
            for (live, _), own in zip(pairs, kept):
                live[...] = own

    def state_dict(self):
        """Host copies under the net's own state_dict keys."""
        return {key: backend.to_numpy(shadow).copy() for key, _, shadow in self.averaged + self.copied}

    def load_state_dict(self, state):
        own = {key: shadow for key, _, shadow in self.averaged + self.copied}
        if set(own) != set(state):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"EMA.load_state_dict: keys do not match this model (missing: {missing or 'none'}; "
                             f"unexpected: {unexpected or 'none'})")
        for key, shadow in own.items():
            if tuple(shadow.shape) != tuple(state[key].shape):
                raise ValueError(f"EMA.load_state_dict: {key} has shape {tuple(state[key].shape)}, "
                                 f"the model's is {tuple(shadow.shape)}")
        for key, shadow in own.items():
            shadow[...] = backend.get_array_module(shadow).asarray(backend.to_numpy(state[key]), dtype=shadow.dtype)

