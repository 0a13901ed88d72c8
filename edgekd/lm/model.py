"""Causal LM teachers and students: a local Hugging Face folder or a `.gguf` file, loaded as `CausalLM`.

Loading never runs code from the model: `trust_remote_code=False`, folders must hold safetensors
(a pickled `pytorch_model.bin` runs code when loaded), and only the Llama-layout `model_type`s in
`ALLOWED_MODEL_TYPES` are built: the students (edgekd.lm.students) cut and narrow
`model.layers[i].self_attn.{q,k,v,o}_proj` and `.mlp.{gate,up,down}_proj`, which these share.
GPT-2 is left out: its fused `c_attn` Conv1D and learned positions need a student path of their own.
The config is read and bounded before any weight is allocated. Weights come out float32 whatever
the stored precision (a GGUF's Q4_1 blocks are dequantized), because KD, fake quantization and export
all start from it.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from edgekd.errors import NOT_INPUT_ERRORS, BadInput
from edgekd.hf_files import SAFE_LOAD, SAFE_WEIGHTS, require_safetensors

ALLOWED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
# What a config may ask for before anything is built: far above any edge model (Llama-3 405B has
# 126 layers, d 16384, FFN 53248; Qwen's vocabulary is 152k), far below what exhausts the host.
MAX_LAYERS = 256
MAX_HIDDEN = 16384
MAX_INTERMEDIATE = 65536
MAX_VOCAB = 512 * 1024
MAX_GGUF_BYTES = 16 * 1024**3
MAX_PARAMETERS = 4_000_000_000
"""Most parameters a config may ask for: 16 GB as FP32, what KD and export hold in memory, past this host's 24."""


class CausalLM(nn.Module):
    """A Hugging Face causal LM (`.hf`) with the one forward training and the family use: token ids ->
    float32 logits [b, s, vocab], no KV cache. `generate()` and the cache stay on `.hf`."""

    def __init__(self, hf: nn.Module, *, source: str | Path, gguf_file: str | None = None):
        super().__init__()
        self.hf = hf
        self.source = str(source)
        self.gguf_file = gguf_file
        self._tokenizer = None

    @property
    def config(self):
        return self.hf.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()

    def tokenizer(self):
        """The tokenizer saved with the model (for a GGUF: the one inside the file), loaded once."""
        if self._tokenizer is None:
            extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source, **extra, **SAFE_LOAD)
            except NOT_INPUT_ERRORS:
                raise
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise BadInput(f"{self._where()}: cannot load the tokenizer: {_first_line(err)}") from None
        return self._tokenizer

    def describe(self) -> dict:
        """Plain facts for reports and manifests."""
        config = self.config
        return {"source": self.source, "gguf_file": self.gguf_file, "model_type": config.model_type,
                "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                "intermediate_size": config.intermediate_size, "vocab_size": config.vocab_size,
                "params": sum(p.numel() for p in self.parameters())}

    def _where(self) -> str:
        return str(Path(self.source) / self.gguf_file) if self.gguf_file else self.source


def is_causal_lm_source(path: str | Path) -> bool:
    """True for a regular `.gguf` file, or a folder whose config.json names a `*ForCausalLM` architecture."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return path.is_file()
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    try:
        architectures = json.loads(config_file.read_text()).get("architectures")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    return isinstance(architectures, list) and any(isinstance(a, str) and a.endswith("ForCausalLM")
                                                   for a in architectures)


def load_causal_lm(path: str | Path) -> CausalLM:
    """A `CausalLM` from a local HF folder (safetensors) or a `.gguf` file; never the network."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise BadInput(f"{path}: no such GGUF file")
        size = path.stat().st_size
        if size > MAX_GGUF_BYTES:
            raise BadInput(f"{path}: {size / 1024**3:.1f} GB; edgekd loads GGUF files up to "
                           f"{MAX_GGUF_BYTES // 1024**3} GB (they are dequantized to float32)")
        source, extra = path.parent, {"gguf_file": path.name}
    else:
        if not (path / "config.json").is_file():
            raise BadInput(f"{path}: neither a .gguf file nor a folder with config.json")
        _check_model_type(_read_json(path / "config.json").get("model_type"), path / "config.json")
        require_safetensors(path)
        source, extra = path, {}
    where = path / "config.json" if not extra else path
    try:
        config = AutoConfig.from_pretrained(source, **extra, **SAFE_LOAD)
    except NOT_INPUT_ERRORS:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:  # struct: a truncated GGUF header
        raise BadInput(f"{where}: cannot read the model config: {_first_line(err)}") from None
    _check_config(config, where)
    hf_logging.disable_progress_bar()
    try:
        with _quiet_gguf():
            hf = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32, **extra,
                                                      **(SAFE_LOAD if extra else SAFE_WEIGHTS))
    except NOT_INPUT_ERRORS:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error, SafetensorError) as err:
        # RuntimeError: shapes unlike the config; SafetensorError: a truncated or corrupt weights file
        raise BadInput(f"{path}: cannot load the causal LM: {_first_line(err)}") from None
    finally:
        hf_logging.enable_progress_bar()
    if extra:  # the GGUF's blocks are dequantized to float32: nothing of its quantization is left to keep
        hf.hf_quantizer = None
        hf.config.__dict__.pop("quantization_config", None)
    return CausalLM(hf.eval(), source=source.resolve(), gguf_file=extra.get("gguf_file"))


def save_causal_lm(model: CausalLM, out_dir: str | Path) -> Path:
    """`model` as a Hugging Face folder (safetensors, config, generation config, tokenizer) that
    `load_causal_lm(out_dir)` reloads to the same logits."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    try:
        model.hf.save_pretrained(out_dir, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    model.tokenizer().save_pretrained(out_dir)
    return out_dir


def _check_model_type(model_type: object, where: Path) -> None:
    if model_type not in ALLOWED_MODEL_TYPES:
        raise BadInput(f"{where}: model_type {model_type!r} is not supported for causal LMs "
                       f"(supported: {', '.join(ALLOWED_MODEL_TYPES)})")


def _check_config(config, where: Path) -> None:
    """BadInput unless the config is an allowed type with sizes inside the bounds (checked before building)."""
    _check_model_type(config.model_type, where)
    bounds = {"num_hidden_layers": MAX_LAYERS, "hidden_size": MAX_HIDDEN, "intermediate_size": MAX_INTERMEDIATE,
              "vocab_size": MAX_VOCAB, "num_attention_heads": MAX_HIDDEN, "num_key_value_heads": MAX_HIDDEN}
    for key, limit in bounds.items():
        value = getattr(config, key, None)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise BadInput(f"{where}: {key} = {value!r}; edgekd loads causal LMs with {key} in 1..{limit}")
    layers, hidden, ffn = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    parameters = layers * (4 * hidden * hidden + 3 * hidden * ffn) + 2 * config.vocab_size * hidden
    if parameters > MAX_PARAMETERS:  # each size may be in bounds while their product is not
        raise BadInput(f"{where}: about {parameters / 1e9:.1f}B parameters (layers x hidden x intermediate, vocab); "
                       f"edgekd loads causal LMs of at most {MAX_PARAMETERS / 1e9:.0f}B (FP32 in memory)")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % kv_heads:
        raise BadInput(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")


@contextlib.contextmanager
def _quiet_gguf():
    """transformers draws its GGUF dequantization bar with tqdm directly, past `disable_progress_bar`;
    swap in a silent tqdm for the duration of the load."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    loud = getattr(gguf_utils, "tqdm", None)
    if loud is None:
        yield
        return
    gguf_utils.tqdm = partial(loud, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = loud


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"{path}: not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path}: expected a JSON object")
    return value


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]
