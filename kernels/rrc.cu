// Random-resized-crop with horizontal flip (see gpucnn/data/augment.py, which is its NumPy
// twin and says the rule): each image's box (top, left, h, w) resized back to H x W,
// bilinear with half-pixel centres clamped at the box's edges (PyTorch's align_corners=False).
// One thread per output element, in a grid-stride loop (grid_stride.cuh). params: (B, 5) int32 rows of
// top, left, h, w, flip. The arithmetic is float32 whatever scalar_t is, as on NumPy.
#ifndef scalar_t
#define scalar_t float
#endif
#include "grid_stride.cuh"

__device__ inline void rrc_axis(int out_index, int out_size, int start, int size, int* i0, int* i1, float* frac)
{
    const float scale = (float)size / (float)out_size;
    float src = ((float)out_index + 0.5f) * scale - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int lo = (int)src;  // floor: src >= 0
    if (lo > size - 1) lo = size - 1;
    *frac = src - (float)lo;
    *i0 = start + lo;
    *i1 = start + (lo + 1 < size ? lo + 1 : size - 1);
}

extern "C" __global__ void random_resized_crop(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const int* __restrict__ params,
    long long total, int C, int H, int W)
{
    FOR_EACH_ELEMENT(o, total) {
        const int w = (int)(o % W);
        const int h = (int)((o / W) % H);
        const long long plane = o / ((long long)W * H);  // n * C + c
        const int* p = params + (plane / C) * 5;
        int r0, r1, c0, c1;
        float fy, fx;
        rrc_axis(h, H, p[0], p[2], &r0, &r1, &fy);
        rrc_axis(p[4] ? W - 1 - w : w, W, p[1], p[3], &c0, &c1, &fx);  // a flip reads the columns backwards
        const scalar_t* xp = x + plane * H * W;
        const float top = (float)xp[r0 * W + c0] * (1.0f - fx) + (float)xp[r0 * W + c1] * fx;
        const float bottom = (float)xp[r1 * W + c0] * (1.0f - fx) + (float)xp[r1 * W + c1] * fx;
        y[o] = (scalar_t)(top * (1.0f - fy) + bottom * fy);
    }
}
