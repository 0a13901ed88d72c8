"""Export a sentence encoder and lay it out the way Hugging Face Optimum loads it.

The exported graph has inputs `input_ids`, `attention_mask` (dynamic batch and sequence length)
and two outputs: `sentence_embedding` (pooled, normalised: what edgekd's parity gate and metric
compare) and `last_hidden_state` (the token embeddings Optimum's feature-extraction models
return). The Optimum folder holds `model.onnx` (ORTModelForFeatureExtraction), the OpenVINO IR as
`openvino_model.xml/.bin` (OVModelForFeatureExtraction), the model's `config.json`, the tokenizer
files, and the sentence-transformers pooling files so the pooling used in training is on record.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from edgekd.errors import BadInput
from edgekd.hf.encoder import SentenceEncoder, pooling_config
from edgekd.hf.text import DEFAULT_MAX_LENGTH, DYNAMIC_DIMS, INPUT_NAMES, encode_batch
from edgekd.io import atomic_path

OUTPUT_NAMES = ("sentence_embedding", "last_hidden_state")
OPENVINO_STEM = "openvino_model"  # the file name OVModelForFeatureExtraction looks for
PARITY_TEXTS = 64


class FeatureExtraction(nn.Module):
    """Export view of a `SentenceEncoder`: (sentence embedding, token embeddings), mask required."""

    def __init__(self, encoder: SentenceEncoder):
        super().__init__()
        self.encoder = encoder
        # A new module starts in training mode; follow the encoder's, or whoever restores the
        # wrapper's mode after use (edgekd.export does) would switch the encoder's dropout on.
        self.train(encoder.training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, sentence = self.encoder.features(input_ids, attention_mask)
        return sentence, tokens


def export_inputs(*, tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> dict:
    """Keyword arguments for `edgekd.export.export` of a `FeatureExtraction` model.

    Example inputs are two short texts; parity inputs are up to 64 held-out texts padded to their
    own (different) longest length, so the gate checks the dynamic sequence axis too.
    """
    texts = [str(t) for t in texts]
    if len(texts) < 2:
        raise BadInput(f"export needs at least 2 held-out texts for example and parity inputs, got {len(texts)}")
    shortest = sorted(texts, key=len)[:2]
    return {
        "example_inputs": encode_batch(tokenizer=tokenizer, texts=shortest, max_length=max_length),
        "parity_inputs": encode_batch(tokenizer=tokenizer, texts=texts[:PARITY_TEXTS], max_length=max_length),
        "input_names": list(INPUT_NAMES),
        "output_names": list(OUTPUT_NAMES),
        "dynamic_dims": {name: dict(dims) for name, dims in DYNAMIC_DIMS.items()},
        "task": "embedding",
    }


def export_encoder(*, model: SentenceEncoder, tokenizer, texts: Sequence[str], out_dir: str | Path,
                   formats: Sequence[str] = ("onnx", "openvino"), name: str = "model",
                   max_length: int = DEFAULT_MAX_LENGTH, gate: bool = True, precision: str = "fp32"):
    """`edgekd.export.export` of `model` (float or fake-quantized) with dynamic batch and sequence length."""
    from edgekd.export import export

    return export(model=FeatureExtraction(model), out_dir=Path(out_dir), formats=formats, name=name, gate=gate,
                  precision=precision, **export_inputs(tokenizer=tokenizer, texts=texts, max_length=max_length))


def _hf_config(encoder: SentenceEncoder) -> dict:
    """The encoder's config as Optimum reads it: the student's own depth and sizes, a plain architecture."""
    config = encoder.config.to_dict()
    config["architectures"] = [type(encoder.encoder).__name__]
    config.pop("_name_or_path", None)  # where the teacher happened to be loaded from
    return config


def write_optimum_layout(*, out_dir: str | Path, encoder: SentenceEncoder, tokenizer, onnx_path: str | Path,
                         openvino_xml: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """A folder `ORTModelForFeatureExtraction` / `OVModelForFeatureExtraction.from_pretrained` load as is.

    Each file is copied in atomically; existing files of the same names are replaced.
    """
    out_dir = Path(out_dir)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BadInput(f"{onnx_path}: no such ONNX file to lay out")
    sources = {"model.onnx": onnx_path}
    if openvino_xml is not None:
        xml = Path(openvino_xml)
        if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
            raise BadInput(f"{xml}: OpenVINO IR needs both the .xml and its .bin")
        sources.update({f"{OPENVINO_STEM}.xml": xml, f"{OPENVINO_STEM}.bin": xml.with_suffix(".bin")})
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        sources.update({path.name: path for path in Path(scratch).iterdir() if path.is_file()})
        for file_name, source in sources.items():
            with atomic_path(out_dir / file_name) as tmp:
                shutil.copyfile(source, tmp)
    texts = {
        "config.json": _hf_config(encoder),
        "modules.json": _modules(encoder),
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "1_Pooling/config.json": pooling_config(encoder),
    }
    for file_name, content in texts.items():
        with atomic_path(out_dir / file_name) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n")
    if encoder.normalize:
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
    return out_dir


def _modules(encoder: SentenceEncoder) -> list[dict]:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    return modules
