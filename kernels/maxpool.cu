// 2-D max pooling over NCHW arrays, no padding (see gpucnn/layers/maxpool.py).
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

#include "index32.cuh"  // index32_ok: 32-bit index arithmetic whenever it fits

// Forward: one thread per output element, in a grid-stride loop so any array size works
// with any grid. Writes the window's max and the flat index (h*W + w inside its (H, W)
// plane) of the element that won, by PyTorch's rule (its CPU and CUDA kernels alike):
// - no NaN in the window: the FIRST maximum in row-major order; the comparison is strict,
//   so a later equal value never replaces an earlier one;
// - a NaN in the window: the max is NaN and the LAST NaN in row-major order wins, since
//   every NaN replaces the running best (NaN != NaN) and no number replaces a NaN
//   (v > NaN is false).
// The running max starts from the window's first element, not from a sentinel value.
// gpucnn/layers/maxpool.py follows the same rule on NumPy.
template <typename index_t>
__device__ void maxpool2d_forward_loop(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    index_t total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    const index_t step = (index_t)blockDim.x * (index_t)gridDim.x;
    for (index_t o = (index_t)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += step) {
        const index_t t = o / Wo;
        const int wo = (int)(o - t * Wo);
        const int ho = (int)(t % Ho);
        const index_t plane = t / Ho;  // n * C + c
        const scalar_t* xp = x + plane * H * W;
        const int h0 = ho * sh, w0 = wo * sw;
        int best_at = h0 * W + w0;
        scalar_t best = xp[best_at];
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const int at = (h0 + i) * W + (w0 + j);
                const scalar_t v = xp[at];
                if (v > best || v != v) {  // v != v: each NaN takes over, so the last one wins
                    best = v;
                    best_at = at;
                }
            }
        }
        y[o] = best;
        argmax[o] = best_at;
    }
}

extern "C" __global__ void maxpool2d_forward(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    long long total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    // y has `total` elements; x, as many (H, W) planes as y has (Ho, Wo) ones.
    const long long planes = total > 0 ? total / ((long long)Ho * Wo) : 0;  // no division by 0
    const long long x_size = planes * H * W;
    if (index32_ok(total, x_size))
        maxpool2d_forward_loop<unsigned>(x, y, argmax, (unsigned)total, H, W, Ho, Wo, kh, kw, sh, sw);
    else
        maxpool2d_forward_loop<unsigned long long>(x, y, argmax, (unsigned long long)total,
                                                   H, W, Ho, Wo, kh, kw, sh, sw);
}

// Backward as a gather rather than a scatter: one thread per INPUT element visits the few
// windows that contain it and sums dy over those whose argmax is this element. Each dx is
// written by exactly one thread, so no atomics are needed, overlapping windows (kh > sh)
// accumulate correctly, the sum order is fixed (deterministic), and elements in no window
// get 0 without a separate memset.
template <typename index_t>
__device__ void maxpool2d_backward_loop(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    index_t total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    const index_t step = (index_t)blockDim.x * (index_t)gridDim.x;
    for (index_t p = (index_t)blockIdx.x * blockDim.x + threadIdx.x; p < total; p += step) {
        const index_t t = p / W;
        const int w = (int)(p - t * W);
        const int h = (int)(t % H);
        const index_t plane = t / H;
        const int me = h * W + w;
        // Window ho covers rows ho*sh .. ho*sh + kh - 1; it holds h iff
        // ceil((h - kh + 1) / sh) <= ho <= floor(h / sh), clipped to [0, Ho - 1].
        const int ho_lo = h < kh ? 0 : (h - kh) / sh + 1;
        const int wo_lo = w < kw ? 0 : (w - kw) / sw + 1;
        const int ho_hi = h / sh < Ho - 1 ? h / sh : Ho - 1;
        const int wo_hi = w / sw < Wo - 1 ? w / sw : Wo - 1;
        const index_t base = plane * Ho * Wo;
        scalar_t sum = 0;
        for (int ho = ho_lo; ho <= ho_hi; ++ho) {
            for (int wo = wo_lo; wo <= wo_hi; ++wo) {
                const index_t o = base + (index_t)ho * Wo + wo;
                if (argmax[o] == me) sum += dy[o];
            }
        }
        dx[p] = sum;
    }
}

extern "C" __global__ void maxpool2d_backward(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    long long total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    // dx has `total` elements; dy and argmax, as many (Ho, Wo) planes as dx has (H, W) ones.
    const long long planes = total > 0 ? total / ((long long)H * W) : 0;  // no division by 0
    const long long dy_size = planes * Ho * Wo;
    if (index32_ok(total, dy_size))
        maxpool2d_backward_loop<unsigned>(dy, argmax, dx, (unsigned)total, H, W, Ho, Wo, kh, kw, sh, sw);
    else
        maxpool2d_backward_loop<unsigned long long>(dy, argmax, dx, (unsigned long long)total,
                                                    H, W, Ho, Wo, kh, kw, sh, sw);
}
