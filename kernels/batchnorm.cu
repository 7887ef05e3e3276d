// Per-channel reductions of BatchNorm2d over NCHW arrays (see gpucnn/layers/batchnorm.py);
// the elementwise parts (normalise, dx) are in batchnorm_elementwise.cu.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

// Every kernel here runs BN_THREADS threads (a power of two) per block.
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
// The loop counter k reaches at most M - 1 + S*BN_THREADS <= N*C*HW - 1 + S*BN_THREADS.
// Depends only on kernel arguments, so every thread takes the same branch.
__device__ inline bool index32_ok(long long N, long long C, long long HW, long long S)
{
#ifdef GPUCNN_INDEX64  // tests only: run the 64-bit paths on small arrays (tests/host_cupy.py)
    return false;
#endif
    return N * C * HW + S * BN_THREADS <= 0xffffffffLL;
}

// The reductions run in two steps, so that a channel's M values are read by many blocks
// at once (one block per channel would leave most of a large GPU idle when C is small):
//   partial:  grid (S, C); block (s, c) adds up every S-th run of BN_THREADS values of
//             channel c and writes its sum to partial[c*S + s] (double);
//   finish:   one block per channel adds up the S partial sums.
// S comes from gridDim.x; gpucnn/layers/batchnorm.py picks it to fill the device.

// What a partial kernel adds up for each value v of channel c.
struct Value {
    __device__ acc_t operator()(acc_t v, acc_t) const { return v; }
};
struct SquaredDeviation {  // from the finished mean: no E[x^2] - E[x]^2 cancellation
    __device__ acc_t operator()(acc_t v, acc_t mu) const { const acc_t d = v - mu; return d * d; }
};

template <typename index_t, typename F>
__device__ void channel_partial(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ mu, acc_t* __restrict__ partial,
    index_t N, index_t C, index_t HW, F f, acc_t* buf)
{
    const index_t s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    const index_t M = N * HW;
    const acc_t m = mu[c];
    acc_t v = 0;
    for (index_t k = s * BN_THREADS + threadIdx.x; k < M; k += S * BN_THREADS)
        v += f((acc_t)x[channel_offset(k, c, C, HW)], m);
    v = block_sum(v, buf);
    if (threadIdx.x == 0) partial[c * S + s] = v;
}

// Picks the index width for channel_partial (see index32_ok).
template <typename F>
__device__ void channel_partial_any_size(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ mu, acc_t* __restrict__ partial,
    long long N, long long C, long long HW, F f)
{
    __shared__ acc_t buf[BN_THREADS];
    if (index32_ok(N, C, HW, gridDim.x))
        channel_partial<unsigned>(x, mu, partial, (unsigned)N, (unsigned)C, (unsigned)HW, f, buf);
    else
        channel_partial<unsigned long long>(x, mu, partial, N, C, HW, f, buf);
}

// Partial sums of x over each channel (mu is read but unused: pass any C doubles).
extern "C" __global__ void bn_partial_sum(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ mu, acc_t* __restrict__ partial,
    long long N, long long C, long long HW)
{
    channel_partial_any_size(x, mu, partial, N, C, HW, Value());
}

// Partial sums of (x - mu[c])^2 over each channel.
extern "C" __global__ void bn_partial_sqdev(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ mu, acc_t* __restrict__ partial,
    long long N, long long C, long long HW)
{
    channel_partial_any_size(x, mu, partial, N, C, HW, SquaredDeviation());
}

// Block c: total = scale * sum of partial[c*S .. c*S + S-1]; written in double to
// out_acc[c] (the next partial kernel's mu) and as scalar_t to out[c].
extern "C" __global__ void bn_finish(
    const acc_t* __restrict__ partial, long long S, double scale,
    acc_t* __restrict__ out_acc, scalar_t* __restrict__ out)
{
    __shared__ acc_t buf[BN_THREADS];
    const long long c = blockIdx.x;
    acc_t v = 0;
    for (long long j = threadIdx.x; j < S; j += BN_THREADS) v += partial[c * S + j];
    v = block_sum(v, buf) * (acc_t)scale;
    if (threadIdx.x == 0) {
        out_acc[c] = v;
        out[c] = (scalar_t)v;
    }
}

// Two sums per channel at once, partial (grid (S, C) as above): block (s, c) adds up
// (a, b) = f(offset) over its share of channel c's values and writes them to
// partial_a[c*S + s] and partial_b[c*S + s] (double). One pass over the data.
struct TwoSums { acc_t a, b; };

template <typename index_t, typename F>
__device__ void channel_partial2(
    acc_t* __restrict__ partial_a, acc_t* __restrict__ partial_b, index_t N, index_t C, index_t HW,
    F f, acc_t* buf)
{
    const index_t s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    const index_t M = N * HW;
    acc_t a = 0, b = 0;
    for (index_t k = s * BN_THREADS + threadIdx.x; k < M; k += S * BN_THREADS) {
        const TwoSums v = f(channel_offset(k, c, C, HW));
        a += v.a;
        b += v.b;
    }
    a = block_sum(a, buf);
    b = block_sum(b, buf);  // block_sum ends with a barrier, so buf can be reused here
    if (threadIdx.x == 0) {
        partial_a[c * S + s] = a;
        partial_b[c * S + s] = b;
    }
}

// Picks the index width for channel_partial2 (see index32_ok).
template <typename F>
__device__ void channel_partial2_any_size(
    acc_t* __restrict__ partial_a, acc_t* __restrict__ partial_b, long long N, long long C, long long HW, F f)
{
    __shared__ acc_t buf[BN_THREADS];
    if (index32_ok(N, C, HW, gridDim.x))
        channel_partial2<unsigned>(partial_a, partial_b, (unsigned)N, (unsigned)C, (unsigned)HW, f, buf);
    else
        channel_partial2<unsigned long long>(partial_a, partial_b, N, C, HW, f, buf);
}

// The data-parallel (--sync-bn) forward's sums, partial: sum(x) and sum(x^2), which add up
// over ranks. A float's square is exact in double, so only the double additions round.
extern "C" __global__ void bn_partial_sum_sumsq(
    const scalar_t* __restrict__ x, acc_t* __restrict__ partial_sum, acc_t* __restrict__ partial_sumsq,
    long long N, long long C, long long HW)
{
    channel_partial2_any_size(partial_sum, partial_sumsq, N, C, HW, [=](auto at) {
        const acc_t v = (acc_t)x[at];
        return TwoSums{v, v * v};
    });
}

// Backward's two sums per channel, partial: sum(dy) and sum(dy * (x - mean)). Used in both
// modes: training passes the batch mean, eval the running one.
extern "C" __global__ void bn_backward_partial(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ mean,
    acc_t* __restrict__ partial_dy, acc_t* __restrict__ partial_dy_xmu,
    long long N, long long C, long long HW)
{
    const acc_t mu = (acc_t)mean[blockIdx.y];
    channel_partial2_any_size(partial_dy, partial_dy_xmu, N, C, HW, [=](auto at) {
        const acc_t g = (acc_t)dy[at];
        return TwoSums{g, g * ((acc_t)x[at] - mu)};
    });
}

// Block c: sum_dy[c] (= dbeta) and sum_dy_xhat[c] = invstd[c] * sum(dy * (x - mean)) (= dgamma).
extern "C" __global__ void bn_backward_finish(
    const acc_t* __restrict__ partial_dy, const acc_t* __restrict__ partial_dy_xmu, long long S,
    const scalar_t* __restrict__ invstd, scalar_t* __restrict__ sum_dy, scalar_t* __restrict__ sum_dy_xhat)
{
    __shared__ acc_t buf[BN_THREADS];
    const long long c = blockIdx.x;
    acc_t g_sum = 0, gx_sum = 0;
    for (long long j = threadIdx.x; j < S; j += BN_THREADS) {
        g_sum += partial_dy[c * S + j];
        gx_sum += partial_dy_xmu[c * S + j];
    }
    g_sum = block_sum(g_sum, buf);
    gx_sum = block_sum(gx_sum, buf);
    if (threadIdx.x == 0) {
        sum_dy[c] = (scalar_t)g_sum;
        sum_dy_xhat[c] = (scalar_t)(gx_sum * (acc_t)invstd[c]);
    }
}
