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
#include <functional>
#include <thread>
#include <vector>

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

// keep[i] = 1 for the k largest scores (k < n); exact ties at the threshold are taken in position order
void top_mask(const std::vector<float>& score, int k, std::vector<float>& tmp, std::vector<char>& keep) {
    tmp.assign(score.begin(), score.end());
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float thr = tmp[k - 1];
    int above = 0;
    for (float v : score) above += v > thr;
    int ties = k - above;
    keep.assign(score.size(), 0);
    for (size_t i = 0; i < score.size(); ++i)
        if (score[i] > thr || (score[i] == thr && ties-- > 0)) keep[i] = 1;
}

// fetch the row at t[i + ahead] while row t[i] is used: the rows are scattered, so the hardware prefetcher
// cannot guess them, and each is only a few cache lines
inline void prefetch_row(const float* base, const int64_t* t, int64_t i, int64_t T, int n) {
    constexpr int64_t ahead = 8;
    if (i + ahead < T) {
        const char* r = reinterpret_cast<const char*>(base + t[i + ahead] * n);
        for (int b = 0; b < n * 4; b += 64) __builtin_prefetch(r + b);
    }
}

// KV head g's G query heads over the attended positions t: one pass over the K rows, one over the V rows
template <int D>
void attend_group(const float* q, const float* k, const float* v, const int64_t* t, int64_t T, int G, int dn,
                  float scaling, float* p, float* out) {
    const int n = D > 0 ? D : dn;
    for (int64_t i = 0; i < T; ++i) {
        prefetch_row(k, t, i, T, n);
        const float* kr = k + t[i] * n;
        for (int j = 0; j < G; ++j) p[j * T + i] = dot<D>(q + j * n, kr, n) * scaling;
    }
    for (int j = 0; j < G; ++j) {
        float* pj = p + j * T;
        const float mx = *std::max_element(pj, pj + T);
        float sum = 0.f;
        for (int64_t i = 0; i < T; ++i) { pj[i] = std::exp(pj[i] - mx); sum += pj[i]; }
        const float inv = 1.f / sum;
        for (int64_t i = 0; i < T; ++i) pj[i] *= inv;
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

using Clock = std::chrono::steady_clock;

struct Scratch {  // per-thread buffers reused across queries
    std::vector<float> bscore, cscore, p, tmp;
    std::vector<int64_t> blocks, attend;
    std::vector<char> forced, keep;
    double select_s = 0, attend_s = 0;
};

template <int DI, int D>
void one_query(const Args& a, int64_t c, Scratch& s) {
    auto& [bscore, cscore, p, tmp, blocks, attend, forced, keep, select_s, attend_s] = s;
    const auto t0 = Clock::now();
    const int64_t qp = a.qpos[c];
    const float* q = a.qi + c * a.HI * a.DI;
    const float* w = a.wi + c * a.HI;
    const int64_t bs = a.bs, qb = qp / bs;
    const int64_t ns = (a.sink + bs - 1) / bs;
    const int64_t local_lo = std::max<int64_t>(qp - std::max(a.local, 1) + 1, 0);  // own block even if local = 0
    const int64_t fl = local_lo / bs;

    // stage 1: free blocks [ns, fl) are all full and before the local window
    blocks.clear();
    for (int64_t b = 0; b < std::min(ns, qb + 1); ++b) blocks.push_back(b);
    if (fl > ns) {
        const int64_t nfree = fl - ns;
        bscore.resize(nfree);
        for (int64_t b = ns; b < fl; ++b)
            bscore[b - ns] = index_score<DI>(q, w, a.means + b * a.DI, a.HI, a.DI, b * bs);
        if (nfree > a.n_blocks) {
            top_mask(bscore, a.n_blocks, tmp, keep);
            for (int64_t b = ns; b < fl; ++b)
                if (keep[b - ns]) blocks.push_back(b);
        } else {
            for (int64_t b = ns; b < fl; ++b) blocks.push_back(b);
        }
    }
    for (int64_t b = std::max(fl, std::min(ns, qb + 1)); b <= qb; ++b) blocks.push_back(b);

    // stage 2: every causal token of those blocks, forced or candidate, in position order
    cscore.clear(); attend.clear(); forced.clear();
    for (int64_t b : blocks) {
        for (int64_t t = b * bs; t < std::min((b + 1) * bs, qp + 1); ++t) {
            const bool f = t < a.sink || qp - t < a.local || t == qp;
            attend.push_back(t);
            forced.push_back(f);
            if (!f) cscore.push_back(index_score<DI>(q, w, a.keys + t * a.DI, a.HI, a.DI, t));
        }
    }
    if (static_cast<int64_t>(cscore.size()) > a.top_k) {  // drop the candidates outside the top_k
        top_mask(cscore, a.top_k, tmp, keep);
        size_t ci = 0, n = 0;
        for (size_t i = 0; i < attend.size(); ++i) {
            if (forced[i] || keep[ci]) attend[n++] = attend[i];
            if (!forced[i]) ++ci;
        }
        attend.resize(n);
    }

    const auto t1 = Clock::now();
    select_s += std::chrono::duration<double>(t1 - t0).count();

    // sparse attention: query head h reads KV head h / G at the attended positions
    const int G = a.H / a.HKV, Dn = D > 0 ? D : a.D;
    const int64_t T = static_cast<int64_t>(attend.size());
    a.nread[c] = T;
    p.resize(static_cast<size_t>(G) * T);
    for (int g = 0; g < a.HKV; ++g)
        attend_group<D>(a.query + (c * a.H + g * G) * Dn, a.kbuf + g * a.cap * Dn, a.vbuf + g * a.cap * Dn,
                        attend.data(), T, G, Dn, a.scaling, p.data(), a.out + (c * a.H + g * G) * Dn);
    attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
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
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, C / 8));
    std::vector<Scratch> scratch(nt);
    void (*fn)(const Args&, int64_t, Scratch&) =  // shapes of the supported models, unrolled; others generic
        DI == 32 && D == 64 ? one_query<32, 64> : DI == 64 && D == 64 ? one_query<64, 64>
        : DI == 32 && D == 128 ? one_query<32, 128> : DI == 64 && D == 128 ? one_query<64, 128> : one_query<0, 0>;
    auto work = [&a, &scratch, nt, C, fn](int64_t t) {  // interleaved: later queries have more candidates
        for (int64_t c = t; c < C; c += nt) fn(a, c, scratch[t]);
    };
    if (nt == 1) {
        work(0);
    } else {
        std::vector<std::thread> pool;
        for (int64_t t = 0; t < nt; ++t) pool.emplace_back(work, t);
        for (auto& th : pool) th.join();
    }
    if (phase_s) {
        for (const auto& sc : scratch) { phase_s[0] += sc.select_s; phase_s[1] += sc.attend_s; }
    }
    return 0;
}
