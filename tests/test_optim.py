"""Optimisers: hand-computed steps, agreement with torch.optim, lr changes, state_dict,
in-place updates (what a CUDA graph capture needs), and the fused CuPy kernels."""
import types

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from gpucnn.optim import SGD, Adam, AdamW, make_optimizer
from gpucnn.sequential import Param


class FakeParam:
    """What an optimiser needs from a parameter handle: .key, .value, .grad."""

    def __init__(self, key, value, grad=None):
        self.key, self.value, self.grad = key, value, grad


def params_of(*arrays):
    return [FakeParam(f"{i}.weight", numpy.array(a, dtype=numpy.float64)) for i, a in enumerate(arrays)]


def run(opt, params, grads):
    """One step per entry of grads (a list of per-parameter gradient lists)."""
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = numpy.array(g, dtype=p.value.dtype)
        opt.step()


# --- hand-computed steps (dyadic numbers: SGD results are exact) -------------------------
def test_sgd_plain_by_hand():
    (p,) = params = params_of([1.0, -2.0])
    run(SGD(params, lr=0.5), params, [[[0.5, 1.0]], [[-1.0, 0.25]]])
    # p - lr*g twice: [1 - .25 + .5, -2 - .5 - .125]
    assert_array_equal(p.value, [1.25, -2.625])


def test_sgd_momentum_weight_decay_by_hand():
    (p,) = params = params_of([1.0, -2.0])
    opt = SGD(params, lr=0.5, momentum=0.5, weight_decay=0.25)
    # step 1: d = g + wd*p = [.5+.25, 1-.5] = [.75, .5]; buf = d; p = p - .5*buf = [.625, -2.25]
    run(opt, params, [[[0.5, 1.0]]])
    assert_array_equal(p.value, [0.625, -2.25])
    assert_array_equal(opt.state["0.weight"]["momentum_buffer"], [0.75, 0.5])
    # step 2: d = [-1 + .25*.625, .25 + .25*-2.25] = [-.84375, -.3125]
    #         buf = .5*[.75, .5] + d = [-.46875, -.0625]; p = p - .5*buf = [.859375, -2.21875]
    run(opt, params, [[[-1.0, 0.25]]])
    assert_array_equal(p.value, [0.859375, -2.21875])
    # step 3: d = [.25*.859375, 2 + .25*-2.21875] = [.21484375, 1.4453125]
    #         buf = .5*[-.46875, -.0625] + d = [-.01953125, 1.4140625]; p = p - .5*buf
    run(opt, params, [[[0.0, 2.0]]])
    assert_array_equal(opt.state["0.weight"]["momentum_buffer"], [-0.01953125, 1.4140625])
    assert_array_equal(p.value, [0.869140625, -2.92578125])


def test_sgd_nesterov_by_hand():
    (p,) = params = params_of([1.0, -2.0])
    opt = SGD(params, lr=0.5, momentum=0.5, nesterov=True)
    # step 1: buf = g = [.5, 1]; d = g + .5*buf = [.75, 1.5]; p = [1 - .375, -2 - .75]
    run(opt, params, [[[0.5, 1.0]]])
    assert_array_equal(p.value, [0.625, -2.75])
    # step 2: buf = .5*[.5, 1] + [-1, .25] = [-.75, .75]; d = g + .5*buf = [-1.375, .625]
    run(opt, params, [[[-1.0, 0.25]]])
    assert_array_equal(p.value, [0.625 + 0.6875, -2.75 - 0.3125])


def textbook_adam(p, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    """Kingma & Ba's Algorithm 1 (bias-corrected m_hat, v_hat), written independently."""
    p, m, v = numpy.array(p, dtype=float), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        g = numpy.array(g, dtype=float)
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (numpy.sqrt(v_hat) + eps)
    return p


ADAM_GRADS = [[0.5, -1.0, 0.0], [0.25, 2.0, -0.125], [-0.75, 0.5, 1.0]]


def test_adam_first_step_moves_by_lr_times_sign():
    # m_hat = g and v_hat = g*g after one step, so the step is lr * g / (|g| + eps).
    (p,) = params = params_of([1.0, -2.0, 3.0])
    run(Adam(params, lr=0.1), params, [[ADAM_GRADS[0]]])
    assert_allclose(p.value, [1 - 0.1 * 0.5 / (0.5 + 1e-8), -2 + 0.1 * 1 / (1 + 1e-8), 3.0], rtol=1e-15)


@pytest.mark.parametrize("cls, wd", [(Adam, 0.0), (Adam, 0.5), (AdamW, 0.5)])
def test_adam_by_hand(cls, wd):
    (p,) = params = params_of([1.0, -2.0, 3.0])
    opt = cls(params, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    for n in range(1, 4):
        run(opt, params, [[ADAM_GRADS[n - 1]]])
        expected = textbook_adam([1.0, -2.0, 3.0], ADAM_GRADS[:n], 0.1, 0.9, 0.999, 1e-8, wd, cls is AdamW)
        assert_allclose(p.value, expected, rtol=1e-13, atol=1e-15)
    assert opt.steps == 3


def test_adamw_decay_is_decoupled():
    # A zero gradient leaves Adam's moments at 0, so only the decay p *= 1 - lr*wd acts.
    (p,) = params = params_of([2.0, -4.0])
    run(AdamW(params, lr=0.5, weight_decay=0.25), params, [[[0.0, 0.0]]])
    assert_array_equal(p.value, [2.0 * 0.875, -4.0 * 0.875])


# --- against torch.optim ------------------------------------------------------------
CONFIGS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, momentum=0.8, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adamw", dict(lr=1e-2)),
    ("adamw", dict(lr=1e-2, betas=(0.85, 0.95), weight_decay=0.3)),
]


def torch_optimizer(torch, name, tensors, kw):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(tensors, **kw)


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_matches_torch(name, kw, rng):
    torch = pytest.importorskip("torch")
    shapes = [(4, 3), (3,), (2, 1, 3, 3)]
    init = [rng.standard_normal(s) for s in shapes]
    params = [FakeParam(f"{i}.weight", a.copy()) for i, a in enumerate(init)]
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
    opt = make_optimizer(name, params, **kw)
    topt = torch_optimizer(torch, name, tensors, kw)
    for step in range(6):
        if step == 3:  # an lr change mid-run takes effect at the next step
            opt.lr = kw["lr"] * 0.3
            for group in topt.param_groups:
                group["lr"] = kw["lr"] * 0.3
        for p, t in zip(params, tensors):
            g = rng.standard_normal(p.value.shape)
            p.grad = g
            t.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        topt.step()
        for p, t in zip(params, tensors):
            assert_allclose(p.value, t.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"{name} step {step}")


# --- learning rate, step counter, in-place updates ----------------------------------------
def test_lr_change_takes_effect():
    (p,) = params = params_of([1.0])
    opt = SGD(params, lr=0.5)
    run(opt, params, [[[1.0]]])
    opt.lr = 0.25
    assert opt.lr == 0.25 and float(opt.lr_array) == 0.25
    run(opt, params, [[[1.0]]])
    assert_array_equal(p.value, [1.0 - 0.5 - 0.25])


def test_device_scalars_and_buffers_are_updated_in_place():
    # A captured CUDA graph holds addresses: step(), lr= and load_state_dict must never
    # replace an array, only write into it.
    params = params_of([1.0, 2.0], [[3.0]])
    opt = Adam(params, lr=0.1)
    arrays = [opt.lr_array, opt.step_array] + [b for bufs in opt.state.values() for b in bufs.values()]
    arrays += [p.value for p in params]
    before = [(id(a), a.__array_interface__["data"][0]) for a in arrays]
    assert opt.lr_array.shape == () and opt.step_array.shape == ()
    run(opt, params, [[[0.5, 0.5], [[1.0]]]] * 2)
    opt.lr = 0.01
    opt.load_state_dict(opt.state_dict())
    after_arrays = [opt.lr_array, opt.step_array] + [b for bufs in opt.state.values() for b in bufs.values()]
    after_arrays += [p.value for p in params]
    assert [(id(a), a.__array_interface__["data"][0]) for a in after_arrays] == before
    assert opt.steps == 2 and int(opt.step_array) == 2


def test_buffers_allocated_at_construction():
    params = params_of([1.0, 2.0])
    assert set(SGD(params, lr=0.1, momentum=0.9).state["0.weight"]) == {"momentum_buffer"}
    assert SGD(params, lr=0.1).state["0.weight"] == {}
    assert set(AdamW(params).state["0.weight"]) == {"exp_avg", "exp_avg_sq"}


def test_param_without_grad_is_skipped():
    a, b = params = params_of([1.0], [2.0])
    opt = SGD(params, lr=0.5, momentum=0.9)
    a.grad, b.grad = numpy.array([1.0]), None
    opt.step()
    assert_array_equal(a.value, [0.5])
    assert_array_equal(b.value, [2.0])
    assert_array_equal(opt.state["1.weight"]["momentum_buffer"], [0.0])


def test_layer_grad_is_not_modified():
    (p,) = params = params_of([1.0, 2.0])
    g = numpy.array([0.5, 0.5])
    p.grad = g
    SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1).step()
    Adam(params, weight_decay=0.1).step()
    assert_array_equal(g, [0.5, 0.5])


def test_float32_parameters_stay_float32():
    p = FakeParam("0.weight", numpy.array([1.0, -2.0], dtype=numpy.float32))
    p.grad = numpy.array([0.5, 1.0], dtype=numpy.float32)
    for opt in (SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1), Adam([p], weight_decay=0.1), AdamW([p])):
        opt.step()
        assert p.value.dtype == numpy.float32
        assert all(b.dtype == numpy.float32 for b in opt.state["0.weight"].values())


def test_works_with_sequential_param_handles():
    # Sequential's Param reads layer.params / layer.grads on every access; a backward
    # stores a fresh grad array each time.
    layer = types.SimpleNamespace(params={"weight": numpy.array([1.0, 2.0])}, grads={})
    weight = layer.params["weight"]
    opt = SGD([Param("0.weight", layer, "weight")], lr=0.5, momentum=0.5)
    opt.step()  # no grad yet: skipped
    for g in ([1.0, 1.0], [2.0, 0.0]):
        layer.grads["weight"] = numpy.array(g)
        opt.step()
    # buf: [1, 1] then [2.5, .5]; p: [1, 2] - .5*[1, 1] - .5*[2.5, .5]
    assert layer.params["weight"] is weight
    assert_array_equal(weight, [-0.75, 1.25])


def test_grad_shape_mismatch():
    (p,) = params = params_of([1.0, 2.0])
    p.grad = numpy.ones(3)
    with pytest.raises(ValueError, match=r"0\.weight"):
        SGD(params, lr=0.1).step()


# --- state_dict ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", [CONFIGS[2], CONFIGS[4], CONFIGS[6], CONFIGS[8]])
def test_state_dict_round_trip(name, kw, rng):
    shapes = [(3, 2), (2,)]
    a_params = [FakeParam(f"{i}.weight", rng.standard_normal(s)) for i, s in enumerate(shapes)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]
    a = make_optimizer(name, a_params, **kw)
    run(a, a_params, grads[:3])
    state = a.state_dict()
    assert state["step"] == 3 and state["type"] == type(a).__name__
    for key, bufs in state["state"].items():
        for n, buf in bufs.items():
            assert isinstance(buf, numpy.ndarray) and not numpy.shares_memory(buf, a.state[key][n])
    b_params = [FakeParam(p.key, p.value.copy()) for p in a_params]
    b = make_optimizer(name, b_params, **{**kw, "lr": 123.0})
    b.load_state_dict(state)
    assert b.lr == a.lr and b.steps == 3
    run(a, a_params, grads[3:])
    run(b, b_params, grads[3:])
    for pa, pb in zip(a_params, b_params):
        assert_array_equal(pa.value, pb.value)


def test_load_state_dict_errors_and_changes_nothing():
    params = params_of([1.0, 2.0], [3.0])
    state = SGD(params, lr=0.1, momentum=0.9).state_dict()
    opt = SGD(params_of([1.0, 2.0], [3.0]), lr=0.7, momentum=0.9)

    def broken(mutate):
        s = {**state, "state": {k: dict(v) for k, v in state["state"].items()}}
        mutate(s)
        return s

    with pytest.raises(ValueError, match=r"missing: \['1\.weight'\]"):
        opt.load_state_dict(broken(lambda s: s["state"].pop("1.weight")))
    with pytest.raises(ValueError, match=r"unexpected: \['9\.bias'\]"):
        opt.load_state_dict(broken(lambda s: s["state"].update({"9.bias": {}})))
    with pytest.raises(ValueError, match=r"0\.weight momentum_buffer has shape \(3,\)"):
        opt.load_state_dict(broken(lambda s: s["state"]["0.weight"].update(momentum_buffer=numpy.zeros(3))))
    with pytest.raises(ValueError, match="'SGD', not Adam"):
        Adam(params).load_state_dict(state)
    with pytest.raises(ValueError, match=r"0\.weight has buffers \['momentum_buffer'\]"):
        SGD(params, lr=0.1).load_state_dict(state)
    assert opt.lr == 0.7 and opt.steps == 0


# --- construction ----------------------------------------------------------------------------
def test_make_optimizer():
    params = params_of([1.0])
    assert isinstance(make_optimizer("sgd", params, lr=0.1, momentum=0.9), SGD)
    assert make_optimizer("SGD", params, lr=0.1, momentum=0.9, nesterov=True).hyper["nesterov"] is True
    adam = make_optimizer("adam", params, lr=0.1, momentum=0.9)  # momentum is SGD's: ignored
    assert type(adam) is Adam and adam.hyper["weight_decay"] == 0.0
    assert make_optimizer("adamw", params, lr=0.1).hyper["weight_decay"] == 0.01
    assert make_optimizer("adamw", params, lr=0.1, weight_decay=0.0).hyper["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="sgd, adam, adamw"):
        make_optimizer("rmsprop", params, lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        make_optimizer("adam", params, lr=0.1, nesterov=True)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=-1.0),
    lambda ps: SGD(ps, lr=0.1, momentum=-0.5),
    lambda ps: SGD(ps, lr=0.1, nesterov=True),
    lambda ps: Adam(ps, betas=(1.0, 0.999)),
    lambda ps: Adam(ps, eps=-1.0),
    lambda ps: AdamW(ps, weight_decay=-0.1),
    lambda ps: SGD([], lr=0.1),
    lambda ps: SGD(ps + ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.1, fused=True),  # fused kernels are CuPy's
])
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make(params_of([1.0]))


def test_negative_lr_assignment():
    opt = SGD(params_of([1.0]), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = float("nan")
    assert opt.lr == 0.1


# --- CuPy: fused kernels and CUDA graph capture -----------------------------------------
def cupy_params(cp, init):
    return [FakeParam(f"{i}.weight", cp.asarray(a)) for i, a in enumerate(init)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rtol", [(numpy.float64, 1e-12), (numpy.float32, 2e-5)])
@pytest.mark.parametrize("name, kw", CONFIGS)
def test_fused_kernel_matches_reference(name, kw, dtype, rtol, rng):
    import cupy as cp

    init = [rng.standard_normal(s).astype(dtype) for s in [(5, 4), (7,)]]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in init] for _ in range(4)]
    results = []
    for fused in (False, True):
        params = cupy_params(cp, init)
        opt = make_optimizer(name, params, fused=fused, **kw)
        for step, gs in enumerate(grads):
            if step == 2:
                opt.lr = kw["lr"] / 2
            for p, g in zip(params, gs):
                p.grad = cp.asarray(g)
            opt.step()
        assert all(p.value.dtype == dtype for p in params)
        results.append([cp.asnumpy(p.value) for p in params])
    for ref, fused in zip(*results):
        assert_allclose(fused, ref, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("name, kw", [CONFIGS[4], CONFIGS[6], CONFIGS[8]])
def test_step_replays_in_a_cuda_graph(name, kw, fused, rng):
    # Capture step() once, replay it with new gradients (copied into the captured grad
    # arrays) and a new lr each time: it must match plain eager steps. Both update paths
    # must be capturable: no host sync, everything that changes read from device memory.
    import cupy as cp

    init = [rng.standard_normal(s) for s in [(5, 4), (7,)]]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(5)]
    lrs = [kw["lr"] * f for f in (1.0, 0.5, 0.25, 0.125, 0.1)]

    eager = cupy_params(cp, init)
    opt = make_optimizer(name, eager, fused=fused, **kw)
    for lr, gs in zip(lrs, grads):
        opt.lr = lr
        for p, g in zip(eager, gs):
            p.grad = cp.asarray(g)
        opt.step()

    graphed = cupy_params(cp, init)
    opt = make_optimizer(name, graphed, fused=fused, **kw)
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()  # the setup's copies ran on the legacy stream, which `stream` does not wait for
    with stream:
        for p in graphed:
            p.grad = cp.zeros_like(p.value)
        opt.step()  # a real first step, outside the capture: compiles the kernels
        stream.begin_capture()
        opt.step()
        graph = stream.end_capture()
        opt.load_state_dict({**opt.state_dict(), "step": 0})  # undo the first (zero-grad) step's count
        for p in graphed:
            p.value[...] = cp.asarray(init[int(p.key[0])])
        for buf in (b for bufs in opt.state.values() for b in bufs.values()):
            buf.fill(0)
        for lr, gs in zip(lrs, grads):
            opt.lr = lr
            for p, g in zip(graphed, gs):
                p.grad[...] = cp.asarray(g)
            graph.launch(stream=stream)
    stream.synchronize()
    assert opt.steps == len(grads)
    for a, b in zip(eager, graphed):
        assert_allclose(cp.asnumpy(b.value), cp.asnumpy(a.value), rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("name, kw", [CONFIGS[1], CONFIGS[4]])
def test_training_step_replays_in_a_cuda_graph(name, kw, fused, rng):
    # The whole training step (forward, loss with check=False, backward, step()) through
    # GraphedStep, against the same steps run eagerly: a host sync or a cuBLAS call outside
    # gpucnn.gemm would make the capture raise; a rebound parameter, buffer or lr would make
    # the replays drift from the eager run. A partial last batch gives a second graph.
    # SGD only: eager products go through CuPy's cuBLAS handle, captured ones through
    # gpucnn.gemm's, so float32 results may differ in the last bits, which Adam's
    # normalised step can blow up on near-zero gradients (the Adam kernels' capture is
    # tested above).
    import cupy as cp

    from gpucnn.graph import GraphedStep
    from gpucnn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
    from gpucnn.sequential import Sequential
    from gpucnn.train import TrainStep

    def net():
        layers = [Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2), Flatten(), Linear(64, 10)]
        for layer in layers:
            for store in (layer.params, layer.buffers):
                for k in list(store):
                    store[k] = cp.asarray(store[k])
        return Sequential(layers)

    eager, graphed = net(), net()
    graphed.load_state_dict(eager.state_dict())
    opt_e = make_optimizer(name, eager.parameters(), fused=fused, **kw)
    opt_g = make_optimizer(name, graphed.parameters(), fused=fused, **kw)
    step_e, step_g = TrainStep(eager, opt_e), GraphedStep(TrainStep(graphed, opt_g))
    cp.cuda.Device().synchronize()  # setup ran on the legacy stream; GraphedStep has its own
    sizes = [8] * 5 + [5]
    batches = [(rng.standard_normal((b, 1, 8, 8)).astype(numpy.float32), rng.integers(0, 10, size=b)) for b in sizes * 3]
    for i, (x, y) in enumerate(batches):
        lr = kw["lr"] * (1.0 - 0.5 * i / len(batches))
        opt_e.lr = lr
        loss_e, right_e = step_e(cp.asarray(x), cp.asarray(y))
        with step_g.stream:  # everything the graphs touch stays on their stream
            opt_g.lr = lr
            loss_g, right_g = step_g(cp.asarray(x), cp.asarray(y))
            loss_g, right_g = float(loss_g), int(right_g)  # graph outputs are overwritten by the next replay
        assert_allclose(loss_g, float(loss_e), rtol=1e-4)
        assert abs(right_g - int(right_e)) <= 1  # a near-tie of two logits may break either way
    assert len(step_g._graphs) == 2  # both batch shapes were captured and replayed
    with step_g.stream:
        state_g, optim_g = graphed.state_dict(), opt_g.state_dict()
    state_e, optim_e = eager.state_dict(), opt_e.state_dict()
    assert int(state_g["1.num_batches_tracked"]) == len(batches) and optim_g["step"] == len(batches)
    for k in state_e:
        assert_allclose(state_g[k], state_e[k], rtol=1e-4, atol=1e-5, err_msg=k)
    for k, bufs in optim_e["state"].items():
        for n, buf in bufs.items():
            assert_allclose(optim_g["state"][k][n], buf, rtol=1e-4, atol=1e-5, err_msg=f"{k} {n}")
