"""Causal language models (Llama-style, from a Hugging Face folder or a .gguf file): token ids in, next-token
logits out, generation with a KV cache.

The family owns the students (`layers:N[,ffn:F][,heads:H]`, `prune:R` with grouped-query heads kept whole)
and the example inputs; because its models generate, `edgekd compress` runs its six steps through
edgekd.steps.generation (token-level KD on cached top-k logits, weight-only quantization, a KV-cache
decoder graph, generation timed on the runtimes) rather than the single-forward path of the other two.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from edgekd.errors import BadInput
from edgekd.families.base import ModelFamily

EXAMPLE_TOKENS = 16  # the example batch: two windows this long (tracing, the data check)


class CausalLMFamily(ModelFamily):
    name = "causal-lm"
    generates = True

    def __init__(self, *, model: nn.Module, data, label: str = "the model"):
        if not data.is_text:
            raise BadInput(f"{label} is a causal language model but --data {data.name} is not text: give a text "
                           "dataset (e.g. --data english or a text file with one sample per line)")
        super().__init__(model=model, data=data)

    @classmethod
    def matches(cls, *, model, data) -> bool:
        from edgekd.lm.model import CausalLM

        return isinstance(model, CausalLM)

    def example_input(self):
        import torch

        from edgekd.lm.data import token_windows

        tokenizer = self.model.tokenizer()
        windows = token_windows(tokenizer, [str(t) for t in self.data.x_val[:64]], seq_len=EXAMPLE_TOKENS,
                                max_tokens=2 * EXAMPLE_TOKENS)
        return torch.from_numpy(windows[:2])

    def make_student(self, spec: str, *, channel_multiple: int, prune_settings=None, seed: int = 0):
        from edgekd.lm.students import make_lm_student

        return make_lm_student(self.model, spec, channel_multiple=channel_multiple)

    def ladder(self) -> list[str]:
        from edgekd.lm.students import lm_ladder

        return lm_ladder(self.model)

    def trains_without_teacher(self) -> bool:
        return True  # the next-token loss on the real text

    def distill_config(self, settings: dict, *, source: str, student: nn.Module | None = None):
        raise BadInput(f"{source}: causal LMs train through `edgekd compress` (edgekd.steps.generation)")

    def times_layer_choices(self) -> bool:
        return False

    def export_inputs(self, *, static_shapes: bool = False) -> dict:
        raise BadInput("a causal LM is exported as a decoder with a KV cache by `edgekd compress` "
                       "(edgekd.lm.export.export_lm), not as a single-forward graph")

    def runtime_inputs(self):
        raise BadInput("a causal LM is timed by its generation (edgekd.bench.generation), not a single forward")

    def metric(self, outputs: np.ndarray, teacher_outputs: np.ndarray) -> dict:
        from edgekd.lm.metrics import agreement_from_logits

        return {"name": "top1_agreement_vs_teacher",
                "value": agreement_from_logits(outputs, teacher_outputs.argmax(-1))}
