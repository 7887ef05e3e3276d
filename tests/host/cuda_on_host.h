// What a kernels/*.cu needs to compile as plain C++ and run on the CPU (tests/host_cupy.py
// force-includes this before the loader's source text). The CUDA keywords become nothing
// (__shared__: a static, one buffer for the block being run), and a launch runs every block
// of the grid in turn; inside a block, every thread runs the kernel to the end one after
// another, or, where the source uses __syncthreads (HOST_THREADS_PER_BLOCK defined), each
// thread of the block is a real thread and __syncthreads a barrier across them.
// The index arithmetic, the loops and the reductions are therefore the kernel's own.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <string>
#include <thread>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

#ifdef HOST_THREADS_PER_BLOCK
static pthread_barrier_t host_barrier;
static inline void __syncthreads() { pthread_barrier_wait(&host_barrier); }
#endif

// One code per parameter type, for the check against what the caller passes
// (tests/host_cupy.py builds the same codes from the NumPy arrays and scalars).
template <typename T> struct code_of;
template <> struct code_of<float> { static std::string get() { return "f"; } };
template <> struct code_of<double> { static std::string get() { return "d"; } };
template <> struct code_of<int> { static std::string get() { return "i"; } };
template <> struct code_of<unsigned> { static std::string get() { return "I"; } };
template <> struct code_of<long> { static std::string get() { return "q"; } };
template <> struct code_of<long long> { static std::string get() { return "q"; } };
template <> struct code_of<unsigned long long> { static std::string get() { return "Q"; } };
template <typename T> struct code_of<T*> { static std::string get() { return code_of<T>::get() + "*"; } };
template <typename T> struct code_of<const T*> { static std::string get() { return code_of<T>::get() + "*"; } };

template <typename... A>
std::string signature_of(void (*)(A...))
{
    std::string s;
    ((s += code_of<A>::get() + ","), ...);
    return s;
}

// args[i] points at the value of parameter i (an array's data pointer, or a scalar), as in
// cuLaunchKernel's kernelParams.
template <typename... A, size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>)
{
    kernel(*static_cast<A*>(args[I])...);
}

template <typename... A>
void host_launch(void (*kernel)(A...), void** args, unsigned gx, unsigned gy, unsigned bx)
{
    gridDim.x = gx; gridDim.y = gy; blockDim.x = bx;
    auto run = [&](unsigned b, unsigned by, unsigned t) {
        blockIdx.x = b; blockIdx.y = by; threadIdx.x = t;
        call_with(kernel, args, std::index_sequence_for<A...>{});
    };
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned b = 0; b < gx; ++b) {
#ifdef HOST_THREADS_PER_BLOCK
            pthread_barrier_init(&host_barrier, nullptr, bx);
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t) threads.emplace_back(run, b, by, t);
            for (auto& th : threads) th.join();
            pthread_barrier_destroy(&host_barrier);
#else
            for (unsigned t = 0; t < bx; ++t) run(b, by, t);
#endif
        }
    }
}

// For kernel k: host_signature_k() (its parameter codes) and host_launch_k(args, grid, block).
#define HOST_KERNEL(k)                                                                       \
    extern "C" const char* host_signature_##k() {                                           \
        static const std::string s = signature_of(k);                                      \
        return s.c_str();                                                                   \
    }                                                                                       \
    extern "C" void host_launch_##k(void** args, unsigned gx, unsigned gy, unsigned bx) {    \
        host_launch(k, args, gx, gy, bx);                                                   \
    }
