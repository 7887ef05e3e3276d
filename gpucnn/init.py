"""Parameter initialisation, drawn on the host from one seeded generator.

Drawing on the host makes a seeded net identical on NumPy and CuPy.
Defaults follow PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
(PyTorch's kaiming_uniform with a=sqrt(5) reduces to this bound).
"""
import numpy

from gpucnn import backend

_rng = numpy.random.default_rng(0)


def seed(value):
    """Reseed the generator every layer draws its initial parameters from."""
    global _rng
    _rng = numpy.random.default_rng(value)


def uniform_fan_in(shape, fan_in, dtype):
    bound = 1.0 / numpy.sqrt(fan_in)
    return backend.to_device(_rng.uniform(-bound, bound, size=shape), dtype=dtype)


def rng_state():
    return _rng.bit_generator.state


def set_rng_state(state):
    _rng.bit_generator.state = state


def integer_seed():
    """A 63-bit seed drawn from the same generator (for layers that hash their own randomness)."""
    return int(_rng.integers(2**63))
