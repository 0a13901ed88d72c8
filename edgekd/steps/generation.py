"""The six steps for a family whose models generate text (causal LMs), one function a step, as
`edgekd.pipeline.compress_generative` calls them:

    1. prune      `layers:N` / `prune:R` of the teacher (edgekd.lm.students)
    2. distill    token-level KD on the teacher's cached top-k logits (+ sequence-level KD on its cached
                  generations when the recipe asks), and the same steps on the real text alone (no KD)
    3. quantize   weight-only INT8 (per channel) or INT4 (groups) with KD during fine-tuning; the teacher's
                  weights rounded (PTQ) as the baseline
    4. export     one ONNX decoder graph with a KV cache (+ OpenVINO IR) per variant, gated on greedy tokens
    5. benchmark  held-out perplexity and next-token agreement of every exported variant; time to first token
                  and decode tokens/s on every available target; speculative decoding with the student drafting
    6. report     report.json/.md/.html and manifest.json, the five variants under the usual names

Every stage's result is kept in the run folder (`stages/<name>/`, a Hugging Face folder) and recorded in the
run state, so `--resume` skips what finished; training itself resumes from its checkpoints.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from edgekd._version import __version__
from edgekd.checkpoint import model_sha256
from edgekd.errors import BadInput, GateFailed
from edgekd.host import detect_host
from edgekd.io import write_json
from edgekd.report.schema import DEPLOYABLE, KD_FP32, NO_KD, TEACHER_FP32, TEACHER_INT8, VARIANTS, Report
from edgekd.steps.context import Context
from edgekd.steps.report import checkable_ref
from edgekd.student_spec import parse_student


@dataclass
class LMVariant:
    model: nn.Module  # edgekd.lm.CausalLM, its Linears fake-quantized for the quantized variants
    info: dict = field(default_factory=dict)


@dataclass
class TokenData:
    """The run's text as token windows: train (KD targets cached for it), val (training's own check), test
    (every exported variant scored on it), and prompts cut from the test text for parity and timing."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _train_config(ctx: Context, *, kd: bool, quant: bool = False):
    """LMTrainConfig from the recipe: `distill` (max_steps, batch_size, lr, temperature, alpha, seed) and `lm`
    (top_k, divergence); QAT takes `quant.max_steps` / `quant.lr` and always distills."""
    from edgekd.lm.train import LMTrainConfig

    settings = dict(ctx.recipe.distill)
    allowed = {"max_steps", "batch_size", "lr", "weight_decay", "grad_clip", "temperature", "alpha",
               "seed", "checkpoint_minutes"}
    unknown = sorted(set(settings) - allowed - {"epochs", "patience", "cache_dir"})
    if unknown:
        raise BadInput(f"recipe: distill: key '{unknown[0]}' does not apply to causal LMs (they take "
                       f"{', '.join(sorted(allowed))}; `lm:` holds top_k, divergence, seq_len)")
    for key in ("epochs", "patience", "cache_dir"):  # epoch-based training's; LMs count steps (cache: teacher_topk)
        settings.pop(key, None)
    settings.setdefault("seed", ctx.recipe.seed)
    settings.update(top_k=ctx.recipe.lm.top_k, divergence=ctx.recipe.lm.divergence)
    if quant:
        settings["lr"] = ctx.recipe.quant.lr
        if ctx.recipe.quant.max_steps is not None:
            settings["max_steps"] = ctx.recipe.quant.max_steps
    if not kd:
        settings["alpha"] = 0.0
    config = LMTrainConfig(**settings)
    config.validate()
    return config


# ---- data -------------------------------------------------------------------------------------

def token_data(ctx: Context) -> TokenData:
    """The dataset's texts tokenized by the teacher's tokenizer into `lm.seq_len` windows (train bounded by
    `lm.train_tokens`, test by `lm.eval_windows`)."""
    from edgekd.lm.data import token_windows

    lm = ctx.recipe.lm
    config = ctx.teacher.model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions:  # past its context a teacher's logits are no target, and timing there measures nothing real
        if lm.seq_len > positions:
            raise BadInput(f"recipe: lm.seq_len {lm.seq_len} exceeds the teacher's context "
                           f"(max_position_embeddings {positions})")
        for t in ctx.plan.targets:
            if t.generation.prompt_tokens + t.generation.new_tokens > positions:
                raise BadInput(f"target {t.name}: generation prompt_tokens + new_tokens = "
                               f"{t.generation.prompt_tokens + t.generation.new_tokens} exceeds the teacher's context "
                               f"(max_position_embeddings {positions})")
    tokenizer = ctx.teacher.model.tokenizer()
    eval_tokens = lm.eval_windows * lm.seq_len

    def windows(texts, max_tokens: int, split: str) -> np.ndarray:
        try:
            made = token_windows(tokenizer, list(texts), seq_len=lm.seq_len, max_tokens=max_tokens)
        except BadInput as err:
            raise BadInput(f"--data {ctx.recipe.data} ({split} split): {err}") from None
        if made.size and made.max() >= config.vocab_size:  # a tokenizer with tokens the model has no row for
            raise BadInput(f"--data {ctx.recipe.data} ({split} split): the tokenizer gives id {int(made.max())}, "
                           f"past the teacher's vocabulary of {config.vocab_size}")
        return made

    return TokenData(train=windows(ctx.data.x_train, lm.train_tokens, "train"),
                     val=windows(ctx.data.x_val, eval_tokens, "validation"),
                     test=windows(ctx.data.x_test, eval_tokens, "test"))


def prompts(data: TokenData, *, count: int, length: int) -> list[list[int]]:
    """`count` prompts of `length` tokens from the test windows (whole windows cut, several per window when
    they are short), so parity and timing see held-out text."""
    flat = data.test.reshape(-1)
    if flat.size < length:
        raise BadInput(f"the test split holds {flat.size} tokens, fewer than a {length}-token prompt")
    starts = np.linspace(0, flat.size - length, num=count).astype(int)
    return [flat[s:s + length].tolist() for s in starts]


@contextmanager
def _progress(ctx: Context, title: str):
    """A progress bar for a long loop that reports `(done, total)` (training steps, cached windows)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"      {title}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=ctx.console, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# ---- storage ----------------------------------------------------------------------------------

def _stored(ctx: Context, stage: str, build) -> LMVariant:
    """A variant built once and kept as `stages/<stage>/` (a Hugging Face folder, plus the weight-only
    scheme of a quantized one); --resume reloads it."""
    from edgekd.lm.model import load_causal_lm, save_causal_lm

    folder = ctx.run.out / "stages" / stage.replace("@", "_")
    holder: dict = {}

    def build_and_save() -> dict:
        variant = build()
        holder["v"] = variant
        save_causal_lm(variant.model, folder)  # float weights; the recorded scheme re-rounds them on reload
        return variant.info

    info = ctx.run.value(f"lm:{stage}", build_and_save)
    if "v" in holder:
        return holder["v"]
    if not (folder / "config.json").is_file():
        raise BadInput(f"{ctx.run.path}: cannot resume stage '{stage}': {folder} is gone; run without --resume")
    model = load_causal_lm(folder)
    scheme = info.get("weight_quant")
    if scheme:
        from edgekd.lm.weight_quant import quantize_weights

        quantize_weights(model, bits=scheme["bits"], group_size=scheme.get("group_size") or 128)
    return LMVariant(model.eval(), info)


# ---- 1. prune ---------------------------------------------------------------------------------

def make_student(ctx: Context) -> LMVariant:
    spec = ctx.recipe.student
    if parse_student(spec) is None:
        raise BadInput(f"--student {spec}: a causal LM student is made from the teacher: layers:N[,ffn:F][,heads:H] "
                       "or prune:R (`auto` and given checkpoints are for the other families, for now)")

    def build() -> LMVariant:
        made = ctx.family.make_student(spec, channel_multiple=ctx.plan.channel_multiple, seed=ctx.recipe.seed)
        _check_quantizable(ctx, made.model)
        return LMVariant(made.model, {"prune": made.report})

    return _stored(ctx, "student", build)


def _check_quantizable(ctx: Context, student: nn.Module) -> None:
    """The student's weights fit the recipe's weight grid, checked before hours of distillation: INT4 groups
    must divide every layer's inputs (a width cut rounded to the target's channel multiple may not)."""
    from edgekd.lm.weight_quant import quantize_weights

    quantize_weights(copy.deepcopy(student), bits=ctx.recipe.quant.weight_bits, group_size=ctx.recipe.quant.group_size)


# ---- 2. distill -------------------------------------------------------------------------------

def teacher_topk(ctx: Context, data: TokenData):
    """The teacher's top-k logits over the training windows, cached once for every run on this teacher and
    text (memory-mapped; a second run, or QAT, reads it back without running the teacher)."""
    from edgekd.distill.cache import default_cache_root
    from edgekd.lm.topk_cache import build_topk_cache

    config = _train_config(ctx, kd=True)
    cache_dir = Path(ctx.recipe.distill.get("cache_dir") or default_cache_root()) / "lm_topk"
    with _progress(ctx, f"teacher top-{config.top_k} logits (windows)") as progress:
        return build_topk_cache(ctx.teacher.model, data.train, k=config.top_k, temperature=config.temperature,
                                cache_dir=Path(cache_dir), resume=True, progress=progress)


def teacher_generations(ctx: Context):
    """Sequence-level KD data: the teacher's greedy continuations of `lm.sequence_kd_prompts` training
    prompts (cached by teacher, prompts and settings; generation resumes shard by shard). None when off."""
    lm = ctx.recipe.lm
    if not lm.sequence_kd_prompts:
        return None
    from edgekd.distill.cache import default_cache_root
    from edgekd.lm.sequence_kd import teacher_generations as generate

    tokenizer = ctx.teacher.model.tokenizer()
    texts = [str(t) for t in ctx.data.x_train[:lm.sequence_kd_prompts]]
    cache_dir = Path(ctx.recipe.distill.get("cache_dir") or default_cache_root()) / "lm_generations"
    made = generate(ctx.teacher.model.hf, tokenizer, texts, max_new_tokens=lm.sequence_kd_new_tokens, do_sample=False,
                    seed=ctx.recipe.seed, cache_dir=cache_dir, resume=True)
    vocab = ctx.teacher.model.config.vocab_size
    if any(i < 0 or i >= vocab for ids in made.prompt_ids + made.continuation_ids for i in ids):
        raise BadInput(f"{cache_dir}: a cached generation holds token ids outside the teacher's vocabulary of "
                       f"{vocab}; delete that cache folder to generate again")
    return made


def train_student(ctx: Context, student: LMVariant, data: TokenData, *, kd: bool, topk=None,
                  generations=None) -> LMVariant:
    """The same steps, seed and batches with KD (alpha x top-k KD + (1 - alpha) x next-token CE, plus the
    teacher's generations) or without (next-token CE on the real text): the no-KD baseline."""
    from edgekd.lm.train import train_lm

    stage = KD_FP32 if kd else NO_KD

    def build() -> LMVariant:
        model = copy.deepcopy(student.model)
        config = _train_config(ctx, kd=kd)
        sequences = generations.training_sequences(ctx.recipe.lm.seq_len) if (kd and generations) else None
        with _progress(ctx, f"{stage} (steps)") as progress:
            result = train_lm(model, data.train, config=config, teacher_topk=topk if kd else None,
                              sequences=sequences, out_dir=ctx.run.checkpoint_dir(stage), resume=ctx.resume,
                              progress=progress)
        return LMVariant(result.model, {"history": result.history, "sequence_kd": bool(sequences)})

    return _stored(ctx, stage, build)


# ---- 3. quantize ------------------------------------------------------------------------------

def quantize_student(ctx: Context, kd: LMVariant, data: TokenData, topk) -> LMVariant:
    """Distillation-aware weight quantization: the KD student's Linears fake-quantized (weight-only, the
    recipe's bits), then fine-tuned with the teacher's top-k KD through the straight-through estimator."""
    from edgekd.lm.train import train_lm
    from edgekd.lm.weight_quant import quantize_weights

    def build() -> LMVariant:
        model = copy.deepcopy(kd.model)
        report = quantize_weights(model, bits=ctx.recipe.quant.weight_bits, group_size=ctx.recipe.quant.group_size)
        with _progress(ctx, f"{DEPLOYABLE} (steps)") as progress:
            result = train_lm(model, data.train, config=_train_config(ctx, kd=True, quant=True), teacher_topk=topk,
                              out_dir=ctx.run.checkpoint_dir(DEPLOYABLE), resume=ctx.resume, progress=progress)
        return LMVariant(result.model, {"history": result.history, "weight_quant": report})

    return _stored(ctx, DEPLOYABLE, build)


def quantize_teacher(ctx: Context) -> LMVariant:
    """The baseline a team tries first: the teacher's weights rounded to the same weight-only grid (PTQ)."""
    from edgekd.lm.weight_quant import quantize_weights

    def build() -> LMVariant:
        model = copy.deepcopy(ctx.teacher.model)
        report = quantize_weights(model, bits=ctx.recipe.quant.weight_bits, group_size=ctx.recipe.quant.group_size)
        return LMVariant(model, {"weight_quant": report})

    return _stored(ctx, TEACHER_INT8, build)


# ---- 4. export --------------------------------------------------------------------------------

@dataclass
class LMArtifact:
    variant: str
    files: dict[str, Path]  # format -> file ("onnx": model.onnx, "openvino": openvino/model.xml)
    parity: dict  # format -> generation_parity
    rejected: dict  # format -> why the gate refused it
    model: nn.Module
    info: dict

    def for_runtime(self, runtime: str) -> Path | None:
        return self.files.get("openvino" if runtime == "openvino" else "onnx")


def export_variants(ctx: Context, variants: dict[str, LMVariant], parity_prompts: list[list[int]]) -> dict:
    """Each variant as one decoder graph with a KV cache, ONNX and OpenVINO IR, each format gated: greedy
    tokens of the parity prompts identical to PyTorch's on at least GREEDY_MATCH_MIN of them. The deployable
    failing stops the run (nothing shipped); a baseline loses only the failing format."""
    from edgekd.lm.export import TraceCache, export_lm
    from edgekd.lm.parity import GREEDY_MATCH_MIN, PREFILL_COSINE_MIN, generation_parity

    new_tokens = min(32, max(t.generation.new_tokens for t in ctx.plan.targets))
    # an OpenVINO target runs the IR: made whenever one is in the run, whatever the recipe's formats say
    wanted = [*ctx.recipe.formats, *(["openvino"] * any(t.runtime == "openvino" for t in ctx.plan.targets))]
    formats = tuple(dict.fromkeys(wanted))
    artifacts, traces = {}, TraceCache()  # one trace per architecture: the teacher's pair, the students' three
    for name, variant in variants.items():
        out_dir = ctx.run.out / "variants" / name

        def run_export(variant=variant, out_dir=out_dir, name=name) -> dict:
            result = export_lm(variant.model, out_dir, formats=formats, traces=traces)
            files = {"onnx": result.onnx, "openvino": result.openvino_xml}
            parity, rejected, reference_tokens = {}, {}, {}
            for fmt, path in files.items():
                if path is None:
                    continue
                runtime = "openvino" if fmt == "openvino" else "onnxruntime"
                parity[fmt] = generation_parity(variant.model, path, runtime, parity_prompts, new_tokens=new_tokens,
                                                reference_tokens=reference_tokens)
                found = parity[fmt]
                rejected[fmt] = ([f"greedy_token_match {found['greedy_token_match']:.3f} < {GREEDY_MATCH_MIN}"]
                                 * (found["greedy_token_match"] < GREEDY_MATCH_MIN)
                                 + [f"prefill_logits_cosine {found['prefill_logits_cosine']:.5f} < {PREFILL_COSINE_MIN}"]
                                 * (found["prefill_logits_cosine"] < PREFILL_COSINE_MIN))
            rejected = {fmt: problems for fmt, problems in rejected.items() if problems}
            if rejected and name == DEPLOYABLE:
                raise GateFailed(f"{name}: the export gate refused {', '.join(rejected)} "
                                 f"({'; '.join(p for v in rejected.values() for p in v)}); nothing shipped")
            return {"files": {fmt: str(Path(p).relative_to(ctx.run.out)) for fmt, p in files.items()
                              if p is not None and fmt not in rejected},
                    "parity": parity, "rejected": rejected}

        done = ctx.run.value(f"export:{name}", run_export)
        for fmt, problems in done["rejected"].items():
            ctx.console.print(f"      {name}: {fmt} rejected by the export gate ({'; '.join(problems)})", markup=False)
        files = {fmt: _inside_run(ctx, text) for fmt, text in done["files"].items()}
        artifacts[name] = LMArtifact(name, files, done["parity"], done["rejected"], variant.model, variant.info)
    return artifacts


def _inside_run(ctx: Context, text: str) -> Path:
    root = ctx.run.out.resolve()
    path = (root / text).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise BadInput(f"{ctx.run.path}: cannot resume: it names {text!r}, which is not a file of this run")
    return path


# ---- 5. benchmark -----------------------------------------------------------------------------

def score_variants(ctx: Context, artifacts: dict[str, LMArtifact], data: TokenData) -> dict:
    """Held-out perplexity and next-token top-1 agreement with the FP32 teacher of every variant as its
    exported ONNX file runs it (ONNX Runtime, prefill of each test window): the ablation's metric."""
    from edgekd.lm.metrics import score_logits
    from edgekd.runtimes.decoders import open_decoder

    def logits_of(path: Path):
        """Each test window's logits in turn: one [seq_len, vocab] array held at a time."""
        decoder = open_decoder(path, "onnxruntime")
        return (decoder.forward(window[None].astype(np.int64), decoder.start())[0][0] for window in data.test)

    def score() -> dict:
        teacher_top1 = [lg.argmax(-1) for lg in logits_of(artifacts[TEACHER_FP32].files["onnx"])]
        scores = {}
        for name, artifact in artifacts.items():
            if "onnx" not in artifact.files:
                scores[name] = {"name": "top1_agreement_vs_teacher", "value": None, "perplexity": None}
                continue
            figures = score_logits(logits_of(artifact.files["onnx"]), data.test, teacher_top1)
            scores[name] = {"name": "top1_agreement_vs_teacher", "value": figures["top1_agreement"],
                            "perplexity": figures["perplexity"], "tokens": figures["tokens"]}
        return scores

    return ctx.run.value("lm:scores", score)


def benchmark_targets(ctx: Context, artifacts: dict[str, LMArtifact], data: TokenData, scores: dict) -> dict:
    """Every variant's generation timed on every available target (time to first token, decode tokens/s),
    the SLO verdict of what the target deploys, and speculative decoding there with the deployed student
    drafting for the FP32 teacher."""
    from edgekd.bench.generation import bench_generation_interleaved
    from edgekd.bench.memory import MemoryProbeFailed, measure_peak_memory
    from edgekd.bench.slo import check_slo
    from edgekd.runtimes.sessions import SessionConfig
    from edgekd.lm.generate import greedy_decode
    from edgekd.lm.metrics import generation_audit
    from edgekd.lm.speculative import measure_speculative
    from edgekd.runtimes.decoders import open_decoder, weight_precision

    from edgekd.targets import availability

    entries, timings, speculative = [], {}, {}
    for target in ctx.plan.targets:
        reason = availability(target)[1] if target not in ctx.plan.available else (
            None if target.device == "cpu" else f"causal LMs are timed on CPU runtimes only (this is a {target.device})")
        if reason:
            entries.append({"name": target.name, "available": False, "reason": reason, "estimated": False,
                            "slo": check_slo(slo=target.slo, figures={}, unavailable_reason=reason).to_dict()})
            continue
        gen = target.generation
        timed_prompts = prompts(data, count=3, length=gen.prompt_tokens)

        def measure(target=target, gen=gen, timed_prompts=timed_prompts) -> dict:
            decoders = {name: open_decoder(path, target.runtime, threads=target.threads)
                        for name, path in ((name, a.for_runtime(target.runtime)) for name, a in artifacts.items())
                        if path is not None}
            rows = {name: figures.as_dict() for name, figures in bench_generation_interleaved(
                decoders, timed_prompts, new_tokens=gen.new_tokens).items()}
            del decoders
            deployed = artifacts[DEPLOYABLE].for_runtime(target.runtime)  # the gate let it through, or the run stopped
            teacher = artifacts[TEACHER_FP32].for_runtime(target.runtime)
            spec = None if teacher is None else measure_speculative(
                open_decoder(deployed, target.runtime, threads=target.threads),
                open_decoder(teacher, target.runtime, threads=target.threads), timed_prompts,
                k=ctx.recipe.lm.speculative_k, new_tokens=gen.new_tokens, draft_name=DEPLOYABLE)
            eos = ctx.teacher.model.config.eos_token_id
            audit = {name: generation_audit([greedy_decode(decoder, p, gen.new_tokens, eos_token_id=eos)
                                             for p in timed_prompts])
                     for name, decoder in ((name, open_decoder(path, target.runtime, threads=target.threads))
                                           for name, path in ((TEACHER_FP32, teacher), (DEPLOYABLE, deployed))
                                           if path is not None)}
            probe = open_decoder(deployed, target.runtime, threads=target.threads)
            try:
                peak = measure_peak_memory(config=SessionConfig(model=str(deployed), runtime=target.runtime,
                                                                device=target.runtime_device, threads=target.threads),
                                           feeds=probe.feeds(np.asarray([timed_prompts[0]]), probe.start())).model_mb
            except MemoryProbeFailed as err:
                ctx.console.print(f"      {target.name}: peak memory not measured: {err}", markup=False)
                peak = None
            return {"generation": rows, "speculative": spec, "audit": audit, "peak_memory_mb": peak,
                    "weights": weight_precision(deployed, target.runtime)}

        done = ctx.run.value(f"bench:{target.name}", measure)
        timings[target.name] = done["generation"]
        speculative[target.name] = done["speculative"]
        figures = done["generation"][DEPLOYABLE]
        size_mb = artifacts[DEPLOYABLE].for_runtime(target.runtime)
        device = {"ttft_ms_p95": figures["ttft_ms"]["p95"],
                  "decode_tokens_per_s_min": figures["decode_tokens_per_s"],
                  "latency_p50_ms": 1000 / figures["decode_tokens_per_s"] if figures["decode_tokens_per_s"] else None,
                  "peak_memory_mb": done.get("peak_memory_mb"),  # the deployable loaded and prefilling, as bench does
                  "model_size_mb": _size_mb(size_mb)}
        teacher_rate = done["generation"].get(TEACHER_FP32, {}).get("decode_tokens_per_s")
        speedup = figures["decode_tokens_per_s"] / teacher_rate if teacher_rate else None
        verdict = check_slo(slo=target.slo, figures=device, speedup=speedup,
                            metric_retention=scores[DEPLOYABLE]["value"])
        entries.append({"name": target.name, "available": True, "reason": None, "estimated": False,
                        "variant": DEPLOYABLE, "generation": figures, "model_size_mb": device["model_size_mb"],
                        "peak_memory_mb": device["peak_memory_mb"], "decode_speedup_vs_teacher": speedup,
                        "weights_in_runtime": done["weights"], "generation_audit": done.get("audit"),
                        "slo": verdict.to_dict()})
    return {"targets": entries, "timings": timings, "speculative": speculative}


def _size_mb(path: Path | None) -> float | None:
    """The artifact's bytes on disk: the ONNX file and its external data, or the IR's .xml + .bin."""
    if path is None:
        return None
    files = [p for p in Path(path).parent.iterdir() if p.is_file() and p.suffix in (".onnx", ".data", ".xml", ".bin")
             and p.stem.startswith(Path(path).stem)]
    return round(sum(p.stat().st_size for p in files) / 2**20, 3)


# ---- 6. report --------------------------------------------------------------------------------

def write_report(ctx: Context, artifacts: dict[str, LMArtifact], scores: dict, measured: dict, *,
                 started: float) -> dict:
    """report.json (the five variants, generation per target, speculative decoding, the audit), report.md /
    .html, manifest.json; the run root gets a copy of the deployed student's files first."""
    from edgekd.report import build_manifest, render_report, write_manifest
    from edgekd.steps.export import copy_to_root

    out = ctx.run.out
    copy_to_root(ctx, DEPLOYABLE)  # what every target deploys: the weight-quantized student
    first = next((t["name"] for t in measured["targets"] if t["available"]), None)

    def row(name: str) -> dict:
        artifact = artifacts[name]
        rates = {t: figures.get(name, {}).get("decode_tokens_per_s") for t, figures in measured["timings"].items()}
        return {"variant": name, "metric": scores[name],
                "params": sum(p.numel() for p in artifact.model.parameters()),
                "size_mb": _size_mb(artifact.files.get("onnx")),
                "precision": (f"weight-int{artifact.info['weight_quant']['bits']}" if artifact.info.get("weight_quant")
                              else "fp32"),
                "artifact": str(artifact.files["onnx"].relative_to(out.resolve())) if "onnx" in artifact.files else None,
                "latency_p50_ms": {t: (1000 / r if r else None) for t, r in rates.items()},  # per decoded token
                "decode_tokens_per_s": rates,
                "ttft_ms_p95": {t: figures.get(name, {}).get("ttft_ms", {}).get("p95")
                                for t, figures in measured["timings"].items()},
                **({"rejected_formats": artifact.rejected} if artifact.rejected else {})}

    teacher_ppl = scores[TEACHER_FP32].get("perplexity")
    report = Report.model_validate({
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "causal-lm",
        "run": {"teacher": ctx.recipe.teacher, "student": ctx.recipe.student, "data": ctx.recipe.data,
                "targets": [t.name for t in ctx.plan.targets], "wall_time_s": round(time.time() - started, 1)},
        "ablation": [row(name) for name in VARIANTS],
        "deployed": DEPLOYABLE,
        "targets": measured["targets"],
        "parity": artifacts[DEPLOYABLE].parity,
        "retention": scores[DEPLOYABLE]["value"],
        "speedup_vs_teacher": {t["name"]: t["decode_speedup_vs_teacher"] for t in measured["targets"]
                               if t.get("decode_speedup_vs_teacher")},
        "speculative": measured["speculative"].get(first) if first else None,
        "speculative_by_target": measured["speculative"],
        # greedy outputs of the prompts timed on the first measured target: loops and empty answers
        "generation_audit": next((t["generation_audit"] for t in measured["targets"] if t["available"]), None),
        "training": {name: artifact.info["history"] for name, artifact in artifacts.items()
                     if artifact.info.get("history")},
        "quantization": artifacts[DEPLOYABLE].info.get("weight_quant"),
        "prune": ctx.run.stages.get("lm:student", {}).get("info", {}).get("prune"),
        "notes": [
            "metric: next-token top-1 agreement with the FP32 teacher on held-out windows (the teacher's own is "
            "1 by definition), with perplexity beside it; retention is the deployed student's agreement",
            f"teacher perplexity {teacher_ppl:.2f} on the held-out windows" if teacher_ppl else "",
            "latency_p50_ms of a causal LM is milliseconds per decoded token (1000 / decode tokens/s)",
            f"training ran {_train_config(ctx, kd=True).max_steps} steps with and without KD and "
            f"{_train_config(ctx, kd=True, quant=True).max_steps} quantization-aware steps (distill.max_steps, "
            "quant.max_steps); epochs and patience do not apply to causal LMs",
        ],
        "host": detect_host().as_dict(),
    }).model_dump(mode="json")
    report["notes"] = [n for n in report["notes"] if n]
    write_json(out / "report.json", report)
    manifest = build_manifest(
        run_dir=out, teacher={"ref": checkable_ref(ctx.recipe.teacher), "sha256": model_sha256(ctx.teacher.model)},
        data={"name": ctx.data.name, "ref": checkable_ref(ctx.recipe.data), "sha256": ctx.data.sha256,
              "provenance": ctx.data.provenance},
        recipe=ctx.recipe.model_dump(), hyperparameters={"distill": ctx.recipe.distill,
                                                         "lm": ctx.recipe.lm.model_dump(),
                                                         "quant": ctx.recipe.quant.model_dump()},
        seed=ctx.recipe.seed)
    write_manifest(run_dir=out, manifest=manifest)
    render_report(run_dir=out)
    return report
