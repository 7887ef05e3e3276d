// Per-channel reductions of BatchNorm2d over NCHW arrays (see gpucnn/layers/batchnorm.py);
// the elementwise parts (normalise, dx) are cupy.ElementwiseKernels in that file.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

// Launch with one block per channel and BN_THREADS threads (a power of two) per block.
#define BN_THREADS 256

// Sums over N*H*W elements are accumulated in double: in float, adding tens of thousands
// of values loses digits, and these reductions are bound by memory traffic, not arithmetic.
typedef double acc_t;

// Sum of one value per thread across the block (shared-memory tree). Every thread gets the
// result. The trailing barrier lets the caller reuse `buf` for another reduction at once.
__device__ acc_t block_sum(acc_t v, acc_t* buf)
{
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = BN_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    const acc_t total = buf[0];
    __syncthreads();
    return total;
}

// Element k of channel c, counting k over the M = N*HW values of that channel in memory
// order (consecutive threads read consecutive addresses inside an (H, W) plane).
template <typename index_t>
__device__ index_t channel_offset(index_t k, index_t c, index_t C, index_t HW)
{
    const index_t n = k / HW;
    return (n * C + c) * HW + (k - n * HW);
}

// Index width. channel_offset divides by HW once per element. GPUs have no integer divider:
// a 32-bit unsigned division is a short float-reciprocal sequence, a 64-bit one a much
// longer emulation (nvcc adds a run-time "both fit in 32 bits?" test and branch to each).
// So the loops below run in `unsigned` whenever every offset into x fits, and in
// `unsigned long long` only past 2^32 - 1 elements. Unsigned because all of these values
// are >= 0, and signed division costs extra instructions for the sign handling.
// The loop counter k reaches at most M - 1 + BN_THREADS <= N*C*HW - 1 + BN_THREADS.
// Depends only on kernel arguments, so every thread takes the same branch.
__device__ inline bool index32_ok(long long N, long long C, long long HW)
{
    return N * C * HW + BN_THREADS <= 0xffffffffLL;
}

// Training statistics of channel blockIdx.x: the mean and the BIASED variance (divided by
// M, the one used to normalise). Two passes over the data: the variance sums squared
// deviations from the finished mean, so there is no E[x^2] - E[x]^2 cancellation.
template <typename index_t>
__device__ void bn_stats_block(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ mean, scalar_t* __restrict__ var,
    index_t N, index_t C, index_t HW, acc_t* buf)
{
    const index_t c = blockIdx.x;
    const index_t M = N * HW;

    acc_t s = 0;
    for (index_t k = threadIdx.x; k < M; k += BN_THREADS) s += (acc_t)x[channel_offset(k, c, C, HW)];
    const acc_t mu = block_sum(s, buf) / (acc_t)M;

    acc_t q = 0;
    for (index_t k = threadIdx.x; k < M; k += BN_THREADS) {
        const acc_t d = (acc_t)x[channel_offset(k, c, C, HW)] - mu;
        q += d * d;
    }
    const acc_t v = block_sum(q, buf) / (acc_t)M;

    if (threadIdx.x == 0) {
        mean[c] = (scalar_t)mu;
        var[c] = (scalar_t)v;
    }
}

extern "C" __global__ void bn_stats(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ mean, scalar_t* __restrict__ var,
    long long N, long long C, long long HW)
{
    __shared__ acc_t buf[BN_THREADS];
    if (index32_ok(N, C, HW))
        bn_stats_block<unsigned>(x, mean, var, (unsigned)N, (unsigned)C, (unsigned)HW, buf);
    else
        bn_stats_block<unsigned long long>(x, mean, var, N, C, HW, buf);
}

// The two sums backward needs, per channel: sum(dy) (= dbeta) and sum(dy * xhat)
// (= dgamma) with xhat = (x - mean) * invstd. Used in both modes: training passes the
// batch mean/invstd, eval the running ones.
template <typename index_t>
__device__ void bn_backward_reduce_block(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd,
    scalar_t* __restrict__ sum_dy, scalar_t* __restrict__ sum_dy_xhat,
    index_t N, index_t C, index_t HW, acc_t* buf)
{
    const index_t c = blockIdx.x;
    const index_t M = N * HW;
    const acc_t mu = (acc_t)mean[c];

    acc_t s = 0, t = 0;
    for (index_t k = threadIdx.x; k < M; k += BN_THREADS) {
        const index_t at = channel_offset(k, c, C, HW);
        const acc_t g = (acc_t)dy[at];
        s += g;
        t += g * ((acc_t)x[at] - mu);
    }
    s = block_sum(s, buf);
    t = block_sum(t, buf);  // block_sum ends with a barrier, so buf can be reused here

    if (threadIdx.x == 0) {
        sum_dy[c] = (scalar_t)s;
        sum_dy_xhat[c] = (scalar_t)(t * (acc_t)invstd[c]);
    }
}

extern "C" __global__ void bn_backward_reduce(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd,
    scalar_t* __restrict__ sum_dy, scalar_t* __restrict__ sum_dy_xhat,
    long long N, long long C, long long HW)
{
    __shared__ acc_t buf[BN_THREADS];
    if (index32_ok(N, C, HW))
        bn_backward_reduce_block<unsigned>(dy, x, mean, invstd, sum_dy, sum_dy_xhat,
                                           (unsigned)N, (unsigned)C, (unsigned)HW, buf);
    else
        bn_backward_reduce_block<unsigned long long>(dy, x, mean, invstd, sum_dy, sum_dy_xhat,
                                                     N, C, HW, buf);
}
