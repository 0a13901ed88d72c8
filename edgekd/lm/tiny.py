"""A tiny randomly initialised Llama-style causal LM and a character tokenizer, written as a Hugging Face
folder: what the tests (and a smoke run) load through the same path as a real teacher, with no download."""

from __future__ import annotations

import string
from pathlib import Path

TINY_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def tiny_tokenizer():
    """A character-level fast tokenizer (BPE with no merges): every printable ASCII character is one token."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(TINY_CHARS))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def tiny_causal_lm(*, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2, ffn: int = 128,
                   seed: int = 0):
    """A LlamaForCausalLM over the tiny tokenizer's vocabulary (grouped-query attention: `heads` query heads
    share `kv_heads` KV heads), weights drawn under `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(SPECIAL_TOKENS) + len(TINY_CHARS), hidden_size=hidden, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=hidden // heads, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def write_tiny_causal_lm(out_dir: str | Path, **kwargs) -> Path:
    """`tiny_causal_lm(**kwargs)` and its tokenizer saved as a Hugging Face folder (safetensors)."""
    out_dir = Path(out_dir)
    tiny_causal_lm(**kwargs).save_pretrained(out_dir, safe_serialization=True)
    tiny_tokenizer().save_pretrained(out_dir)
    return out_dir
