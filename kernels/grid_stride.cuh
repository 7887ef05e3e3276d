// Shared by the elementwise kernels (one thread per element, any grid): the loop every
// thread runs over the flat indices it owns. gpucnn/kernels.py inlines this file into the
// source it hands NVRTC; nvcc finds it with -I. No division in the loop, so 64-bit
// indices cost nothing here (unlike index32.cuh's case).
#define FOR_EACH_ELEMENT(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)
