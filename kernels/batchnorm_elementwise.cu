// The elementwise parts of BatchNorm2d over NCHW arrays (see gpucnn/layers/batchnorm.py);
// its per-channel sums are in batchnorm.cu. One thread per element, in a grid-stride loop
// so any array size works with any grid. Recomputing xhat from x in the dx kernel costs
// less memory traffic than storing it from the forward pass.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

#include "index32.cuh"  // index32_ok: 32-bit index arithmetic whenever it fits

// Runs body(i, c) for every flat index i this thread owns, c = (i / hw) % channels its
// channel: two divisions per element, so in 32 bits whenever they fit (see index32.cuh).
template <typename index_t, typename F>
__device__ void channel_loop(index_t total, index_t hw, index_t channels, F body)
{
    const index_t step = (index_t)blockDim.x * (index_t)gridDim.x;
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step)
        body(i, (i / hw) % channels);
}

template <typename F>
__device__ void for_each_element(long long total, long long hw, long long channels, F body)
{
    if (index32_ok(total, total))
        channel_loop<unsigned>((unsigned)total, (unsigned)hw, (unsigned)channels, body);
    else
        channel_loop<unsigned long long>(total, hw, channels, body);
}

// y = (x - mean[c]) * invstd[c] * weight[c] + bias[c]
extern "C" __global__ void bn_normalize(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd,
    const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
    long long total, long long hw, long long channels)
{
    for_each_element(total, hw, channels, [=](auto i, auto c) {
        y[i] = (x[i] - mean[c]) * invstd[c] * weight[c] + bias[c];
    });
}

// Training: dx = weight[c] * invstd[c] * (dy - (sum_dy[c] + xhat * sum_dy_xhat[c]) * inv_m),
// xhat = (x - mean[c]) * invstd[c], inv_m = 1 / M (M: the values per channel).
extern "C" __global__ void bn_dx_train(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, const scalar_t* __restrict__ mean,
    const scalar_t* __restrict__ invstd, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ sum_dy, const scalar_t* __restrict__ sum_dy_xhat, scalar_t inv_m,
    scalar_t* __restrict__ dx, long long total, long long hw, long long channels)
{
    for_each_element(total, hw, channels, [=](auto i, auto c) {
        const scalar_t xhat = (x[i] - mean[c]) * invstd[c];
        dx[i] = weight[c] * invstd[c] * (dy[i] - (sum_dy[c] + xhat * sum_dy_xhat[c]) * inv_m);
    });
}

// Eval (constant statistics): dx = dy * weight[c] * invstd[c]
extern "C" __global__ void bn_dx_eval(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ invstd, const scalar_t* __restrict__ weight,
    scalar_t* __restrict__ dx, long long total, long long hw, long long channels)
{
    for_each_element(total, hw, channels, [=](auto i, auto c) {
        dx[i] = dy[i] * weight[c] * invstd[c];
    });
}
