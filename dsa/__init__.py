"""dsa: DeepSeek Sparse Attention for Hugging Face causal LMs (Llama, Qwen2, Qwen3, Mistral).

    import dsa
    dsa.attach(model, dsa.DSAConfig(top_k=1024))      # model now attends sparsely
    cache = dsa.new_cache(model)                     # KV + indexer-key cache for prefill/decode
    with dsa.recording(model, dsa.SelectionRecorder()) as rec:
        model(input_ids, **dsa.cache_arg(cache))     # rec.selections: what each layer selected
    dsa.detach(model)                                # back to the original attention
"""

from .cache import DSACache, cache_arg, output_cache
from .config import DSAConfig
from .graph_decode import GraphDecoder
from .indexer import LightningIndexer, index_scores
from .patch import (attach, detach, is_attached, new_cache, profiling, recording, set_mode, take_paths,
                    use_reference)
from .record import Selection, SelectionRecorder
from .lora import load_adapter
from .weights import find_delta, find_shipped, fingerprint, load_indexer, save_indexer

__all__ = ["DSACache", "cache_arg", "output_cache", "DSAConfig", "GraphDecoder", "LightningIndexer", "index_scores", "attach",
           "detach", "is_attached", "new_cache", "profiling", "recording", "set_mode", "take_paths", "use_reference",
           "Selection", "SelectionRecorder", "load_adapter", "find_delta", "find_shipped", "fingerprint", "load_indexer", "save_indexer"]
