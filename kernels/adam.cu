// Adam's and AdamW's update, one launch per tensor, no temporaries (see gpucnn/optim/adam.py
// for the formula and the NumPy reference it must follow). lr and the step counter t are
// read from the device (0-d arrays the optimiser updates in place), so a captured CUDA graph
// replays with the current ones; the bias corrections are recomputed from t by every thread
// (two pow() per thread), which saves any scalar kernels or buffers.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

#include "grid_stride.cuh"

// d = g + l2 * p;  p <- p * (1 - lr * decoupled);  m <- m + (1 - beta1) * (d - m);
// v <- beta2 * v + (1 - beta2) * d^2;
// p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Adam passes (l2, decoupled) = (weight_decay, 0), AdamW (0, weight_decay).
extern "C" __global__ void adam_step(
    const scalar_t* __restrict__ g, const double* __restrict__ lr, const long long* __restrict__ step,
    double beta1, double beta2, double eps, double l2, double decoupled,
    scalar_t* __restrict__ p, scalar_t* __restrict__ m, scalar_t* __restrict__ v, long long n)
{
    const double t = (double)*step;
    const scalar_t step_size = (scalar_t)(*lr / (1.0 - pow(beta1, t)));
    const scalar_t bc2_sqrt = (scalar_t)sqrt(1.0 - pow(beta2, t));
    const scalar_t decay = (scalar_t)(1.0 - *lr * decoupled);
    const scalar_t b1 = (scalar_t)(1.0 - beta1), b2 = (scalar_t)beta2, one_minus_b2 = (scalar_t)(1.0 - beta2);
    const scalar_t wd = (scalar_t)l2, e = (scalar_t)eps;
    FOR_EACH_ELEMENT(i, n) {
        const scalar_t d = g[i] + wd * p[i];
        const scalar_t mi = m[i] + b1 * (d - m[i]);
        const scalar_t vi = b2 * v[i] + one_minus_b2 * d * d;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * (mi / (sqrt(vi) / bc2_sqrt + e));
    }
}
