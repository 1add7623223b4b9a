// Fused two-stage selection + sparse attention for one batch row on the CPU.
//
// The PyTorch path spends most of a decode step in per-op overhead (~60 small tensor ops per layer) and
// most of a prefill chunk attending the union of 64 queries' selections; here each query scores its own
// candidates and attends exactly its own keys: a decode step's one query split over the threads, prefill's
// queries in tiles of 8 neighbours that read shared K/V rows once (tile.h). Indexer scores and the top-k
// threshold are in score.h. Semantics are select.py's `select_chunk`, per query:
//   stage 1: free blocks = causal blocks that are neither sink blocks [0, ns) nor local blocks [fl, qb];
//            score with block-mean keys, keep the top n_blocks (ties at exactly 0 ordered by recency);
//   stage 2: candidates = non-forced causal tokens of sink, kept and local blocks; keep the top top_k;
//   attend:  forced tokens (t < sink, qp - t < local, t == qp) + the kept candidates, in position order.
// float32 arithmetic and contiguous rows; K/V buffers in float32 or bfloat16 (converted as rows are loaded,
// simd.h), chosen per call. Vector paths (AVX-512 or AVX2, simd.h) where the build targets them, scalar loops
// elsewhere. Built at first use by dsa/kernels.py (plain g++, no torch headers).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct Args {
    const float* qi; const float* wi; const float* keys; const float* means; const int64_t* qpos;
    const float* query; const void* kbuf; const void* vbuf; float* out; int64_t* nread; double* phase_s;
    int64_t cap, nb;
    int HI, DI, H, HKV, D, bs, n_blocks, top_k, sink, local;
    float scaling;
};

#include "simd.h"
#include "score.h"

// fetch the row at t[i + ahead] while row t[i] is used: the rows are scattered, so the hardware prefetcher
// cannot guess them, and each is only a few cache lines
template <class KV>
inline void prefetch_row(const KV* base, const int64_t* t, int64_t i, int64_t T, int n) {
    constexpr int64_t ahead = 8;  // 4 to 32 measured the same: the misses in flight bound it, not the distance
    if (i + ahead < T) {
        const char* r = reinterpret_cast<const char*>(base + t[i + ahead] * n);
        for (int b = 0; b < n * static_cast<int>(sizeof(KV)); b += 64) __builtin_prefetch(r + b);
    }
}

// KV head g's rows of a K or V buffer [HKV, cap, n]
template <class KV>
inline const KV* head_rows(const void* buf, int g, int64_t cap, int n) {
    return static_cast<const KV*>(buf) + g * cap * n;
}

// KV head g's G query heads over the attended positions t[0, T): one pass over the K rows, one over the V
// rows. Writes the unnormalised output exp(s - m) . V to out [G, n] and the max m / sum of exp(s - m) per
// head to mx / sum [G], so that parts of a query's keys attended by different threads can be merged.
// row [n]: room for one converted row (bf16 K/V).
template <class KV, int D>
void attend_group(const float* q, const KV* k, const KV* v, const int64_t* t, int64_t T, int G, int dn,
                  float scaling, float* p, float* out, float* mx, float* sum, float* row) {
    const int n = D > 0 ? D : dn;
    for (int64_t i = 0; i < T; ++i) {
        prefetch_row(k, t, i, T, n);
        const float* kr = load_row(k, t[i], n, row);
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
        const float* vr = load_row(v, t[i], n, row);
        for (int j = 0; j < G; ++j) {
            const float pi = p[j * T + i];
            float* oj = out + j * n;
            for (int d = 0; d < n; ++d) oj[d] += pi * vr[d];
        }
    }
}

// f(part, lo, hi) over [0, n) cut into at most `parts` ranges, the caller's thread taking part 0; returns how
// many parts ran. OpenMP may grant fewer threads than asked (OMP_DYNAMIC, OMP_THREAD_LIMIT, nested regions):
// the ranges are cut by the team it actually gives, and callers merge only the parts that ran. A decode step
// has a single query: splitting its work over two cores doubles the cache misses in flight, which bound it.
template <class F>
int parallel_ranges(int64_t n, int parts, const F& f) {
    if (parts <= 1) { f(0, 0, n); return 1; }
#ifdef _OPENMP
    int used = 1;
#pragma omp parallel num_threads(parts)
    {
        const int i = omp_get_thread_num(), k = omp_get_num_threads();
        if (i == 0) used = k;
        f(i, n * i / k, n * (i + 1) / k);
    }
    return used;
#else
    std::vector<std::thread> pool;
    for (int i = 1; i < parts; ++i) pool.emplace_back(f, i, n * i / parts, n * (i + 1) / parts);
    f(0, 0, n / parts);
    for (auto& th : pool) th.join();
    return parts;
#endif
}

using Clock = std::chrono::steady_clock;

constexpr int TILE_Q = 8;  // prefill: queries attended together (their selections overlap; see attend_tile)

struct Scratch {  // per-thread buffers, reused across queries
    std::vector<float> bscore, cscore, part;  // part: per split, per head: [G * n out | m | sum]
    std::vector<float> rows;                  // bf16 K/V rows converted to floats: per split, or a tile's few
    std::vector<uint32_t> tmp;
    std::vector<std::vector<float>> p;  // per split (decode) or per query of a tile (prefill): probabilities
    std::vector<int64_t> blocks, attend, cand, uni;
    std::vector<std::vector<int64_t>> lists;  // per query of a tile: attended positions
    std::vector<uint16_t> members;            // per position of `uni`: which queries of the tile attend it
    std::vector<float> acc;                   // per query of a tile: [G * n] output accumulators
    std::vector<char> forced, keep;
    double select_s = 0, attend_s = 0;
    int64_t tiles_dense = 0, tiles_sparse = 0, decoded = 0;  // which paths ran (reported to the caller)
    int threads = 1;  // most threads a decode split actually ran on
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
template <class KV, int D>
void attend_split(const Args& a, int64_t c, Scratch& s, int parts) {
    const auto t1 = Clock::now();
    const int G = a.H / a.HKV, n = D > 0 ? D : a.D;
    const auto& attend = s.attend;
    const int64_t T = static_cast<int64_t>(attend.size()), stride = G * n + 2 * G;
    s.p.resize(parts);
    s.part.resize(static_cast<size_t>(parts) * a.HKV * stride);
    s.rows.resize(static_cast<size_t>(parts) * n);
    parts = parallel_ranges(T, parts, [&](int k, int64_t lo, int64_t hi) {
        s.p[k].resize(static_cast<size_t>(G) * (hi - lo));
        for (int g = 0; g < a.HKV; ++g) {
            float* r = s.part.data() + (static_cast<size_t>(k) * a.HKV + g) * stride;
            attend_group<KV, D>(a.query + (c * a.H + g * G) * n, head_rows<KV>(a.kbuf, g, a.cap, n),
                                head_rows<KV>(a.vbuf, g, a.cap, n), attend.data() + lo, hi - lo, G, n, a.scaling,
                                s.p[k].data(), r, r + G * n, r + G * n + G, s.rows.data() + static_cast<size_t>(k) * n);
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
    s.threads = std::max(s.threads, parts);
    s.attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
}

#include "tile.h"

// queries c0 .. c0 + m - 1: alone (decode, split over `parts` threads) or as one tile (prefill)
template <class KV, int DI, int D>
void run_queries(const Args& a, int64_t c0, int m, Scratch& s, int parts) {
    if (m == 1) {
        select_query<DI>(a, c0, s, parts);
        attend_split<KV, D>(a, c0, s, parts);
        ++s.decoded;
        return;
    }
    s.lists.resize(TILE_Q);
    for (int j = 0; j < m; ++j) {
        select_query<DI>(a, c0 + j, s, 1);
        s.lists[j].swap(s.attend);
    }
    attend_tile<KV, D>(a, c0, m, s);
}

using RunFn = void (*)(const Args&, int64_t, int, Scratch&, int);

// the shapes of the supported models, unrolled; others generic
template <class KV>
RunFn pick_run(int DI, int D) {
    return DI == 32 && D == 64 ? run_queries<KV, 32, 64> : DI == 64 && D == 64 ? run_queries<KV, 64, 64>
         : DI == 32 && D == 128 ? run_queries<KV, 32, 128> : DI == 64 && D == 128 ? run_queries<KV, 64, 128>
         : run_queries<KV, 0, 0>;
}

void report(const Scratch* s, int n, int threads, double* phase_s, int64_t* stats) {
    for (int i = 0; i < n; ++i) {
        if (phase_s) { phase_s[0] += s[i].select_s; phase_s[1] += s[i].attend_s; }
        if (stats) { stats[0] += s[i].tiles_dense; stats[1] += s[i].tiles_sparse; stats[2] += s[i].decoded; }
    }
    if (stats) stats[3] = std::max<int64_t>(stats[3], threads);
}

// How many splits a decode step's one query takes: OpenMP's pool (waking it costs microseconds), else one (a
// thread per split would cost more to start than it saves)
inline int decode_parts(int threads) {
#ifdef _OPENMP
    return std::max(1, threads);
#else
    (void)threads;
    return 1;
#endif
}

}  // namespace

// The vector instructions the fast paths were built with: "avx512", "avx2" or "scalar".
extern "C" const char* dsa_kernel_isa() { return SIMD_ISA; }

// A dense layer's decode step: one query [H, D] over every position [0, L) of the K/V buffers [HKV, cap, D]
// (float32, or bfloat16 when kv_bf16 is nonzero), split over `threads` as a sparse decode step is. Rows are read
// in order, so the hardware prefetcher streams them: 27 ms for one layer at 128k tokens on 2 cores, where PyTorch's
// two grouped matmuls over the same rows took 73 ms (bench/RESULTS-long.md, 2026-12-05).
extern "C" int dsa_attend_all(const float* query, const void* kbuf, const void* vbuf, int64_t cap, int64_t L,
                              float* out, int H, int HKV, int D, float scaling, int threads, int kv_bf16) {
    Args a{nullptr, nullptr, nullptr, nullptr, nullptr, query, kbuf, vbuf, out, nullptr, nullptr, cap, 0,
           0, 0, H, HKV, D, 0, 0, 0, 0, 0, scaling};
    Scratch s;
    s.attend.resize(static_cast<size_t>(L));
    std::iota(s.attend.begin(), s.attend.end(), int64_t{0});
    const int parts = decode_parts(threads);
    using Fn = void (*)(const Args&, int64_t, Scratch&, int);
    const Fn fn = kv_bf16 ? (D == 64 ? attend_split<bf16, 64> : D == 128 ? attend_split<bf16, 128> : attend_split<bf16, 0>)
                          : (D == 64 ? attend_split<float, 64> : D == 128 ? attend_split<float, 128> : attend_split<float, 0>);
    fn(a, 0, s, parts);
    return 0;
}

// phase_s (may be null) receives the seconds spent selecting and attending, summed over threads; stats (may
// be null) adds [tiles attended by dense products, tiles attended row by row, queries decoded alone, threads].
// kbuf / vbuf hold float32, or bfloat16 when kv_bf16 is nonzero.
extern "C" int dsa_select_attend(
    int64_t C, const float* qi, const float* wi, const float* keys, const float* means, int64_t nb,
    const int64_t* qpos, const float* query, const void* kbuf, const void* vbuf, int64_t cap, float* out,
    int64_t* nread, double* phase_s, int64_t* stats, int HI, int DI, int H, int HKV, int D, int bs, int n_blocks,
    int top_k, int sink, int local, float scaling, int threads, int kv_bf16) {
    Args a{qi, wi, keys, means, qpos, query, kbuf, vbuf, out, nread, phase_s, cap, nb,
           HI, DI, H, HKV, D, bs, n_blocks, top_k, sink, local, scaling};
    const RunFn fn = kv_bf16 ? pick_run<bf16>(DI, D) : pick_run<float>(DI, D);
    if (C < TILE_Q) {  // decode: each query's work split over the threads
        const int parts = decode_parts(threads);
        Scratch s;
        for (int64_t c = 0; c < C; ++c) fn(a, c, 1, s, parts);
        report(&s, 1, s.threads, phase_s, stats);
        return 0;
    }
    // prefill: tiles of TILE_Q neighbouring queries, each thread taking the next undone tile (later tiles cost
    // more), so every tile is attended whatever number of threads the runtime grants
    const int64_t tiles = (C + TILE_Q - 1) / TILE_Q;
    const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tiles)));
    std::vector<Scratch> scratch(nt);
    std::atomic<int64_t> next{0};
    const int used = parallel_ranges(nt, nt, [&](int t, int64_t, int64_t) {
        for (int64_t r; (r = next.fetch_add(1)) < tiles;)
            fn(a, r * TILE_Q, static_cast<int>(std::min<int64_t>(TILE_Q, C - r * TILE_Q)), scratch[t], 1);
    });
    report(scratch.data(), nt, used, phase_s, stats);
    return 0;
}
