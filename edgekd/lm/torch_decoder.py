"""The PyTorch reference decoder: a Hugging Face causal LM behind the `Decoder` interface, so greedy
generation, the export gate and speculative decoding run the same code on it as on the exported runtimes."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from edgekd.errors import BadInput
from edgekd.runtimes.decoding import DecoderState, checked_tokens, truncated


class TorchDecoder:
    """Batch-1 decoding with a KV cache kept as per-layer (key, value) tensors in `DecoderState.past`.

    Each `forward` builds a fresh `DynamicCache` from the given state; the cache appends by concatenation
    (new tensors), so the caller's state is never modified and a truncated state can share its prefix
    tensors (views) with the one it came from. The model is put in eval mode: dropout off, as decoding needs.
    """

    name = "pytorch"

    def __init__(self, model):
        self.model = getattr(model, "hf", model).eval()  # a CausalLM wrapper carries the HF model in `.hf`
        config = self.model.config.get_text_config(decoder=True)
        if any(DynamicCache(config=config).is_sliding):
            raise BadInput(f"{config.model_type}: sliding-window attention layers are not supported by the "
                           "PyTorch decoder (its cache drops positions, so `truncate` could not restore them)")
        self.config = config
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.device = next(self.model.parameters()).device

    def start(self) -> DecoderState:
        return DecoderState()

    @torch.no_grad()
    def forward(self, token_ids: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        ids = checked_tokens(token_ids, state, vocab_size=self.vocab_size, max_positions=self.max_positions)
        total = state.length + ids.shape[1]
        cache = DynamicCache(state.past or None, config=self.config)
        out = self.model(
            input_ids=torch.as_tensor(ids, dtype=torch.long, device=self.device),
            attention_mask=torch.ones(1, total, dtype=torch.long, device=self.device),
            position_ids=torch.arange(state.length, total, device=self.device)[None],
            cache=cache, use_cache=True,
        )
        past = [(layer.keys, layer.values) for layer in out.cache.layers]
        return out.logits.float().cpu().numpy(), DecoderState(total, past)

    def truncate(self, state: DecoderState, length: int) -> DecoderState:
        return truncated(state, length)
