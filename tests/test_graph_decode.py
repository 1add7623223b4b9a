"""The fixed-shape decode step (dsa.graph_decode) against the eager decode path: the same logits and the same
recorded picks (select_last's keep sets) on every supported family; eager and fixed steps interleave through the
cache; dense mode; and, on a GPU, the CUDA graph's replays against the same step run eagerly."""

from __future__ import annotations

import pytest
import torch

import dsa
from dsa.graph_decode import GraphDecoder, min_length
from test_dsa import FAMILIES, ids, small, tiny

PROMPT, NEW = 300, 40


def _decode(model, x: torch.Tensor, fixed: bool, graph: bool = False, prompt: int = PROMPT, device: str = "cpu",
            move_at: int | None = None):
    """Prefill x[:, :prompt], then feed the rest one token at a time -> (logits [n, V], picks {(layer, qpos): keys}).
    move_at: before that position, grow the cache's buffers (they move to new memory)."""
    sels: list = []
    cache = dsa.new_cache(model, capacity=x.shape[1])
    x = x.to(device)
    out = []
    with torch.inference_mode(), dsa.recording(model, dsa.SelectionRecorder(record_from=prompt, on_select=sels.append)):
        model(x[:, :prompt], **dsa.cache_arg(cache), use_cache=True)
        dec = GraphDecoder(model, cache, capacity=x.shape[1], graph=graph) if fixed else None
        for t in range(prompt, x.shape[1]):
            if t == move_at:
                cache.reserve(4 * x.shape[1])
            if fixed:
                out.append(dec.step(int(x[0, t])).float().cpu())
            else:
                out.append(model(x[:, t : t + 1], **dsa.cache_arg(cache), use_cache=True).logits[0, -1].float().cpu())
    picks = {(s.layer, int(s.qpos[0])): (tuple(s.idx[0].tolist()), tuple(s.blocks[0].tolist())) for s in sels}
    return torch.stack(out), picks, cache


@pytest.mark.parametrize("family,cfg", [(f, small()) for f in FAMILIES]
                         + [("llama", small(n_blocks=40, sink_tokens=21))],  # more blocks than the context has; a
                         ids=[*FAMILIES, "llama-wide"])
def test_fixed_step_matches_eager_decode(family, cfg):                        # sink ending inside a block
    """Same logits and the same picks and kept blocks for every sparse layer and every decoded token."""
    model = tiny(family)
    dsa.attach(model, cfg)
    x = ids(PROMPT + NEW)
    ref, ref_picks, _ = _decode(model, x, fixed=False)
    got, got_picks, _ = _decode(model, x, fixed=True)
    assert torch.allclose(got, ref, atol=3e-5), (got - ref).abs().max()
    assert len(ref_picks) == NEW * (model.config.num_hidden_layers - 1)
    assert got_picks == ref_picks


def test_short_prompt_starts_eager_and_cache_stays_whole():
    """A prompt shorter than min_length decodes eagerly until the fixed step applies; afterwards an eager chunk
    continues from the cache the fixed steps filled, as one forward over everything does."""
    model = tiny()
    cfg = small()
    dsa.attach(model, cfg)
    start = min_length(cfg) - 5
    x = ids(start + 60)
    got, _, cache = _decode(model, x[:, : start + 40], fixed=True, prompt=start)
    ref, _, _ = _decode(model, x[:, : start + 40], fixed=False, prompt=start)
    assert torch.allclose(got, ref, atol=3e-5)
    assert cache.get_seq_length() == start + 40 and len(cache.index_keys[1]) == start + 40
    fresh = dsa.new_cache(model)
    with torch.inference_mode():
        model(x[:, : start + 40], **dsa.cache_arg(fresh), use_cache=True)
    for layer in (1, 2):  # the block sums the fixed steps left are the ones an eager prefill computes
        assert torch.allclose(cache.index_keys[layer].block_means(), fresh.index_keys[layer].block_means(), atol=1e-5)
    with torch.inference_mode():
        cache.reserve(start + 60)
        tail = model(x[:, start + 40 :], **dsa.cache_arg(cache), use_cache=True).logits
        whole = model(x).logits[:, start + 40 :]
    assert torch.allclose(tail, whole, atol=3e-5), (tail - whole).abs().max()


def test_dense_mode_fixed_step_matches_eager_dense():
    model = tiny()
    dsa.attach(model, small())
    dsa.set_mode(model, "dense")
    x = ids(PROMPT + 10)
    ref, _, _ = _decode(model, x, fixed=False)
    got, _, _ = _decode(model, x, fixed=True)
    assert torch.allclose(got, ref, atol=3e-5), (got - ref).abs().max()
    with pytest.raises(ValueError, match="baseline"):
        dsa.set_mode(model, "sparse")
        GraphDecoder(model, dsa.new_cache(model), 10, indexer=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_cuda_graph_replays_the_fixed_step():
    model = tiny().cuda()
    dsa.attach(model, small())
    x = ids(PROMPT + NEW)
    eager, eager_picks, _ = _decode(model, x, fixed=True, graph=False, device="cuda")
    replay, replay_picks, _ = _decode(model, x, fixed=True, graph=True, device="cuda")
    ref, ref_picks, _ = _decode(model, x, fixed=False, device="cuda")
    assert torch.allclose(replay, eager, atol=1e-5) and replay_picks == eager_picks
    assert torch.allclose(replay, ref, atol=1e-4) and replay_picks == ref_picks
    moved, moved_picks, _ = _decode(model, x, fixed=True, graph=True, device="cuda", move_at=PROMPT + NEW // 2)
    assert torch.allclose(moved, ref, atol=1e-4) and moved_picks == ref_picks  # a graph of the old buffers is dropped


def test_fixed_step_runs_under_the_phase_timer_and_is_counted():
    """docreader times every answer's phases: the fixed step must still run then (one "fixed_step" phase), and
    the paths its queries took are counted per sparse layer, as eager decoding counts them."""
    model = tiny()
    dsa.attach(model, small())
    x = ids(PROMPT + 5)
    cache = dsa.new_cache(model, capacity=x.shape[1])
    with torch.inference_mode():
        model(x[:, :PROMPT], **dsa.cache_arg(cache), use_cache=True)
        dsa.take_paths(model)
        with dsa.profiling(model) as phases:
            dec = GraphDecoder(model, cache, capacity=x.shape[1], graph=False)
            for t in range(PROMPT, x.shape[1]):
                dec.step(int(x[0, t]))
    assert phases["fixed_step"] > 0
    assert dsa.take_paths(model) == {"fixed": 5 * 2}  # 5 tokens x 2 sparse layers (layer 0 is dense)


@pytest.mark.parametrize("pos", [0, 5, 1023, 1024, 3000, 4095])
def test_split_dense_attention_equals_one_softmax(pos):
    """Dense layers read the whole buffer in 1,024-key chunks merged by their maxima: the same as one masked
    softmax over every key, whichever chunk the query's position falls in (chunks past it hold garbage)."""
    from dsa.graph_decode import _attend, _attend_split
    g = torch.Generator().manual_seed(pos)
    q, k, v = torch.randn(6, 16, generator=g), torch.randn(2, 4096, 16, generator=g), torch.randn(2, 4096, 16, generator=g)
    keep = torch.arange(4096) <= pos
    k[:, pos + 1 :] *= 50  # what lies past the query must not count
    got, ref = _attend_split(q, k, v, keep, 0.25), _attend(q, k, v, keep, 0.25)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
