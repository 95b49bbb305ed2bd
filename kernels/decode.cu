// The filters of a compressed archive undone on the device, after nvCOMP has decompressed its frames, and
// the CRC-32C of every decoded array (scdl_gpu/archive/_codecs.py writes them; numcodecs' Shuffle and Delta).
//
// Work comes as tables built on the host (scdl_gpu/backend/_decode_tables.py), one entry per frame or block;
// outputs are addressed by absolute device pointers (unsigned long long), so one launch serves every chunk of
// a batch although each chunk's arrays are separate allocations.
//
// scdl_unshuffle<T>: frame f holds n_f = item_ptr[f + 1] - item_ptr[f] items of sizeof(T) bytes, shuffled
//   (byte j of item i at src[frame_src[f] + j * n_f + i]); item i is rebuilt little-endian into
//   ((T*)frame_dst[f])[i]. T = unsigned char is a plain copy (no shuffle filter: pass the bytes as items).
//   One thread per item; item_ptr is int64, n_frames + 1, non-decreasing, item_ptr[0] == 0.
// scdl_delta_sums / scdl_delta_scan / scdl_delta_apply<T>: numcodecs' Delta decode, a running sum that wraps
//   in T (unsigned), restarted at every frame (frames are encoded independently). Each frame is cut into
//   segments of `seg` items (seg_ptr: the frames' first segments, int64, n_frames + 1): sums adds each
//   segment (one thread per segment), scan turns a frame's segment sums into exclusive prefixes (one thread
//   per frame), apply runs each segment's sum from its prefix (one thread per segment). Three launches of
//   independent threads instead of a block-wide scan, so the CPU shim runs them exactly.
// scdl_crc32c_blocks: the CRC-32C register after block b (block_len[b] bytes at block_ptr[b]) from the start
//   value block_init[b], with no final xor; `table` is the reflected 0x82F63B78 byte table. The host chains
//   the blocks of one array (scdl_gpu/backend/_crc32c.py): an array's first block starts from 0xFFFFFFFF and
//   every later block, exactly CRC_BLOCK bytes long, from 0.
//
// NumPy twins: scdl_gpu/backend/_decode_reference.py. Compiled like the other kernel files (NVRTC without std
// headers, nvcc, g++ through tests/kernels/cuda_cpu_shim.h); built-in types only.

// Frame of index i: the last f with ptr[f] <= i (frames without work are skipped). Requires 0 <= i < ptr[n].
__device__ __forceinline__ long long scdl_decode_frame(const long long* __restrict__ ptr, long long n, long long i)
{
    long long first = 0, count = n + 1;  // upper_bound over ptr[0 .. n]
    while (count > 0) {
        const long long half = count / 2;
        if (ptr[first + half] <= i) {
            first += half + 1;
            count -= half + 1;
        } else {
            count = half;
        }
    }
    return first - 1;
}

// Segment s (0 <= s < seg_ptr[n_frames]): its frame, returned, and its items [*a, *b) in that frame.
__device__ __forceinline__ long long scdl_delta_segment(const long long* __restrict__ item_ptr,
                                                        const long long* __restrict__ seg_ptr, long long n_frames,
                                                        long long seg, long long s, long long* a, long long* b)
{
    const long long f = scdl_decode_frame(seg_ptr, n_frames, s);
    const long long n = item_ptr[f + 1] - item_ptr[f];
    *a = (s - seg_ptr[f]) * seg;
    *b = *a + seg < n ? *a + seg : n;
    return f;
}

template <typename T>
__global__ void scdl_unshuffle(const unsigned char* __restrict__ src, const long long* __restrict__ frame_src,
                               const unsigned long long* __restrict__ frame_dst, const long long* __restrict__ item_ptr,
                               long long n_frames)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= item_ptr[n_frames]) return;
    const long long f = scdl_decode_frame(item_ptr, n_frames, i);
    const long long n = item_ptr[f + 1] - item_ptr[f];
    const long long t = i - item_ptr[f];
    const unsigned char* s = src + frame_src[f] + t;
    T x = 0;
    for (int j = 0; j < (int)sizeof(T); ++j) {  // threads of a warp read consecutive bytes of each plane
        x |= (T)((T)s[(long long)j * n] << (8 * j));
    }
    ((T*)frame_dst[f])[t] = x;
}

template <typename T>
__global__ void scdl_delta_sums(const unsigned long long* __restrict__ frame_ptr, const long long* __restrict__ item_ptr,
                                const long long* __restrict__ seg_ptr, long long n_frames, long long seg,
                                T* __restrict__ seg_sums)
{
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= seg_ptr[n_frames]) return;
    long long a, b;
    const T* x = (const T*)frame_ptr[scdl_delta_segment(item_ptr, seg_ptr, n_frames, seg, s, &a, &b)];
    T sum = 0;
    for (long long k = a; k < b; ++k) {
        sum = (T)(sum + x[k]);
    }
    seg_sums[s] = sum;
}

template <typename T>
__global__ void scdl_delta_scan(const long long* __restrict__ seg_ptr, long long n_frames, T* __restrict__ seg_sums)
{
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= n_frames) return;
    T run = 0;
    for (long long s = seg_ptr[f]; s < seg_ptr[f + 1]; ++s) {
        const T own = seg_sums[s];
        seg_sums[s] = run;
        run = (T)(run + own);
    }
}

template <typename T>
__global__ void scdl_delta_apply(const unsigned long long* __restrict__ frame_ptr, const long long* __restrict__ item_ptr,
                                 const long long* __restrict__ seg_ptr, long long n_frames, long long seg,
                                 const T* __restrict__ seg_sums)
{
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= seg_ptr[n_frames]) return;
    long long a, b;
    T* x = (T*)frame_ptr[scdl_delta_segment(item_ptr, seg_ptr, n_frames, seg, s, &a, &b)];
    T run = seg_sums[s];
    for (long long k = a; k < b; ++k) {
        run = (T)(run + x[k]);
        x[k] = run;
    }
}

__global__ void scdl_crc32c_blocks(const unsigned long long* __restrict__ block_ptr, const long long* __restrict__ block_len,
                                   const unsigned int* __restrict__ block_init, const unsigned int* __restrict__ table,
                                   long long n_blocks, unsigned int* __restrict__ out)
{
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const unsigned char* p = (const unsigned char*)block_ptr[b];
    unsigned int c = block_init[b];
    for (long long k = 0; k < block_len[b]; ++k) {
        c = table[(c ^ p[k]) & 0xFFu] ^ (c >> 8);
    }
    out[b] = c;
}

// Every instantiation, for nvcc (compile test) and g++ (CPU shim); CuPy instantiates through
// name_expressions instead.
#ifdef SCDL_INSTANTIATE_ALL
#define SCDL_DECODE(T)                                                                                        \
    template __global__ void scdl_unshuffle<T>(const unsigned char*, const long long*, const unsigned long long*, \
                                               const long long*, long long);                                 \
    template __global__ void scdl_delta_sums<T>(const unsigned long long*, const long long*, const long long*,   \
                                                long long, long long, T*);                                   \
    template __global__ void scdl_delta_scan<T>(const long long*, long long, T*);                             \
    template __global__ void scdl_delta_apply<T>(const unsigned long long*, const long long*, const long long*,  \
                                                 long long, long long, const T*);
SCDL_DECODE(unsigned char)
SCDL_DECODE(unsigned short)
SCDL_DECODE(unsigned int)
SCDL_DECODE(unsigned long long)
#endif
