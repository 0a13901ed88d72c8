"""Sentence encoders from local Hugging Face model directories.

A sentence-transformers model is a transformer plus the modules listed in `modules.json`:
a pooling step (`1_Pooling/config.json`: mean, CLS, max, ...) and optionally L2 normalisation.
`SentenceEncoder` folds them into one `nn.Module` with `forward(input_ids, attention_mask) ->
[B, D]`, so distillation, quantization and export see one model whose output is the embedding
users actually consume. The Hugging Face model stays under the attribute `encoder`, keeping its
module names for feature hooks (BERT-style models):

    encoder.embeddings                          token + position embeddings, [B, S, D]
    encoder.encoder.layer.{i}                   transformer block i, output hidden states [B, S, D]
    encoder.encoder.layer.{i}.attention.self    self-attention; output (context, probabilities [B, H, S, S])
    encoder.encoder.layer.{i}.intermediate.dense, .output.dense, .attention.self.query/key/value,
    .attention.output.dense                     the Linear layers (QAT, pruning)

Attention probabilities are only materialised with the eager attention implementation, the
default here, because attention-distribution KD needs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.checkpoint import LoadedModel
from edgekd.errors import BadInput
from edgekd.hf_files import SAFE_LOAD, SAFE_WEIGHTS, require_safetensors
from edgekd.models import ModelRef

SUPPORTED_MODULES = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Normalize": "normalize",
}
# sentence-transformers concatenates pooled vectors in this order when several modes are on.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class SentenceLayout:
    """Where the parts of a sentence-transformers model live and how they are configured."""

    transformer_dir: Path
    pooling_modes: tuple[str, ...]
    normalize: bool
    max_seq_length: int | None


class Pooling(nn.Module):
    """Token embeddings -> one vector per text, exactly as sentence-transformers' Pooling does."""

    def __init__(self, modes: tuple[str, ...] = ("mean",)):
        super().__init__()
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise BadInput(f"pooling modes {list(modes)}: expected one or more of {', '.join(POOLING_MODES)}")
        self.modes = tuple(m for m in POOLING_MODES if m in modes)

    def forward(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        counts = mask.sum(1).clamp(min=1e-9)
        pooled = []
        for mode in self.modes:
            if mode == "cls":
                pooled.append(token_embeddings[:, 0])
            elif mode == "max":
                pooled.append(token_embeddings.masked_fill(mask == 0, -1e9).max(1).values)
            elif mode == "mean":
                pooled.append((token_embeddings * mask).sum(1) / counts)
            elif mode == "mean_sqrt_len":
                pooled.append((token_embeddings * mask).sum(1) / counts.sqrt())
            elif mode == "weightedmean":
                positions = torch.arange(1, token_embeddings.shape[1] + 1, device=mask.device, dtype=mask.dtype)
                weights = mask * positions.view(1, -1, 1)
                pooled.append((token_embeddings * weights).sum(1) / weights.sum(1).clamp(min=1e-9))
            else:  # lasttoken: the last non-padding token (right padding)
                last = attention_mask.sum(1).long().clamp(min=1) - 1
                pooled.append(token_embeddings[torch.arange(token_embeddings.shape[0]), last])
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder + sentence pooling (+ L2 normalisation): texts' token ids -> embeddings."""

    def __init__(self, encoder: nn.Module, *, pooling: Pooling, normalize: bool, source_dir: str | Path,
                 pad_token_id: int | None = None, max_seq_length: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.source_dir = str(source_dir)
        self.pad_token_id = encoder.config.pad_token_id if pad_token_id is None else pad_token_id
        self.max_seq_length = max_seq_length

    def attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The mask implied by right padding: encoder tokenizers never emit the pad token inside a text."""
        if self.pad_token_id is None:
            raise BadInput(f"{self.source_dir}: the model config has no pad_token_id; pass attention_mask explicitly")
        return (input_ids != self.pad_token_id).long()

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings [B, S, D], sentence embedding [B, D']): what Optimum's feature extraction reads."""
        if attention_mask is None:
            attention_mask = self.attention_mask(input_ids)
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        sentence = self.pooling(tokens, attention_mask)
        if self.normalize:
            sentence = F.normalize(sentence, p=2, dim=-1)
        return tokens, sentence

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings [B, D']; the mask may be left out (it follows from the padding), so a
        training loop that calls `model(batch)` with one tensor works."""
        return self.features(input_ids, attention_mask)[1]

    @property
    def config(self):
        """The Hugging Face config of the wrapped transformer (layer count, sizes)."""
        return self.encoder.config

    def describe(self) -> dict:
        """Plain facts for reports and manifests."""
        return {"source_dir": self.source_dir, "model_type": self.config.model_type,
                "num_layers": self.config.num_hidden_layers, "hidden_size": self.config.hidden_size,
                "pooling": list(self.pooling.modes), "normalize": self.normalize,
                "attn_implementation": self.config._attn_implementation, "max_seq_length": self.max_seq_length}


def is_hf_model_dir(path: str | Path) -> bool:
    """True for a directory holding a Hugging Face model (directly or as a sentence-transformers layout)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "modules.json").is_file():
        return True
    return (path / "config.json").is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"{path}: not readable JSON: {err}") from None


def read_layout(model_dir: str | Path) -> SentenceLayout:
    """Parse modules.json and its pooling/normalize entries; a plain HF directory gets mean pooling."""
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return SentenceLayout(model_dir, ("mean",), False, _max_seq_length(model_dir))
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise BadInput(f"{modules_file}: expected a list of {{'type': ..., 'path': ...}} entries")
    kinds = {}
    for entry in modules:
        kind = SUPPORTED_MODULES.get(entry["type"])
        if kind is None:
            raise BadInput(f"{modules_file}: module type '{entry['type']}' is not supported "
                           f"(supported: {', '.join(SUPPORTED_MODULES)})")
        kinds[kind] = model_dir / entry.get("path", "")
    if "transformer" not in kinds:
        raise BadInput(f"{modules_file}: no sentence_transformers.models.Transformer entry")
    modes: tuple[str, ...] = ("mean",)
    if "pooling" in kinds:
        pooling_file = kinds["pooling"] / "config.json"
        if not pooling_file.is_file():
            raise BadInput(f"{pooling_file}: missing (modules.json lists a Pooling module there)")
        config = _read_json(pooling_file)
        if not isinstance(config, dict):
            raise BadInput(f"{pooling_file}: expected a JSON object")
        modes = tuple(mode for mode, key in _POOLING_KEYS.items() if config.get(key))
        if not modes:
            raise BadInput(f"{pooling_file}: no supported pooling mode switched on ({', '.join(_POOLING_KEYS.values())})")
    transformer_dir = kinds["transformer"]
    return SentenceLayout(transformer_dir, modes, "normalize" in kinds, _max_seq_length(transformer_dir))


def _max_seq_length(transformer_dir: Path) -> int | None:
    config_file = transformer_dir / "sentence_bert_config.json"
    if not config_file.is_file():
        return None
    value = _read_json(config_file)
    length = value.get("max_seq_length") if isinstance(value, dict) else None
    return int(length) if isinstance(length, int) and length > 0 else None


def load_hf_encoder(model_dir: str | Path, *, attn_implementation: str = "eager") -> nn.Module:
    """The bare Hugging Face `AutoModel` from a local directory, never touching the network."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"{model_dir}: no config.json; not a Hugging Face model directory")
    require_safetensors(model_dir)
    hf_logging.disable_progress_bar()
    try:
        # float32 whatever the stored precision: training, fake quantization and export all start from it
        model = AutoModel.from_pretrained(model_dir, attn_implementation=attn_implementation, dtype=torch.float32,
                                          **SAFE_WEIGHTS)
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # RuntimeError: weights that do not fit config.json
        raise BadInput(f"{model_dir}: cannot load the Hugging Face model: {str(err).splitlines()[0][:200]}") from None
    finally:
        hf_logging.enable_progress_bar()
    if getattr(model, "pooler", None) is not None:
        # The sentence pooling replaces BERT's CLS pooler; dropping it keeps an unused dense layer
        # out of training, quantization and the exported graph.
        model.pooler = None
    return model.eval()


def load_sentence_encoder(*, path: str | Path, attn_implementation: str = "eager") -> SentenceEncoder:
    """A `SentenceEncoder` from a local HF / sentence-transformers directory (pooling settings honoured)."""
    path = Path(path)
    if not is_hf_model_dir(path):
        raise BadInput(f"{path}: not a Hugging Face model directory (needs config.json and weights, or modules.json)")
    layout = read_layout(path)
    encoder = load_hf_encoder(layout.transformer_dir, attn_implementation=attn_implementation)
    return SentenceEncoder(encoder, pooling=Pooling(layout.pooling_modes), normalize=layout.normalize,
                           source_dir=path.resolve(), pad_token_id=_tokenizer_pad_id(layout.transformer_dir),
                           max_seq_length=layout.max_seq_length).eval()


def _tokenizer_pad_id(transformer_dir: Path) -> int | None:
    """The pad id the tokenizer writes (authoritative for masks), when a tokenizer is saved there."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(transformer_dir, **SAFE_LOAD).pad_token_id
    except (OSError, ValueError, KeyError):
        return None


def pooling_config(encoder: SentenceEncoder) -> dict:
    """`1_Pooling/config.json` contents for `encoder`, as sentence-transformers writes it."""
    config = {"word_embedding_dimension": int(encoder.config.hidden_size)}
    config.update({key: mode in encoder.pooling.modes for mode, key in _POOLING_KEYS.items()})
    return config


def sentence_encoder(*, path: str, attn_implementation: str = "eager") -> SentenceEncoder:
    """Checkpoint factory (`edgekd.hf:sentence_encoder`, kwargs {"path": ...}): the teacher as loaded;
    a checkpoint's transforms (layer cut, pruning, fake quantization) are replayed on top of it."""
    return load_sentence_encoder(path=path, attn_implementation=attn_implementation)


def model_ref(encoder: SentenceEncoder) -> ModelRef:
    """The `ModelRef` for `save_checkpoint` of `encoder` or of any student derived from its directory."""
    return ModelRef("edgekd.hf:sentence_encoder", {"path": encoder.source_dir})


def load_model_dir(path: Path) -> LoadedModel | None:
    """`edgekd.checkpoint.load_model(dir)` for HF / sentence-transformers directories (None for others),
    so `edgekd compress --teacher DIR` works; the ref rebuilds the teacher when a student reloads."""
    if not is_hf_model_dir(path):
        return None
    encoder = load_sentence_encoder(path=path)
    return LoadedModel(encoder, model_ref(encoder), [], {"hf": encoder.describe()})
