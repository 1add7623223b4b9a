// Fused two-stage selection + sparse attention for one batch row on the CPU, one query at a time.
//
// The PyTorch path spends most of a decode step in per-op overhead (~60 small tensor ops per layer) and
// most of a prefill chunk attending the union of 64 queries' selections; here each query scores its own
// candidates and attends exactly its own keys. Semantics are select.py's `select_chunk`, per query:
//   stage 1: free blocks = causal blocks that are neither sink blocks [0, ns) nor local blocks [fl, qb];
//            score with block-mean keys, keep the top n_blocks (ties at exactly 0 ordered by recency);
//   stage 2: candidates = non-forced causal tokens of sink, kept and local blocks; keep the top top_k;
//   attend:  forced tokens (t < sink, qp - t < local, t == qp) + the kept candidates, in position order.
// float32, contiguous rows. Built at first use by dsa/kernels.py (plain g++, no torch headers).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <functional>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct Args {
    const float* qi; const float* wi; const float* keys; const float* means; const int64_t* qpos;
    const float* query; const float* kbuf; const float* vbuf; float* out; int64_t* nread; double* phase_s;
    int64_t cap, nb;
    int HI, DI, H, HKV, D, bs, n_blocks, top_k, sink, local;
    float scaling;
};

// N > 0: a length known at compile time (fully unrolled, vectorised without a tail); N == 0: n at run time
template <int N>
inline float dot(const float* a, const float* b, int n) {
    float s = 0.f;
    for (int i = 0; i < (N > 0 ? N : n); ++i) s += a[i] * b[i];
    return s;
}

// sum_h w[h] * relu(q[h] . k), the lightning indexer's score, with select.py's tie-break for exact zeros
template <int DI>
inline float index_score(const float* q, const float* w, const float* k, int HI, int di, int64_t pos) {
    float s = 0.f;
    for (int h = 0; h < HI; ++h) s += w[h] * std::max(dot<DI>(q + h * di, k, di), 0.f);
    return s == 0.f ? static_cast<float>(pos) * 1e-30f : s;
}

#if defined(__AVX512F__)
// lane i of the result = the sum of v[i]'s 16 lanes, by the same addition tree for every i (so a token's
// score does not depend on which lane it was computed in)
inline __m512 sum16(const __m512* v) {
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

// index scores of 16 key rows at once: per head, one product vector per row, reduced together
template <int DI>
inline void index_score16(const float* q, const float* w, const float* const* rows, int HI, float* out) {
    __m512 acc = _mm512_setzero_ps();
    for (int h = 0; h < HI; ++h) {
        __m512 v[16];
        for (int i = 0; i < 16; ++i) {
            __m512 p = _mm512_mul_ps(_mm512_loadu_ps(rows[i]), _mm512_loadu_ps(q + h * DI));
            for (int d = 16; d < DI; d += 16)
                p = _mm512_fmadd_ps(_mm512_loadu_ps(rows[i] + d), _mm512_loadu_ps(q + h * DI + d), p);
            v[i] = p;
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(w[h]), _mm512_max_ps(sum16(v), _mm512_setzero_ps()), acc);
    }
    _mm512_storeu_ps(out, acc);
}
#endif

// out[i] = index score of key row row(i) at position pos(i), for i in [lo, hi). Where AVX-512 is there and
// d_I is a multiple of 16, 16 rows at a time (the last group padded by repeating a row): every row goes
// through the same arithmetic, so prefill and decode score a token identically.
template <int DI, class Row, class Pos>
void score_rows(const float* q, const float* w, int HI, int di, int64_t lo, int64_t hi, const Row& row,
                const Pos& pos, float* out) {
#if defined(__AVX512F__)
    if constexpr (DI > 0 && DI % 16 == 0) {
        const float* rows[16];
        float tmp[16];
        for (int64_t i = lo; i < hi; i += 16) {
            const int64_t m = std::min<int64_t>(16, hi - i);
            for (int j = 0; j < 16; ++j) rows[j] = row(i + std::min<int64_t>(j, m - 1));
            index_score16<DI>(q, w, rows, HI, tmp);
            for (int j = 0; j < m; ++j) out[i + j] = tmp[j] == 0.f ? static_cast<float>(pos(i + j)) * 1e-30f : tmp[j];
        }
        return;
    }
#endif
    for (int64_t i = lo; i < hi; ++i) out[i] = index_score<DI>(q, w, row(i), HI, di, pos(i));
}

// float -> uint32 with the same order (negative floats reversed), for radix selection
inline uint32_t order_key(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// keep[i] = 1 for the k largest scores (k < n); exact ties at the threshold are taken in position order.
// The threshold is found by radix selection on the scores' order keys, 11 bits at a time from the top: each
// pass counts one digit among the scores that still share the threshold's higher digits (several passes over
// n floats, a few times cheaper than nth_element on a copy).
void top_mask(const std::vector<float>& score, int k, std::vector<uint32_t>& tmp, std::vector<char>& keep) {
    const size_t n = score.size();
    tmp.resize(n);
    for (size_t i = 0; i < n; ++i) tmp[i] = order_key(score[i]);
    uint32_t prefix = 0, mask = 0;  // the threshold's digits found so far, and which bits they cover
    int need = k;                   // how many of the keys matching `prefix` are still to keep
    for (int lo : {21, 10, 0}) {  // digits: bits [21, 32), [10, 21), [0, 10)
        const int bits = lo == 0 ? 10 : 11;
        const uint32_t dmask = ((1u << bits) - 1) << lo;
        uint32_t count[2048] = {0};
        for (size_t i = 0; i < n; ++i)
            if ((tmp[i] & mask) == prefix) ++count[(tmp[i] & dmask) >> lo];
        int d = (1 << bits) - 1;
        for (; d > 0 && static_cast<int>(count[d]) < need; --d) need -= count[d];
        prefix |= static_cast<uint32_t>(d) << lo;
        mask |= dmask;
    }
    // prefix is now the k-th largest key; `need` of the keys equal to it are kept, in position order
    keep.assign(n, 0);
    for (size_t i = 0; i < n; ++i)
        if (tmp[i] > prefix || (tmp[i] == prefix && need-- > 0)) keep[i] = 1;
}

// fetch the row at t[i + ahead] while row t[i] is used: the rows are scattered, so the hardware prefetcher
// cannot guess them, and each is only a few cache lines
inline void prefetch_row(const float* base, const int64_t* t, int64_t i, int64_t T, int n) {
    constexpr int64_t ahead = 8;  // 4 to 32 measured the same: the misses in flight bound it, not the distance
    if (i + ahead < T) {
        const char* r = reinterpret_cast<const char*>(base + t[i + ahead] * n);
        for (int b = 0; b < n * 4; b += 64) __builtin_prefetch(r + b);
    }
}

// KV head g's G query heads over the attended positions t[0, T): one pass over the K rows, one over the V
// rows. Writes the unnormalised output exp(s - m) . V to out [G, n] and the max m / sum of exp(s - m) per
// head to mx / sum [G], so that parts of a query's keys attended by different threads can be merged.
template <int D>
void attend_group(const float* q, const float* k, const float* v, const int64_t* t, int64_t T, int G, int dn,
                  float scaling, float* p, float* out, float* mx, float* sum) {
    const int n = D > 0 ? D : dn;
    for (int64_t i = 0; i < T; ++i) {
        prefetch_row(k, t, i, T, n);
        const float* kr = k + t[i] * n;
        for (int j = 0; j < G; ++j) p[j * T + i] = dot<D>(q + j * n, kr, n) * scaling;
    }
    for (int j = 0; j < G; ++j) {
        float* pj = p + j * T;
        const float m = T ? *std::max_element(pj, pj + T) : 0.f;  // an empty part has sum 0: the merge skips it
        float s = 0.f;
        for (int64_t i = 0; i < T; ++i) { pj[i] = std::exp(pj[i] - m); s += pj[i]; }
        mx[j] = m;
        sum[j] = s;
    }
    std::fill(out, out + G * n, 0.f);
    for (int64_t i = 0; i < T; ++i) {
        prefetch_row(v, t, i, T, n);
        const float* vr = v + t[i] * n;
        for (int j = 0; j < G; ++j) {
            const float pi = p[j * T + i];
            float* oj = out + j * n;
            for (int d = 0; d < n; ++d) oj[d] += pi * vr[d];
        }
    }
}

// f(part, lo, hi) over [0, n) cut into `parts` ranges, the caller's thread taking part 0. A decode step has a
// single query: splitting its work over two cores doubles the cache misses in flight, which bound it.
template <class F>
void parallel_ranges(int64_t n, int parts, const F& f) {
    if (parts <= 1) { f(0, 0, n); return; }
#ifdef _OPENMP
#pragma omp parallel num_threads(parts)
    {
        const int i = omp_get_thread_num(), k = omp_get_num_threads();
        f(i, n * i / k, n * (i + 1) / k);
    }
#else
    std::vector<std::thread> pool;
    for (int i = 1; i < parts; ++i) pool.emplace_back(f, i, n * i / parts, n * (i + 1) / parts);
    f(0, 0, n / parts);
    for (auto& th : pool) th.join();
#endif
}

using Clock = std::chrono::steady_clock;

constexpr int TILE_Q = 8;  // prefill: queries attended together (their selections overlap; see attend_tile)

struct Scratch {  // per-thread buffers, reused across queries
    std::vector<float> bscore, cscore, part;  // part: per split, per head: [G * n out | m | sum]
    std::vector<uint32_t> tmp;
    std::vector<std::vector<float>> p;  // per split (decode) or per query of a tile (prefill): probabilities
    std::vector<int64_t> blocks, attend, cand, uni;
    std::vector<std::vector<int64_t>> lists;  // per query of a tile: attended positions
    std::vector<uint16_t> members;            // per position of `uni`: which queries of the tile attend it
    std::vector<float> acc;                   // per query of a tile: [G * n] output accumulators
    std::vector<char> forced, keep;
    double select_s = 0, attend_s = 0;
};

// Both stages for query c: s.attend = the positions it attends, in order. `parts` > 1 splits the scoring
// loops over that many threads (decode).
template <int DI>
void select_query(const Args& a, int64_t c, Scratch& s, int parts) {
    const auto t0 = Clock::now();
    const int64_t qp = a.qpos[c];
    const float* q = a.qi + c * a.HI * a.DI;
    const float* w = a.wi + c * a.HI;
    const int64_t bs = a.bs, qb = qp / bs;
    const int64_t ns = (a.sink + bs - 1) / bs;
    const int64_t local_lo = std::max<int64_t>(qp - std::max(a.local, 1) + 1, 0);  // own block even if local = 0
    const int64_t fl = local_lo / bs;

    // stage 1: free blocks [ns, fl) are all full and before the local window
    auto& blocks = s.blocks;
    blocks.clear();
    for (int64_t b = 0; b < std::min(ns, qb + 1); ++b) blocks.push_back(b);
    if (fl > ns) {
        const int64_t nfree = fl - ns;
        s.bscore.resize(nfree);
        parallel_ranges(nfree, parts, [&](int, int64_t lo, int64_t hi) {
            score_rows<DI>(q, w, a.HI, a.DI, lo, hi, [&](int64_t i) { return a.means + (ns + i) * a.DI; },
                           [&](int64_t i) { return (ns + i) * bs; }, s.bscore.data());
        });
        if (nfree > a.n_blocks) {
            top_mask(s.bscore, a.n_blocks, s.tmp, s.keep);
            for (int64_t b = ns; b < fl; ++b)
                if (s.keep[b - ns]) blocks.push_back(b);
        } else {
            for (int64_t b = ns; b < fl; ++b) blocks.push_back(b);
        }
    }
    for (int64_t b = std::max(fl, std::min(ns, qb + 1)); b <= qb; ++b) blocks.push_back(b);

    // stage 2: every causal token of those blocks, forced or candidate, in position order; candidates scored
    auto& attend = s.attend;
    attend.clear(); s.forced.clear(); s.cand.clear();
    for (int64_t b : blocks) {
        for (int64_t t = b * bs; t < std::min((b + 1) * bs, qp + 1); ++t) {
            const bool f = t < a.sink || qp - t < a.local || t == qp;
            attend.push_back(t);
            s.forced.push_back(f);
            if (!f) s.cand.push_back(t);
        }
    }
    const int64_t nc = static_cast<int64_t>(s.cand.size());
    s.cscore.resize(nc);
    parallel_ranges(nc, parts, [&](int, int64_t lo, int64_t hi) {
        score_rows<DI>(q, w, a.HI, a.DI, lo, hi, [&](int64_t i) { return a.keys + s.cand[i] * a.DI; },
                       [&](int64_t i) { return s.cand[i]; }, s.cscore.data());
    });
    if (nc > a.top_k) {  // drop the candidates outside the top_k
        top_mask(s.cscore, a.top_k, s.tmp, s.keep);
        size_t ci = 0, n = 0;
        for (size_t i = 0; i < attend.size(); ++i) {
            if (s.forced[i] || s.keep[ci]) attend[n++] = attend[i];
            if (!s.forced[i]) ++ci;
        }
        attend.resize(n);
    }
    a.nread[c] = static_cast<int64_t>(attend.size());
    s.select_s += std::chrono::duration<double>(Clock::now() - t0).count();
}

// Decode: query c over s.attend, query head h reading KV head h / G; split k of `parts` attends
// attend[lo, hi) for every KV head, and the splits are merged with their softmax max and sum.
template <int D>
void attend_split(const Args& a, int64_t c, Scratch& s, int parts) {
    const auto t1 = Clock::now();
    const int G = a.H / a.HKV, n = D > 0 ? D : a.D;
    const auto& attend = s.attend;
    const int64_t T = static_cast<int64_t>(attend.size()), stride = G * n + 2 * G;
    s.p.resize(parts);
    s.part.resize(static_cast<size_t>(parts) * a.HKV * stride);
    parallel_ranges(T, parts, [&](int k, int64_t lo, int64_t hi) {
        s.p[k].resize(static_cast<size_t>(G) * (hi - lo));
        for (int g = 0; g < a.HKV; ++g) {
            float* r = s.part.data() + (static_cast<size_t>(k) * a.HKV + g) * stride;
            attend_group<D>(a.query + (c * a.H + g * G) * n, a.kbuf + g * a.cap * n, a.vbuf + g * a.cap * n,
                            attend.data() + lo, hi - lo, G, n, a.scaling, s.p[k].data(), r, r + G * n, r + G * n + G);
        }
    });
    for (int g = 0; g < a.HKV; ++g) {
        for (int j = 0; j < G; ++j) {
            float m = -3.0e38f, den = 0.f;
            for (int k = 0; k < parts; ++k) {
                const float* r = s.part.data() + (static_cast<size_t>(k) * a.HKV + g) * stride;
                if (r[G * n + G + j] > 0.f) m = std::max(m, r[G * n + j]);
            }
            float* o = a.out + (c * a.H + g * G + j) * n;
            std::fill(o, o + n, 0.f);
            for (int k = 0; k < parts; ++k) {
                const float* r = s.part.data() + (static_cast<size_t>(k) * a.HKV + g) * stride;
                if (r[G * n + G + j] == 0.f) continue;  // an empty split
                const float e = parts == 1 ? 1.f : std::exp(r[G * n + j] - m);
                den += e * r[G * n + G + j];
                for (int d = 0; d < n; ++d) o[d] += e * r[j * n + d];
            }
            const float inv = 1.f / den;
            for (int d = 0; d < n; ++d) o[d] *= inv;
        }
    }
    s.attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
}

#if defined(__AVX512F__)
// The tile's union rows as small dense products, for tiles whose queries overlap a lot (a trained indexer's
// neighbours): lane l = j * G + h is query j's head h (at most 32 lanes), S[u][l] its score for union row u.
// Rows a query did not select are masked out of its softmax, so each query still attends exactly its own
// keys; the products run at the FMA units' rate instead of one scattered row at a time. For KV head g.
template <int D>
void attend_tile_dense(const Args& a, int64_t c0, int m, int g, Scratch& s) {
    constexpr int n = D;
    const int G = a.H / a.HKV, L = m * G;
    const int64_t U = static_cast<int64_t>(s.uni.size());
    const float* k = a.kbuf + g * a.cap * n;
    const float* v = a.vbuf + g * a.cap * n;
    alignas(64) float qt[n * 32] = {0};  // queries transposed: qt[d * 32 + l]
    for (int l = 0; l < L; ++l) {
        const float* q = a.query + ((c0 + l / G) * a.H + g * G + l % G) * n;
        for (int d = 0; d < n; ++d) qt[d * 32 + l] = q[d] * a.scaling;
    }
    uint32_t lanes[256];  // query bitmask -> lane mask
    for (int b = 0; b < (1 << m); ++b) {
        lanes[b] = 0;
        for (int j = 0; j < m; ++j)
            if (b >> j & 1) lanes[b] |= ((1u << G) - 1) << (j * G);
    }
    s.acc.resize(static_cast<size_t>(U) * 32);
    float* S = s.acc.data();
    for (int64_t u = 0; u < U; u += 4) {  // scores, 4 rows at a time
        const float* kr[4];
        for (int i = 0; i < 4; ++i) kr[i] = k + s.uni[std::min<int64_t>(u + i, U - 1)] * n;
        __m512 acc[4][2];
        for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (int d = 0; d < n; ++d) {
            const __m512 q0 = _mm512_load_ps(qt + d * 32), q1 = _mm512_load_ps(qt + d * 32 + 16);
            for (int i = 0; i < 4; ++i) {
                const __m512 b = _mm512_set1_ps(kr[i][d]);
                acc[i][0] = _mm512_fmadd_ps(b, q0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(b, q1, acc[i][1]);
            }
        }
        for (int i = 0; i < 4 && u + i < U; ++i) {
            _mm512_storeu_ps(S + (u + i) * 32, acc[i][0]);
            _mm512_storeu_ps(S + (u + i) * 32 + 16, acc[i][1]);
        }
    }
    // softmax over each lane's own rows: max, then exp (exp(min(x - max, 0)): non-member rows cannot overflow)
    __m512 mx0 = _mm512_set1_ps(-3.0e38f), mx1 = mx0;
    for (int64_t u = 0; u < U; ++u) {
        const uint32_t lm = lanes[s.members[u]];
        mx0 = _mm512_mask_max_ps(mx0, static_cast<__mmask16>(lm), mx0, _mm512_loadu_ps(S + u * 32));
        mx1 = _mm512_mask_max_ps(mx1, static_cast<__mmask16>(lm >> 16), mx1, _mm512_loadu_ps(S + u * 32 + 16));
    }
    alignas(64) float mx[32];
    _mm512_store_ps(mx, mx0);
    _mm512_store_ps(mx + 16, mx1);
    for (int64_t i = 0; i < U * 32; ++i) S[i] = std::exp(std::min(S[i] - mx[i % 32], 0.f));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    for (int64_t u = 0; u < U; ++u) {  // zero the rows a lane did not select; sum the rest
        const uint32_t lm = lanes[s.members[u]];
        const __m512 p0 = _mm512_maskz_mov_ps(static_cast<__mmask16>(lm), _mm512_loadu_ps(S + u * 32));
        const __m512 p1 = _mm512_maskz_mov_ps(static_cast<__mmask16>(lm >> 16), _mm512_loadu_ps(S + u * 32 + 16));
        _mm512_storeu_ps(S + u * 32, p0);
        _mm512_storeu_ps(S + u * 32 + 16, p1);
        sum0 = _mm512_add_ps(sum0, p0);
        sum1 = _mm512_add_ps(sum1, p1);
    }
    alignas(64) float sum[32];
    _mm512_store_ps(sum, sum0);
    _mm512_store_ps(sum + 16, sum1);
    // outputs: 16 lanes x 16 dims at a time, over every union row
    for (int l0 = 0; l0 < L; l0 += 16) {
        for (int d0 = 0; d0 < n; d0 += 16) {
            __m512 o[16];
            for (int l = 0; l < 16; ++l) o[l] = _mm512_setzero_ps();
            for (int64_t u = 0; u < U; ++u) {
                const __m512 vr = _mm512_loadu_ps(v + s.uni[u] * n + d0);
                const float* pu = S + u * 32 + l0;
                for (int l = 0; l < 16; ++l) o[l] = _mm512_fmadd_ps(_mm512_set1_ps(pu[l]), vr, o[l]);
            }
            for (int l = 0; l < 16 && l0 + l < L; ++l) {
                const int lane = l0 + l;
                float* dst = a.out + ((c0 + lane / G) * a.H + g * G + lane % G) * n + d0;
                _mm512_storeu_ps(dst, _mm512_mul_ps(o[l], _mm512_set1_ps(1.f / sum[lane])));
            }
        }
    }
}
#endif

// Prefill: queries c0 .. c0 + m - 1 (their positions in s.lists) attended together. Neighbouring queries
// select mostly the same keys (with a trained indexer, 8 queries attend ~5x fewer distinct keys than their
// sum), and scattered K/V rows are what a query's attention waits on: each distinct row is read once for
// the tile and used by every query that selected it. Per query the arithmetic and its order are those of
// attend_split with one part, so the outputs are the same as attending each query alone.
template <int D>
void attend_tile(const Args& a, int64_t c0, int m, Scratch& s) {
    const auto t1 = Clock::now();
    const int G = a.H / a.HKV, n = D > 0 ? D : a.D;
    // union of the sorted lists, with a bitmask of the queries attending each position
    s.uni.clear(); s.members.clear();
    int64_t idx[TILE_Q] = {0};
    for (;;) {
        int64_t t = INT64_MAX;
        for (int j = 0; j < m; ++j)
            if (idx[j] < static_cast<int64_t>(s.lists[j].size())) t = std::min(t, s.lists[j][idx[j]]);
        if (t == INT64_MAX) break;
        uint16_t bits = 0;
        for (int j = 0; j < m; ++j)
            if (idx[j] < static_cast<int64_t>(s.lists[j].size()) && s.lists[j][idx[j]] == t) { bits |= 1u << j; ++idx[j]; }
        s.uni.push_back(t);
        s.members.push_back(bits);
    }
    const int64_t U = static_cast<int64_t>(s.uni.size());
    s.p.resize(m);
    s.acc.resize(static_cast<size_t>(m) * G * n);
    s.part.resize(static_cast<size_t>(m) * G);  // softmax denominators per query and head
    for (int j = 0; j < m; ++j) s.p[j].resize(static_cast<size_t>(G) * s.lists[j].size());
#if defined(__AVX512F__)
    if constexpr (D > 0 && D % 16 == 0) {
        int64_t total = 0;
        for (int j = 0; j < m; ++j) total += static_cast<int64_t>(s.lists[j].size());
        if (m * G <= 32 && U * 10 <= total * 3) {  // the union is under 30% of the rows read one query at a time
            for (int g = 0; g < a.HKV; ++g) attend_tile_dense<D>(a, c0, m, g, s);
            s.attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
            return;
        }
    }
#endif
    for (int g = 0; g < a.HKV; ++g) {
        const float* k = a.kbuf + g * a.cap * n;
        const float* v = a.vbuf + g * a.cap * n;
        std::fill(idx, idx + m, 0);
        for (int64_t u = 0; u < U; ++u) {  // scores: p[j][h * T_j + i] for the i-th key of query j
            prefetch_row(k, s.uni.data(), u, U, n);
            const float* kr = k + s.uni[u] * n;
            for (uint32_t bits = s.members[u]; bits; bits &= bits - 1) {
                const int j = __builtin_ctz(bits);
                const int64_t T = static_cast<int64_t>(s.lists[j].size()), i = idx[j]++;
                const float* q = a.query + ((c0 + j) * a.H + g * G) * n;
                for (int h = 0; h < G; ++h) s.p[j][h * T + i] = dot<D>(q + h * n, kr, n) * a.scaling;
            }
        }
        for (int j = 0; j < m; ++j) {  // softmax numerators, per query and head
            const int64_t T = static_cast<int64_t>(s.lists[j].size());
            for (int h = 0; h < G; ++h) {
                float* ph = s.p[j].data() + h * T;
                const float mx = *std::max_element(ph, ph + T);
                float sum = 0.f;
                for (int64_t i = 0; i < T; ++i) { ph[i] = std::exp(ph[i] - mx); sum += ph[i]; }
                s.part[j * G + h] = sum;
            }
        }
        std::fill(s.acc.begin(), s.acc.end(), 0.f);
        std::fill(idx, idx + m, 0);
        for (int64_t u = 0; u < U; ++u) {
            prefetch_row(v, s.uni.data(), u, U, n);
            const float* vr = v + s.uni[u] * n;
            for (uint32_t bits = s.members[u]; bits; bits &= bits - 1) {
                const int j = __builtin_ctz(bits);
                const int64_t T = static_cast<int64_t>(s.lists[j].size()), i = idx[j]++;
                for (int h = 0; h < G; ++h) {
                    const float pi = s.p[j][h * T + i];
                    float* o = s.acc.data() + (j * G + h) * n;
                    for (int d = 0; d < n; ++d) o[d] += pi * vr[d];
                }
            }
        }
        for (int j = 0; j < m; ++j)
            for (int h = 0; h < G; ++h) {
                const float inv = 1.f / s.part[j * G + h];
                const float* o = s.acc.data() + (j * G + h) * n;
                float* dst = a.out + ((c0 + j) * a.H + g * G + h) * n;
                for (int d = 0; d < n; ++d) dst[d] = o[d] * inv;
            }
    }
    s.attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
}

// queries c0 .. c0 + m - 1: alone (decode, split over `parts` threads) or as one tile (prefill)
template <int DI, int D>
void run_queries(const Args& a, int64_t c0, int m, Scratch& s, int parts) {
    if (m == 1) {
        select_query<DI>(a, c0, s, parts);
        attend_split<D>(a, c0, s, parts);
        return;
    }
    s.lists.resize(TILE_Q);
    for (int j = 0; j < m; ++j) {
        select_query<DI>(a, c0 + j, s, 1);
        s.lists[j].swap(s.attend);
    }
    attend_tile<D>(a, c0, m, s);
}

}  // namespace

// phase_s (may be null) receives the seconds spent selecting and attending, summed over threads
extern "C" int dsa_select_attend(
    int64_t C, const float* qi, const float* wi, const float* keys, const float* means, int64_t nb,
    const int64_t* qpos, const float* query, const float* kbuf, const float* vbuf, int64_t cap, float* out,
    int64_t* nread, double* phase_s, int HI, int DI, int H, int HKV, int D, int bs, int n_blocks, int top_k,
    int sink, int local, float scaling, int threads) {
    Args a{qi, wi, keys, means, qpos, query, kbuf, vbuf, out, nread, phase_s, cap, nb,
           HI, DI, H, HKV, D, bs, n_blocks, top_k, sink, local, scaling};
    void (*fn)(const Args&, int64_t, int, Scratch&, int) =  // shapes of the supported models, unrolled; others generic
        DI == 32 && D == 64 ? run_queries<32, 64> : DI == 64 && D == 64 ? run_queries<64, 64>
        : DI == 32 && D == 128 ? run_queries<32, 128> : DI == 64 && D == 128 ? run_queries<64, 128>
        : run_queries<0, 0>;
    if (C < TILE_Q) {  // decode: each query's work split over the threads
#ifdef _OPENMP
        const int parts = std::max(1, threads);  // OpenMP's pool: waking it costs microseconds
#else
        const int parts = 1;  // a thread per split would cost more to start than it saves
#endif
        Scratch s;
        for (int64_t c = 0; c < C; ++c) fn(a, c, 1, s, parts);
        if (phase_s) { phase_s[0] += s.select_s; phase_s[1] += s.attend_s; }
        return 0;
    }
    // prefill: tiles of TILE_Q neighbouring queries, dealt to threads in turn (later tiles cost more)
    const int64_t tiles = (C + TILE_Q - 1) / TILE_Q;
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, tiles));
    std::vector<Scratch> scratch(nt);
    parallel_ranges(nt, static_cast<int>(nt), [&](int t, int64_t, int64_t) {
        for (int64_t r = t; r < tiles; r += nt)
            fn(a, r * TILE_Q, static_cast<int>(std::min<int64_t>(TILE_Q, C - r * TILE_Q)), scratch[t], 1);
    });
    if (phase_s) {
        for (const auto& sc : scratch) { phase_s[0] += sc.select_s; phase_s[1] += sc.attend_s; }
    }
    return 0;
}
