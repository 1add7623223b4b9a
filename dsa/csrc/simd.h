// One vector vocabulary for the kernel's fast paths, so each is written once: AVX-512 (16 floats) or
// AVX2 + FMA (8 floats), whichever the build targets (kernels.py builds with -march=native, or forces one
// with DSA_KERNEL_ISA). Without either, SIMD_W is 0 and the callers take their scalar loops.
// Included by select_attend.cpp inside its anonymous namespace; not a standalone header.
//
// K/V buffers may hold bfloat16 (half the memory of a 256k-token cache): bf16 is the high half of a float32,
// so a value converts exactly by a 16-bit left shift. `vload` converts SIMD_W of them as it loads them,
// `load_row` a whole row into a float buffer; the arithmetic stays float32.
#pragma once

struct bf16 { uint16_t bits; };  // one bfloat16, as torch stores it

inline float to_float(bf16 x) {
    const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define SIMD_W 16
#define SIMD_ISA "avx512"
using vf = __m512;
using vmask = __mmask16;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float x) { return _mm512_set1_ps(x); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload(const bf16* p) {  // 16 bf16 -> 16 floats: widen to 32 bits, shift into the high half
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, vf x) { _mm512_storeu_ps(p, x); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
// lanes whose bit is set in the low 16 bits of `bits`
inline vmask lane_mask(uint32_t bits) { return static_cast<vmask>(bits & 0xFFFFu); }
inline vf vmask_max(vf acc, vmask m, vf x) { return _mm512_mask_max_ps(acc, m, acc, x); }
inline vf vmaskz(vmask m, vf x) { return _mm512_maskz_mov_ps(m, x); }

// lane i of the result = the sum of v[i]'s 16 lanes, by the same addition tree for every i (so a token's
// score does not depend on which lane it was computed in)
inline vf vsum_lanes(const vf* v) {
    __m512 w[8], x[4];
    for (int j = 0; j < 8; ++j)
        w[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
    for (int j = 0; j < 4; ++j) {
        const __m512d a = _mm512_castps_pd(w[2 * j]), b = _mm512_castps_pd(w[2 * j + 1]);
        x[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 y01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
    const __m512 y23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(y01, y23, 0x88), _mm512_shuffle_f32x4(y01, y23, 0xDD));
}

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SIMD_W 8
#define SIMD_ISA "avx2"
using vf = __m256;
using vmask = __m256;  // all-ones lanes are selected
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float x) { return _mm256_set1_ps(x); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload(const bf16* p) {  // 8 bf16 -> 8 floats: widen to 32 bits, shift into the high half
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, vf x) { _mm256_storeu_ps(p, x); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vmask lane_mask(uint32_t bits) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i b = _mm256_set1_epi32(static_cast<int>(bits & 0xFFu));
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, bit), bit));
}
inline vf vmask_max(vf acc, vmask m, vf x) { return _mm256_blendv_ps(acc, _mm256_max_ps(acc, x), m); }
inline vf vmaskz(vmask m, vf x) { return _mm256_and_ps(m, x); }

// lane i of the result = the sum of v[i]'s 8 lanes, by the same addition tree for every i
inline vf vsum_lanes(const vf* v) {
    const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));  // v0..3: 0123 | 4567
    const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));  // v4..7: 0123 | 4567
    return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

#else
#define SIMD_W 0
#define SIMD_ISA "scalar"
#endif

// row t of a [cap, n] K or V buffer as n floats: the row itself when it holds floats; bf16 converted into tmp
inline const float* load_row(const float* base, int64_t t, int n, float*) { return base + t * n; }
inline const float* load_row(const bf16* base, int64_t t, int n, float* tmp) {
    const bf16* p = base + t * n;
    int d = 0;
#if SIMD_W > 0
    for (; d + SIMD_W <= n; d += SIMD_W) vstore(tmp + d, vload(p + d));
#endif
    for (; d < n; ++d) tmp[d] = to_float(p[d]);
    return tmp;
}
