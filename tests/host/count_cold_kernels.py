"""How many GPU kernels a cold process compiles, counted on the CPU with the host stand-in
for CuPy (tests/host_cupy.py): gpucnn's CuPy code path runs on NumPy arrays, and every
distinct (ufunc or reduction, method, dtypes, ndim) it calls stands for one CuPy kernel
(CuPy compiles one per such combination on first use, ndim included), every (file, dtype)
module for one of ours. An estimate for setting the time limits in scripts/gpu_checks.sh:
NVRTC takes 0.25 to 0.7 s a kernel on a CPU. Launches do nothing here (see install), so the
numbers computed are meaningless. Not a test (prints only):

    PYTHONPATH=. python tests/host/count_cold_kernels.py [--json]

(tests/test_gpu_checks.py checks the quick mode's limits against its counts.)
"""
import json
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import host_cupy  # noqa: E402

seen = set()


class Counting(host_cupy.ndarray):
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        dtypes = tuple(numpy.asarray(a).dtype.str for a in inputs if isinstance(a, numpy.ndarray))
        ndim = max((a.ndim for a in inputs if isinstance(a, numpy.ndarray)), default=0)
        seen.add(("cupy", ufunc.__name__, method, dtypes, ndim, kwargs.get("dtype") and str(kwargs["dtype"])))
        plain = tuple(numpy.asarray(a) if isinstance(a, numpy.ndarray) else a for a in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(numpy.asarray(o) for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        return host_cupy._device(result) if isinstance(result, numpy.ndarray) else result

    # Copies and casts are CuPy elementwise kernels too (one per dtype pair and ndim).
    def astype(self, dtype, *args, **kwargs):
        seen.add(("cupy", "astype", self.dtype.str, numpy.dtype(dtype).str, self.ndim))
        return super().astype(dtype, *args, **kwargs)

    def copy(self, *args, **kwargs):
        seen.add(("cupy", "copy", self.dtype.str, self.ndim))
        return super().copy(*args, **kwargs)

    def __setitem__(self, key, value):
        seen.add(("cupy", "setitem", self.dtype.str, str(getattr(value, "dtype", type(value).__name__)), self.ndim))
        super().__setitem__(key, value)

    def __getitem__(self, key):
        if isinstance(key, numpy.ndarray) or (isinstance(key, tuple) and any(isinstance(k, numpy.ndarray) for k in key)):
            seen.add(("cupy", "take", self.dtype.str, self.ndim))  # fancy indexing: a gather kernel
        return super().__getitem__(key)


# Module functions that launch no NVRTC-compiled kernel (allocation, host copies, cuBLAS).
NO_KERNEL = {"empty", "empty_like", "asarray", "ascontiguousarray", "zeros", "zeros_like", "asnumpy", "matmul",
             "dtype", "prod", "result_type"}


class Patch:
    def setitem(self, d, k, v):
        d[k] = v

    def setattr(self, obj, name, value):
        setattr(obj, name, value)


def install():
    from gpucnn import backend

    fake = host_cupy.install(Patch())
    numpy_getattr = fake.__getattr__

    def counting_getattr(name):
        value = numpy_getattr(name)
        if not callable(value) or isinstance(value, type) or name in NO_KERNEL:
            return value

        def counted(*args, **kwargs):
            dtypes = tuple(a.dtype.str for a in args if isinstance(a, numpy.ndarray))
            seen.add(("cupy", name, dtypes, max((a.ndim for a in args if isinstance(a, numpy.ndarray)), default=0)))
            return value(*args, **kwargs)

        return counted

    fake.__getattr__ = counting_getattr
    backend.name_ = "cupy"  # what `--backend cupy` sets (check.py picks the lowerings by it)
    backend.synchronize = lambda: None
    fake.ndarray = Counting
    host_cupy.ndarray = Counting  # what _device views results as
    original = host_cupy.RawModule.compile

    def compile_(self):
        seen.add(("ours", host_cupy._KERNEL.findall(self.code)[0], self.options))
        return original(self)

    host_cupy.RawModule.compile = compile_
    # Only which kernels run matters here, not what they compute: launches do nothing (the
    # numbers come out wrong, and a gradient check that runs every layer hundreds of times
    # takes seconds instead of many minutes of host threads).
    host_cupy.Function.__call__ = lambda self, grid, block, args: None
    numpy.seterr(all="ignore")
    return fake


def count(label, run):
    seen.clear()
    run()
    ours = sum(1 for s in seen if s[0] == "ours")
    print(f"{label}: {len(seen) - ours} CuPy kernels + {ours} gpucnn modules")
    return {s for s in seen}


def check():
    from gpucnn import check as check_module

    check_module.run(print_fn=lambda *a: None)


def train_step(model_name, shape, dtype=numpy.float32, steps=2):
    def run():
        from gpucnn import backend, models
        from gpucnn.optim import SGD
        from gpucnn.train import make_step

        net = models.build(model_name, shape[1:], 10, dtype=dtype)
        step = make_step(net, SGD([p for p in net.parameters()], lr=0.01, momentum=0.9), use_graph=False)
        rng = numpy.random.default_rng(0)
        x = backend.xp.asarray(rng.standard_normal(shape).astype(dtype))
        y = backend.xp.asarray(rng.integers(0, 10, shape[0]))
        for _ in range(steps):
            step(x, y)

    return run


def as_float32(keys):
    """The same kernels for float32 data (the GPU tests run most layers in both dtypes)."""
    return {tuple(str(k).replace("<f8", "<f4").replace("double", "float") for k in key) for key in keys}


if __name__ == "__main__":
    install()
    check_kernels = count("gpucnn check (float64)", check)
    lenet_kernels = count("lenet training step (float32)", train_step("lenet", (8, 1, 28, 28)))
    both_dtypes = {tuple(map(str, k)) for k in check_kernels} | as_float32(check_kernels) | \
        {tuple(map(str, k)) for k in lenet_kernels}
    print(f"the check's kernels in both dtypes and the LeNet step's (what pytest -m gpu compiles at least): "
          f"{len(both_dtypes)} distinct")
    if "--json" in sys.argv:
        print(json.dumps({"check": len(check_kernels), "lenet_step": len(lenet_kernels),
                          "gpu_tests_at_least": len(both_dtypes)}))
