// The lightning indexer's scores and the top-k threshold, for select_attend.cpp (included inside its
// anonymous namespace; not a standalone header).
#pragma once

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

#if SIMD_W > 0
// index scores of SIMD_W key rows at once: per head, one product vector per row, reduced together
template <int DI>
inline void index_score_w(const float* q, const float* w, const float* const* rows, int HI, float* out) {
    vf acc = vzero();
    for (int h = 0; h < HI; ++h) {
        vf v[SIMD_W];
        for (int i = 0; i < SIMD_W; ++i) {
            vf p = vmul(vload(rows[i]), vload(q + h * DI));
            for (int d = SIMD_W; d < DI; d += SIMD_W) p = vfmadd(vload(rows[i] + d), vload(q + h * DI + d), p);
            v[i] = p;
        }
        acc = vfmadd(vset1(w[h]), vmax(vsum_lanes(v), vzero()), acc);
    }
    vstore(out, acc);
}
#endif

// out[i] = index score of key row row(i) at position pos(i), for i in [lo, hi). With SIMD and d_I a multiple
// of the vector width, SIMD_W rows at a time (the last group padded by repeating a row): every row goes
// through the same arithmetic, so prefill and decode score a token identically.
template <int DI, class Row, class Pos>
void score_rows(const float* q, const float* w, int HI, int di, int64_t lo, int64_t hi, const Row& row,
                const Pos& pos, float* out) {
#if SIMD_W > 0
    if constexpr (DI > 0 && DI % SIMD_W == 0) {
        const float* rows[SIMD_W];
        float tmp[SIMD_W];
        for (int64_t i = lo; i < hi; i += SIMD_W) {
            const int64_t m = std::min<int64_t>(SIMD_W, hi - i);
            for (int j = 0; j < SIMD_W; ++j) rows[j] = row(i + std::min<int64_t>(j, m - 1));
            index_score_w<DI>(q, w, rows, HI, tmp);
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

