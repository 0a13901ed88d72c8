"""Text encoders (Hugging Face / sentence-transformers): token ids and masks in, sentence embeddings out.

Texts are tokenized with the teacher's own tokenizer, to at most 128 positions (the sequence
length latency is quoted at); students are `layers:N[,ffn:F][,heads:H]` depth x width cuts or
`prune:R` head/FFN pruning; KD uses the encoder recipe (pooled embedding, hidden states, attention)
and the deployed students ship an Optimum folder (`hf/`) that ORTModelForFeatureExtraction and OVModelForFeatureExtraction load.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from torch import nn

from edgekd.errors import BadInput
from edgekd.families.base import ModelFamily


class TextEncoderFamily(ModelFamily):
    name = "text-encoder"

    def __init__(self, *, model: nn.Module, data, label: str = "the model"):
        from edgekd.hf import SentenceEncoder

        if not isinstance(model, SentenceEncoder):
            raise BadInput(f"{label}: {type(model).__name__} is not a text encoder, but --data {data.name}: text data "
                           "needs a Hugging Face text encoder (a model directory with its tokenizer); run `edgekd "
                           "compress --teacher MODEL_DIR --student layers:N --data TEXT`")
        super().__init__(model=model, data=data)

    @classmethod
    def matches(cls, *, model, data) -> bool:
        return data.is_text

    @cached_property
    def tokenizer(self):
        """The tokenizer saved with the encoder."""
        from edgekd.hf import load_tokenizer

        return load_tokenizer(path=self.model.source_dir)

    @property
    def max_length(self) -> int:
        """Token positions text models see: 128 (the benchmark's sequence length) within the model's limits."""
        from edgekd.hf import DEFAULT_MAX_LENGTH

        return min(DEFAULT_MAX_LENGTH, self.model.config.max_position_embeddings,
                   self.model.max_seq_length or DEFAULT_MAX_LENGTH)

    def example_input(self):
        from edgekd.hf import encode_batch

        return encode_batch(tokenizer=self.tokenizer, texts=self.data.x_val[:2], max_length=self.max_length)

    def collate(self):
        from edgekd.hf import TextCollate

        return TextCollate(tokenizer=self.tokenizer, max_length=self.max_length)

    def _batches(self):
        """Training batches of like-length texts under a token budget (padding is most of a random batch)."""
        from edgekd.hf.text import TokenBudgetBatches

        return TokenBudgetBatches(tokenizer=self.tokenizer, max_length=self.max_length)

    def make_student(self, spec: str, *, channel_multiple: int, prune_settings=None, seed: int = 0):
        from edgekd.hf import make_student

        return make_student(teacher=self.model, spec=spec, example_inputs=self.example_input(),
                            channel_multiple=channel_multiple)

    def ladder(self) -> list[str]:
        """Depth x FFN width (`layers:N[,ffn:F]`), most parameters first: edgekd.hf.student_ladder."""
        from edgekd.hf import student_ladder

        return student_ladder(self.model)

    def trains_without_teacher(self) -> bool:
        return False  # unlabeled text: nothing to learn from without the teacher

    def distill_config(self, settings: dict, *, source: str, student: nn.Module | None = None):
        """The encoder KD recipe (embedding + hidden + attention terms, text augmentation) under the
        recipe's own settings; without KD (or a student to tap), the plain config with text collate
        and batches."""
        from edgekd.distill import config_from_mapping

        config = config_from_mapping(settings, source=source)
        if not config.kd or student is None:
            config.collate, config.batches = self.collate(), self._batches()
            return config
        overrides = {k: getattr(config, k) for k in settings if k != "response"}
        return self._encoder_kd(student=student, teacher=self.model, **overrides)

    def qat_distill_config(self, config, *, student: nn.Module):
        """The FP32 student teaches its fake-quant copy through the encoder KD terms."""
        fine_tune = {k: getattr(config, k) for k in
                     ("epochs", "max_steps", "lr", "weight_decay", "patience", "warmup_epochs", "seed", "batch_size")}
        return self._encoder_kd(student=student, teacher=student, **fine_tune)

    def _encoder_kd(self, *, student: nn.Module, teacher: nn.Module, **overrides):
        from edgekd.hf import encoder_kd_config

        if not overrides.get("losses"):
            overrides.pop("losses", None)  # none given: the encoder recipe's terms
        return encoder_kd_config(student=student, teacher=teacher, tokenizer=self.tokenizer,
                                 max_length=self.max_length, **overrides)

    def ptq_smooth_alpha(self) -> float | None:
        """NNCF's transformer-preset alpha: all-MiniLM-L6-v2's FFN inputs span [-7.8, 28.5] for values mostly
        within +-3; unsmoothed, its PTQ teacher kept output cosine 0.9896 and failed OpenVINO's 0.999 gate."""
        from edgekd.quant import TRANSFORMER_SMOOTH_ALPHA

        return TRANSFORMER_SMOOTH_ALPHA

    def times_layer_choices(self) -> bool:
        return False  # two inputs (ids, mask): the latency-aware layer choice times single-input models

    def export_view(self, model: nn.Module) -> nn.Module:
        from edgekd.hf import FeatureExtraction

        return FeatureExtraction(model)

    def export_inputs(self, *, static_shapes: bool = False) -> dict:
        """Dynamic batch and sequence always: a static-shape target compiles the graph at the shape it
        runs (edgekd.bench fixes the shapes when it opens the session)."""
        from edgekd.hf import export_inputs

        return export_inputs(tokenizer=self.tokenizer, texts=self.data.x_test, max_length=self.max_length)

    def runtime_inputs(self):
        """Texts tokenized and padded to `max_length` (128: the sequence length latency is quoted at)."""
        from edgekd.hf import encode_batch

        ids, mask = encode_batch(tokenizer=self.tokenizer, texts=self.data.x_test, max_length=self.max_length,
                                 pad_to=self.max_length)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return feeds, {name: array[:1] for name, array in feeds.items()}

    def write_deployable_extras(self, *, out_dir: Path, model: nn.Module, export_result) -> None:
        from edgekd.hf import write_optimum_layout

        write_optimum_layout(out_dir=Path(out_dir) / "hf", encoder=model, tokenizer=self.tokenizer,
                             onnx_path=export_result.onnx, openvino_xml=export_result.openvino_xml,
                             max_length=self.max_length)

    def metric(self, outputs: np.ndarray, teacher_outputs: np.ndarray) -> dict:
        from edgekd.distill.embedding import embedding_agreement

        agreement = embedding_agreement(student_emb=outputs, teacher_emb=teacher_outputs)
        return {"name": "spearman_vs_teacher", "value": float(agreement["spearman"]), **agreement}
