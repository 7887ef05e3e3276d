// Shared by the kernels that split a flat index into coordinates (im2col.cu, maxpool.cu).
// gpucnn/kernels.py inlines this file into the source it hands NVRTC; nvcc finds it with -I.

// Index width. Every thread splits its flat index into coordinates with a few divisions by
// runtime values. GPUs have no integer divider: a 32-bit unsigned division is a short
// float-reciprocal sequence, a 64-bit one a much longer emulation (nvcc adds a run-time
// "both fit in 32 bits?" test and branch to each). So the per-element arithmetic runs in
// `unsigned` whenever every index of the launch fits, and in `unsigned long long` only for
// arrays past 2^32 - 1 elements. Unsigned because all of these values are >= 0, and signed
// division costs extra instructions for the sign handling.
//
// True when a grid-stride loop over `total` elements and every offset into an array of at
// most `largest` elements fit in 32 bits. The loop counter reaches total - 1 + step before
// the loop test stops it, hence total + step. Depends only on kernel arguments and the
// launch shape, so every thread of the grid takes the same branch.
__device__ inline bool index32_ok(long long total, long long largest)
{
#ifdef GPUCNN_INDEX64  // tests only: run the 64-bit paths on small arrays (tests/host_cupy.py)
    return false;
#endif
    const long long limit = 0xffffffffLL;
    const long long step = (long long)blockDim.x * gridDim.x;
    return total + step <= limit && largest <= limit;
}
