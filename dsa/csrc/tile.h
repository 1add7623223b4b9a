// Prefill's tiles of neighbouring queries, for select_attend.cpp (included inside its anonymous namespace,
// after Args, Scratch, prefetch_row and dot; not a standalone header).
#pragma once

#if SIMD_W > 0
// The tile's union rows as small dense products, for tiles whose queries overlap a lot (a trained indexer's
// neighbours): lane l = j * G + h is query j's head h (at most 32 lanes, NV vectors), S[u][l] its score for
// union row u. Rows a query did not select are masked out of its softmax, so each query still attends exactly
// its own keys; the products run at the FMA units' rate instead of one scattered row at a time. For KV head g.
// (s.rows: room for R converted rows, bf16 K/V.)
template <class KV, int D>
void attend_tile_dense_head(const Args& a, int64_t c0, int m, int g, const uint32_t* lanes, Scratch& s) {
    constexpr int n = D, NV = 32 / SIMD_W, R = 8 / NV;  // R union rows per step: R * NV accumulators
    const int G = a.H / a.HKV, L = m * G;
    const int64_t U = static_cast<int64_t>(s.uni.size());
    const KV* k = head_rows<KV>(a.kbuf, g, a.cap, n);
    const KV* v = head_rows<KV>(a.vbuf, g, a.cap, n);
    s.rows.resize(R * n);
    alignas(64) float qt[n * 32] = {0};  // queries transposed: qt[d * 32 + l]
    for (int l = 0; l < L; ++l) {
        const float* q = a.query + ((c0 + l / G) * a.H + g * G + l % G) * n;
        for (int d = 0; d < n; ++d) qt[d * 32 + l] = q[d] * a.scaling;
    }
    s.acc.resize(static_cast<size_t>(U) * 32);
    float* S = s.acc.data();
    for (int64_t u = 0; u < U; u += R) {  // scores, R rows at a time
        const float* kr[R];
        for (int i = 0; i < R; ++i) kr[i] = load_row(k, s.uni[std::min<int64_t>(u + i, U - 1)], n, s.rows.data() + i * n);
        vf acc[R][NV];
        for (int i = 0; i < R; ++i)
            for (int j = 0; j < NV; ++j) acc[i][j] = vzero();
        for (int d = 0; d < n; ++d) {
            vf qv[NV];
            for (int j = 0; j < NV; ++j) qv[j] = vload(qt + d * 32 + j * SIMD_W);
            for (int i = 0; i < R; ++i) {
                const vf b = vset1(kr[i][d]);
                for (int j = 0; j < NV; ++j) acc[i][j] = vfmadd(b, qv[j], acc[i][j]);
            }
        }
        for (int i = 0; i < R && u + i < U; ++i)
            for (int j = 0; j < NV; ++j) vstore(S + (u + i) * 32 + j * SIMD_W, acc[i][j]);
    }
    // softmax over each lane's own rows: max, then exp (exp(min(x - max, 0)): non-member rows cannot overflow)
    vf mx[NV], sum[NV];
    for (int j = 0; j < NV; ++j) { mx[j] = vset1(-3.0e38f); sum[j] = vzero(); }
    for (int64_t u = 0; u < U; ++u) {
        const uint32_t lm = lanes[s.members[u]];
        for (int j = 0; j < NV; ++j)
            mx[j] = vmask_max(mx[j], lane_mask(lm >> (j * SIMD_W)), vload(S + u * 32 + j * SIMD_W));
    }
    alignas(64) float mxs[32], sums[32];
    for (int j = 0; j < NV; ++j) vstore(mxs + j * SIMD_W, mx[j]);
    for (int64_t i = 0; i < U * 32; ++i) S[i] = std::exp(std::min(S[i] - mxs[i % 32], 0.f));
    for (int64_t u = 0; u < U; ++u) {  // zero the rows a lane did not select; sum the rest
        const uint32_t lm = lanes[s.members[u]];
        for (int j = 0; j < NV; ++j) {
            const vf p = vmaskz(lane_mask(lm >> (j * SIMD_W)), vload(S + u * 32 + j * SIMD_W));
            vstore(S + u * 32 + j * SIMD_W, p);
            sum[j] = vadd(sum[j], p);
        }
    }
    for (int j = 0; j < NV; ++j) vstore(sums + j * SIMD_W, sum[j]);
    // outputs: SIMD_W lanes x SIMD_W dims at a time, over every union row
    for (int l0 = 0; l0 < L; l0 += SIMD_W) {
        for (int d0 = 0; d0 < n; d0 += SIMD_W) {
            vf o[SIMD_W];
            for (int l = 0; l < SIMD_W; ++l) o[l] = vzero();
            for (int64_t u = 0; u < U; ++u) {
                const vf vr = vload(v + s.uni[u] * n + d0);
                const float* pu = S + u * 32 + l0;
                for (int l = 0; l < SIMD_W; ++l) o[l] = vfmadd(vset1(pu[l]), vr, o[l]);
            }
            for (int l = 0; l < SIMD_W && l0 + l < L; ++l) {
                const int lane = l0 + l;
                float* dst = a.out + ((c0 + lane / G) * a.H + g * G + lane % G) * n + d0;
                vstore(dst, vmul(o[l], vset1(1.f / sums[lane])));
            }
        }
    }
}

// A tile through dense products over its union rows, one KV head at a time.
template <class KV, int D>
void attend_tile_dense(const Args& a, int64_t c0, int m, Scratch& s) {
    const int G = a.H / a.HKV;
    uint32_t lanes[1 << TILE_Q];  // query bitmask -> lane mask
    for (int b = 0; b < (1 << m); ++b) {
        lanes[b] = 0;
        for (int j = 0; j < m; ++j)
            if (b >> j & 1) lanes[b] |= ((1u << G) - 1) << (j * G);
    }
    for (int g = 0; g < a.HKV; ++g) attend_tile_dense_head<KV, D>(a, c0, m, g, lanes, s);
}
#endif

// Prefill: queries c0 .. c0 + m - 1 (their positions in s.lists) attended together. Neighbouring queries
// select mostly the same keys (with a trained indexer, 8 queries attend ~5x fewer distinct keys than their
// sum), and scattered K/V rows are what a query's attention waits on: each distinct row is read once for
// the tile and used by every query that selected it. Per query the arithmetic and its order are those of
// attend_split with one part, so the outputs are the same as attending each query alone.
template <class KV, int D>
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
#if SIMD_W > 0
    if constexpr (D > 0 && D % SIMD_W == 0) {
        int64_t total = 0;
        for (int j = 0; j < m; ++j) total += static_cast<int64_t>(s.lists[j].size());
        if (m * G <= 32 && U * 10 <= total * 3) {  // the union is under 30% of the rows read one query at a time
            attend_tile_dense<KV, D>(a, c0, m, s);
            ++s.tiles_dense;
            s.attend_s += std::chrono::duration<double>(Clock::now() - t1).count();
            return;
        }
    }
#endif
    ++s.tiles_sparse;
    s.p.resize(m);
    s.acc.resize(static_cast<size_t>(m) * G * n);
    s.part.resize(static_cast<size_t>(m) * G);  // softmax denominators per query and head
    for (int j = 0; j < m; ++j) s.p[j].resize(static_cast<size_t>(G) * s.lists[j].size());
    s.rows.resize(n);
    float* row = s.rows.data();
    for (int g = 0; g < a.HKV; ++g) {
        const KV* k = head_rows<KV>(a.kbuf, g, a.cap, n);
        const KV* v = head_rows<KV>(a.vbuf, g, a.cap, n);
        std::fill(idx, idx + m, 0);
        for (int64_t u = 0; u < U; ++u) {  // scores: p[j][h * T_j + i] for the i-th key of query j
            prefetch_row(k, s.uni.data(), u, U, n);
            const float* kr = load_row(k, s.uni[u], n, row);
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
            const float* vr = load_row(v, s.uni[u], n, row);
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

