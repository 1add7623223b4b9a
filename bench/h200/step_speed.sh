#!/bin/bash
# Training-step cost on the H200 by window length, with the rows of a batch through DSA's sparse path in one
# call per layer (default) and one call per row (DSA_FLEX_BATCH=0): random tokens, the real model and delta.
set -eo pipefail
S=/root/stash; R=$S/rnd; mkdir -p $R
python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
for L, n in ((2048, 64), (8192, 16)):
    tok = rng.integers(0, 49152, (n, L), dtype=np.uint16)
    ans = np.zeros((n, L), np.uint8); ans[:, -64:] = 1
    np.savez(f"/root/stash/rnd/windows_{L}.npz", tokens=tok, answer=ans, lm=np.ones((n, L), np.uint8),
             kind=np.zeros(n, np.uint8))
PY
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
for batch in 1 0; do
  DSA_FLEX_BATCH=$batch python3 -m dsa.longtrain --gguf-dir $S/llm --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
    --data $R --phases 2048:0.5,8192:0.5 --init-adapter dsa/weights/smollm2-135m-long \
    --init-indexer dsa/weights/smollm2-135m-long --tokens-per-step 65536 --queries 128 --time-budget 50 \
    --out $S/speed$batch > $OUT/speed$batch.log 2>&1
  python3 - $OUT/speed$batch.log $batch <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"step"')]
prev, by = 0.0, {}
for r in rows:
    by.setdefault(r["seq_len"], []).append(r["s"] - prev); prev = r["s"]
for L, d in sorted(by.items()):
    print(f"DSA_FLEX_BATCH={sys.argv[2]} L={L}: {len(d)} steps, s/step median {statistics.median(d[1:] or d):.2f} first {d[0]:.1f}")
PY
done
