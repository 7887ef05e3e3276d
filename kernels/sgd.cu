// SGD's update, one launch per tensor, no temporaries (see gpucnn/optim/sgd.py for the
// formula and the NumPy reference it must follow). lr is read from the device (a 0-d array
// the optimiser updates in place), so a captured CUDA graph picks up a new learning rate.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

#include "grid_stride.cuh"

// p <- p - lr * (g + weight_decay * p)
extern "C" __global__ void sgd_step(
    const scalar_t* __restrict__ g, const double* __restrict__ lr, double weight_decay,
    scalar_t* __restrict__ p, long long n)
{
    const scalar_t step = (scalar_t)*lr, wd = (scalar_t)weight_decay;
    FOR_EACH_ELEMENT(i, n) p[i] -= step * (g[i] + wd * p[i]);
}

// d = g + weight_decay * p;  buf <- momentum * buf + d;
// p <- p - lr * (nesterov ? d + momentum * buf : buf)
extern "C" __global__ void sgd_momentum_step(
    const scalar_t* __restrict__ g, const double* __restrict__ lr, double momentum, double weight_decay,
    int nesterov, scalar_t* __restrict__ p, scalar_t* __restrict__ buf, long long n)
{
    const scalar_t step = (scalar_t)*lr, mom = (scalar_t)momentum, wd = (scalar_t)weight_decay;
    FOR_EACH_ELEMENT(i, n) {
        scalar_t d = g[i] + wd * p[i];
        const scalar_t b = mom * buf[i] + d;
        buf[i] = b;
        d = nesterov ? d + mom * b : b;
        p[i] -= step * d;
    }
}
