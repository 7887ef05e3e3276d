// 2-D max pooling over NCHW arrays, no padding (see gpucnn/layers/maxpool.py).
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

// Forward: one thread per output element, in a grid-stride loop with 64-bit indices so any
// array size works with any grid. Writes the window's max and the flat index (h*W + w
// inside its (H, W) plane) of its FIRST maximum in row-major order, as PyTorch does:
// the comparison is strict, so a later equal value never replaces an earlier one.
// The running max starts from the window's first element, not from a sentinel value.
extern "C" __global__ void maxpool2d_forward(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    long long total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += step) {
        const int wo = (int)(o % Wo);
        const int ho = (int)((o / Wo) % Ho);
        const long long plane = o / ((long long)Ho * Wo);  // n * C + c
        const scalar_t* xp = x + plane * H * W;
        const int h0 = ho * sh, w0 = wo * sw;
        int best_at = h0 * W + w0;
        scalar_t best = xp[best_at];
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const int at = (h0 + i) * W + (w0 + j);
                const scalar_t v = xp[at];
                if (v > best || v != v) {  // v != v: a NaN wins and stays, as in PyTorch
                    best = v;
                    best_at = at;
                }
            }
        }
        y[o] = best;
        argmax[o] = best_at;
    }
}

// Backward as a gather rather than a scatter: one thread per INPUT element visits the few
// windows that contain it and sums dy over those whose argmax is this element. Each dx is
// written by exactly one thread, so no atomics are needed, overlapping windows (kh > sh)
// accumulate correctly, the sum order is fixed (deterministic), and elements in no window
// get 0 without a separate memset.
extern "C" __global__ void maxpool2d_backward(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    long long total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw)
{
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < total; p += step) {
        const int w = (int)(p % W);
        const int h = (int)((p / W) % H);
        const long long plane = p / ((long long)H * W);
        const int me = h * W + w;
        // Window ho covers rows ho*sh .. ho*sh + kh - 1; it holds h iff
        // ceil((h - kh + 1) / sh) <= ho <= floor(h / sh), clipped to [0, Ho - 1].
        const int ho_lo = h < kh ? 0 : (h - kh) / sh + 1;
        const int wo_lo = w < kw ? 0 : (w - kw) / sw + 1;
        const int ho_hi = h / sh < Ho - 1 ? h / sh : Ho - 1;
        const int wo_hi = w / sw < Wo - 1 ? w / sw : Wo - 1;
        const long long base = plane * Ho * Wo;
        scalar_t sum = 0;
        for (int ho = ho_lo; ho <= ho_hi; ++ho) {
            for (int wo = wo_lo; wo <= wo_hi; ++wo) {
                const long long o = base + (long long)ho * Wo + wo;
                if (argmax[o] == me) sum += dy[o];
            }
        }
        dx[p] = sum;
    }
}
