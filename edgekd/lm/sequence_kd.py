"""Sequence-level KD data: the teacher's own continuations of prompts, generated once and cached.

Generation is the expensive part (one teacher forward per new token), so it is cached under a hash of the
teacher's weights, the tokenized prompts and every generation setting, and written in shards of
`batch_size` prompts: an interrupted run keeps its finished shards and generates only the rest. The entry's
`generations.json` (prompts, their ids, the continuations' ids and text, the settings) is written last,
atomically: it is the mark of a complete entry.

Prompts are generated in left-padded batches rather than one at a time: decoding a ~100M-parameter model on
CPU is bound by per-step overhead, so a batch of 4 costs little more per step than 1. Each shard is seeded
from (seed, shard), so a resumed shard is drawn exactly as an uninterrupted run would draw it; batch_size is
part of the key because padding and the shard's random stream can change a sampled (or, by rounding, a
greedy) continuation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig

from edgekd.checkpoint import model_sha256
from edgekd.errors import BadInput
from edgekd.io import write_json

FORMAT = "edgekd.lm.generations/1"
RESULT = "generations.json"
MAX_PROMPTS = 1 << 20
MAX_NEW_TOKENS = 4096


@dataclass
class Generations:
    """The teacher's continuation of every prompt (token ids, cut after the first EOS, which is kept so a
    student learns where the teacher stops) and the settings they were generated with."""

    directory: Path
    prompts: list[str]
    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]
    settings: dict

    def training_sequences(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [m, max_len], loss_mask bool [m, max_len]): prompt + continuation, cut to max_len and
        right-padded; loss_mask marks the continuation tokens, the only ones trained on (a causal model's real
        positions never see the padding after them). Prompts with no continuation token left within max_len
        are dropped."""
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= 1 << 16:
            raise BadInput(f"max_len must be an integer in [2, 65536], got {max_len!r}")
        rows, masks = [], []
        for prompt, continuation in zip(self.prompt_ids, self.continuation_ids):
            ids = (prompt + continuation)[:max_len]
            if len(ids) <= len(prompt):
                continue
            pad = max_len - len(ids)
            rows.append(ids + [self.settings["pad_token_id"]] * pad)
            masks.append([False] * len(prompt) + [True] * (len(ids) - len(prompt)) + [False] * pad)
        if not rows:
            raise BadInput(f"max_len={max_len} leaves no continuation token after any prompt: raise max_len")
        return np.asarray(rows, dtype=np.int64), np.asarray(masks, dtype=bool)


def _checked(prompts, *, max_new_tokens, temperature, top_p, seed, batch_size) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not 1 <= len(prompts) <= MAX_PROMPTS:
        raise BadInput(f"prompts must be a list of 1..{MAX_PROMPTS} strings")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise BadInput(f"prompts[{i}] must be a non-empty string, got {prompt!r:.60}")
    for key, value, high in (("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS), ("batch_size", batch_size, 256),
                             ("seed", seed, 2**32 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not (0 if key == "seed" else 1) <= value <= high:
            raise BadInput(f"{key} must be an integer in [{0 if key == 'seed' else 1}, {high}], got {value!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature <= 100):
        raise BadInput(f"temperature must be a number in (0, 100], got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise BadInput(f"top_p must be a number in (0, 1], got {top_p!r}")


def _generation_config(settings: dict) -> GenerationConfig:
    """Every setting that shapes the output given explicitly, so the model's own generation_config.json
    (a repetition penalty, a top_k of 50) cannot change what the recorded settings say was done."""
    sampling = {"temperature": settings["temperature"], "top_p": settings["top_p"], "top_k": 0, "typical_p": 1.0,
                "min_p": None} if settings["do_sample"] else {}
    return GenerationConfig(max_new_tokens=settings["max_new_tokens"], min_new_tokens=0,
                            do_sample=settings["do_sample"], num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                            pad_token_id=settings["pad_token_id"], eos_token_id=settings["eos_token_id"], **sampling)


def _shard_seed(seed: int, shard: int) -> int:
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


@torch.inference_mode()
def _generate(teacher: nn.Module, prompt_ids: list[list[int]], settings: dict, shard: int) -> list[list[int]]:
    width = max(map(len, prompt_ids))
    pad, eos = settings["pad_token_id"], settings["eos_token_id"]
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_shard_seed(settings["seed"], shard))
        out = teacher.generate(input_ids=input_ids, attention_mask=attention_mask,
                               generation_config=_generation_config(settings))
    continuations = []
    for row in out[:, width:].tolist():
        continuations.append(row[:row.index(eos) + 1] if eos in row else row)
    return continuations


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _token_lists(value, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(ids, list) and all(isinstance(t, int) for t in ids) for ids in value))


def teacher_generations(teacher: nn.Module, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
                        do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                        cache_dir, batch_size: int = 4, resume: bool = True) -> Generations:
    """The teacher's continuations of `prompts` (greedy, or sampled at `temperature` / `top_p`), from the cache
    when complete, else generated with Hugging Face `generate` shard by shard (keeping finished shards when
    `resume`)."""
    _checked(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
             batch_size=batch_size)
    if not hasattr(teacher, "generate"):
        raise BadInput(f"the teacher ({type(teacher).__name__}) has no Hugging Face generate(): sequence-level KD "
                       "needs a transformers causal LM")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise BadInput("the tokenizer has no EOS token: continuations end at it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prompt_ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    limit = getattr(getattr(teacher, "config", None), "max_position_embeddings", None)
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise BadInput(f"prompts[{i}] tokenizes to no tokens")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise BadInput(f"prompts[{i}] is {len(ids)} tokens; with max_new_tokens={max_new_tokens} it passes the "
                           f"teacher's {limit} positions")
    settings = {"format": FORMAT, "teacher_sha256": model_sha256(teacher),
                "prompts_sha256": hashlib.sha256(json.dumps([prompts, prompt_ids]).encode()).hexdigest(),
                "prompts": len(prompts), "max_new_tokens": max_new_tokens, "do_sample": bool(do_sample),
                "temperature": float(temperature), "top_p": float(top_p), "seed": seed, "batch_size": batch_size,
                "eos_token_id": eos, "pad_token_id": pad}
    directory = Path(cache_dir) / hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]

    done = _read_json(directory / RESULT)
    if (done is not None and done.get("settings") == settings and done.get("prompt_ids") == prompt_ids
            and _token_lists(done.get("continuation_ids"), len(prompts))):
        return Generations(directory, list(prompts), prompt_ids, done["continuation_ids"], settings)

    continuations: list[list[int]] = []
    shards = range(0, len(prompts), batch_size)
    was_training = teacher.training
    teacher.eval()  # dropout off: the continuations must be a function of the weights and settings alone
    try:
        for shard, start in enumerate(shards):
            path = directory / f"shard_{shard:05d}.json"
            batch = prompt_ids[start:start + batch_size]
            kept = _read_json(path) if resume else None
            if (kept is not None and kept.get("prompt_ids") == batch
                    and _token_lists(kept.get("continuation_ids"), len(batch))):
                continuations.extend(kept["continuation_ids"])
                continue
            generated = _generate(teacher, batch, settings, shard)
            write_json(path, {"prompt_ids": batch, "continuation_ids": generated})
            continuations.extend(generated)
    finally:
        teacher.train(was_training)
    write_json(directory / RESULT, {
        "settings": settings, "prompts": list(prompts), "prompt_ids": prompt_ids, "continuation_ids": continuations,
        "continuation_text": [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]})
    for shard in range(len(shards)):
        (directory / f"shard_{shard:05d}.json").unlink(missing_ok=True)
    return Generations(directory, list(prompts), prompt_ids, continuations, settings)
