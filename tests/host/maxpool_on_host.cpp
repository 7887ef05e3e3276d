// kernels/maxpool.cu run as plain C++ on the CPU (tests/test_kernels_on_host.py): the CUDA
// keywords become nothing and the grid is a loop over (block, thread), each one running the
// kernel's grid-stride loop, so the index arithmetic and the NaN and tie rules are the
// kernel's own. A small grid (3 blocks of 4) makes every thread stride several times.
// argv: N C H W kh kw sh sw; stdin: x then dy (scalar_t); stdout: y, argmax (int32), dx.
#include <cstdio>
#include <cstdlib>
#include <vector>
struct Dim3 { unsigned x; };
static Dim3 blockIdx{0}, threadIdx{0}, blockDim{4}, gridDim{3};
#define __global__
#define __device__
#include "maxpool.cu"
int main(int argc, char** argv) {
    int v[8]; for (int i = 0; i < 8; ++i) v[i] = atoi(argv[i + 1]);
    int n = v[0], c = v[1], H = v[2], W = v[3], kh = v[4], kw = v[5], sh = v[6], sw = v[7];
    int Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1;
    long long nx = (long long)n * c * H * W, ny = (long long)n * c * Ho * Wo;
    std::vector<scalar_t> x(nx), y(ny), dy(ny), dx(nx); std::vector<int> am(ny);
    if (fread(x.data(), sizeof(scalar_t), nx, stdin) != (size_t)nx) return 2;
    if (fread(dy.data(), sizeof(scalar_t), ny, stdin) != (size_t)ny) return 2;
    for (unsigned b = 0; b < gridDim.x; ++b) for (unsigned t = 0; t < blockDim.x; ++t) {
        blockIdx.x = b; threadIdx.x = t;
        maxpool2d_forward(x.data(), y.data(), am.data(), ny, H, W, Ho, Wo, kh, kw, sh, sw);
    }
    for (unsigned b = 0; b < gridDim.x; ++b) for (unsigned t = 0; t < blockDim.x; ++t) {
        blockIdx.x = b; threadIdx.x = t;
        maxpool2d_backward(dy.data(), am.data(), dx.data(), nx, H, W, Ho, Wo, kh, kw, sh, sw);
    }
    fwrite(y.data(), sizeof(scalar_t), ny, stdout);
    fwrite(am.data(), sizeof(int), ny, stdout);
    fwrite(dx.data(), sizeof(scalar_t), nx, stdout);
    return 0;
}
