// im2col / col2im over NCHW arrays with zero padding (see gpucnn/layers/im2col.py).
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
// No system #include: NVRTC compiles this without the system headers.
#ifndef scalar_t
#define scalar_t float
#endif

#include "index32.cuh"  // index32_ok: 32-bit index arithmetic whenever it fits

// cols[k][n][i][j] with k = (c*kh + p)*kw + q, PyTorch's weight order, so that
// W.reshape(C_out, K) @ cols.reshape(K, N*Ho*Wo) is the convolution.
// One thread per cols element, in a grid-stride loop so any array size works with any grid.
// Consecutive threads take consecutive j, so the writes coalesce and the reads of x
// (stride sw) stay close together. Padding reads as zero.
template <typename index_t>
__device__ void im2col_loop(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ cols, index_t total,
    int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw)
{
    const index_t step = (index_t)blockDim.x * (index_t)gridDim.x;
    for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const int j = (int)(e % Wo);
        index_t t = e / Wo;
        const int i = (int)(t % Ho);
        t /= Ho;
        const int n = (int)(t % N);
        const index_t k = t / N;  // (c*kh + p)*kw + q
        const int q = (int)(k % kw);
        const index_t cp = k / kw;  // c*kh + p
        const int p = (int)(cp % kh);
        const index_t c = cp / kh;
        const int h = i * sh - ph + p;
        const int w = j * sw - pw + q;
        scalar_t v = 0;
        if (h >= 0 && h < H && w >= 0 && w < W)
            v = x[(((index_t)n * C + c) * H + h) * W + w];
        cols[e] = v;
    }
}

extern "C" __global__ void im2col(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ cols, long long total,
    int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw)
{
    // cols has `total` elements; x, N*C*H*W (more than cols when the stride skips pixels).
    if (index32_ok(total, (long long)N * C * H * W))
        im2col_loop<unsigned>(x, cols, (unsigned)total, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
    else
        im2col_loop<unsigned long long>(x, cols, (unsigned long long)total,
                                        N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
}

// col2im as a GATHER: one thread per input pixel (n, c, h, w) sums the cols entries copied
// from it, i.e. every (p, q) with h + ph - p = i*sh and w + pw - q = j*sw for an output
// pixel (i, j) inside the output. Each dx element is written by exactly one thread: no
// atomics, no memset first, and a fixed summation order (deterministic results).
template <typename index_t>
__device__ void col2im_loop(
    const scalar_t* __restrict__ cols, scalar_t* __restrict__ dx, index_t total,
    int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw)
{
    const index_t plane = (index_t)Ho * Wo;  // one (k, n) block of cols
    const index_t step = (index_t)blockDim.x * (index_t)gridDim.x;
    for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const int w = (int)(e % W);
        index_t t = e / W;
        const int h = (int)(t % H);
        t /= H;
        const int c = (int)(t % C);
        const int n = (int)(t / C);
        scalar_t sum = 0;
        for (int p = 0; p < kh; ++p) {
            const int hs = h + ph - p;  // = i*sh for the output row i that used this pixel
            if (hs < 0 || hs % sh != 0 || hs / sh >= Ho) continue;
            const int i = hs / sh;
            for (int q = 0; q < kw; ++q) {
                const int ws = w + pw - q;
                if (ws < 0 || ws % sw != 0 || ws / sw >= Wo) continue;
                const index_t k = ((index_t)c * kh + p) * kw + q;
                sum += cols[(k * N + n) * plane + (index_t)i * Wo + ws / sw];
            }
        }
        dx[e] = sum;
    }
}

extern "C" __global__ void col2im(
    const scalar_t* __restrict__ cols, scalar_t* __restrict__ dx, long long total,
    int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw)
{
    // dx has `total` elements; cols, C*kh*kw * N*Ho*Wo.
    if (index32_ok(total, (long long)C * kh * kw * N * Ho * Wo))
        col2im_loop<unsigned>(cols, dx, (unsigned)total, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
    else
        col2im_loop<unsigned long long>(cols, dx, (unsigned long long)total,
                                        N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
}
