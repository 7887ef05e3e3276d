// kernels/rrc.cu run as plain C++ on the CPU (tests/test_augment_rrc.py): the CUDA keywords
// become nothing and the grid is a loop over (block, thread), each running the kernel's
// grid-stride loop (3 blocks of 4 threads, so every thread strides several times).
// argv: B C H W; stdin: x (B*C*H*W scalar_t) then params (B*5 int32); stdout: y (scalar_t).
#include <cstdio>
#include <cstdlib>
#include <vector>
struct Dim3 { unsigned x; };
static Dim3 blockIdx{0}, threadIdx{0}, blockDim{4}, gridDim{3};
#define __global__
#define __device__
#include "rrc.cu"
int main(int argc, char** argv) {
    if (argc != 5) return 1;
    int B = atoi(argv[1]), C = atoi(argv[2]), H = atoi(argv[3]), W = atoi(argv[4]);
    long long n = (long long)B * C * H * W;
    std::vector<scalar_t> x(n), y(n);
    std::vector<int> params(5 * B);
    if (fread(x.data(), sizeof(scalar_t), n, stdin) != (size_t)n) return 2;
    if (fread(params.data(), sizeof(int), 5 * B, stdin) != (size_t)(5 * B)) return 2;
    for (unsigned b = 0; b < gridDim.x; ++b) for (unsigned t = 0; t < blockDim.x; ++t) {
        blockIdx.x = b; threadIdx.x = t;
        random_resized_crop(x.data(), y.data(), params.data(), n, C, H, W);
    }
    fwrite(y.data(), sizeof(scalar_t), n, stdout);
    return 0;
}
