// The exponential moving average of the weights (see gpucnn/ema.py), one launch per tensor.
// Compiled once per dtype with -Dscalar_t=float|double; the default lets plain nvcc check it.
#ifndef scalar_t
#define scalar_t float
#endif

#include "grid_stride.cuh"

// shadow <- decay * shadow + (1 - decay) * p
extern "C" __global__ void ema_update(
    const scalar_t* __restrict__ p, double decay, scalar_t* __restrict__ shadow, long long n)
{
    const scalar_t keep = (scalar_t)decay, take = (scalar_t)(1.0 - decay);
    FOR_EACH_ELEMENT(i, n) shadow[i] = keep * shadow[i] + take * p[i];
}
