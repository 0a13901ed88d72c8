"""The README's benchmark figures, generated from benchmarks/results/*.json.

A figure typed into the README drifts from the run it came from; so each block of figures sits
between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in README.md and is rewritten whole
from the results files. Every figure keeps its statistic (a median with its spread; a best case
only where it says so) and every row says how it was produced: the script, whether its models were
trained by it or given to it, and the host the JSON records ("host not recorded" where it does not).

    .venv/bin/python benchmarks/readme_tables.py            # rewrite the blocks in README.md
    .venv/bin/python benchmarks/readme_tables.py --check    # exit 1 where README.md and the JSON disagree

tests/test_readme_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "benchmarks"))

RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
MINILM_LABELS = {"teacher-fp32": "teacher FP32", "teacher-ort-dynamic-int8": "ORT `quantize_dynamic` teacher",
                 "student-kd-fp32": "student KD FP32", "student-kd-qat-int8": "student QAT+KD INT8"}
GIVEN_FLAGS = {"kd-fp32": "--student-checkpoint", "kd-qat-int8": "--qat-checkpoint"}  # benchmarks/hf_minilm.py
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def load(name: str, results: Path = RESULTS) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def host(payload: dict) -> str:
    """The host line a results file records; a bare architecture names no ISA, so it does not count."""
    recorded = payload.get("host")
    if recorded and "[" in recorded:
        return recorded
    return f"host not recorded (the JSON says only {recorded!r})" if recorded else "host not recorded"


def _ms(value: float) -> str:
    return f"{value:#.3g}".rstrip(".")  # three significant digits, trailing zeros kept


def _spread(values) -> str:
    return f"{_ms(min(values))}-{_ms(max(values))}"


def _wrap(text: str) -> str:
    """Prose wrapped like the README's hand-written lines (list items indented under their dash)."""
    return textwrap.fill(text, width=100, subsequent_indent="  " if text.startswith("- ") else "",
                         break_long_words=False, break_on_hyphens=False)


def _how(command: str, trained: str, payload: dict) -> str:
    return f"`{command}`; {trained}; {host(payload)}"


# ---- the Benchmarks table -------------------------------------------------------------------------

def distill_row(d: dict) -> list[str]:
    s, t = d["summary"], d["timing"]
    med, samples = t["step_ms_median"], t["samples_ms"]
    step = {name: f"{_ms(med[name])} ms ({_spread(samples[name])})" for name in med}
    result = (f"test accuracy, mean ± std over {s['kd']['n']} seeds: KD student **{s['kd']['mean']:.3f} ± "
              f"{s['kd']['std']:.3f}** vs CE on the labeled {d['labeled_fraction']:.0%} **{s['ce']['mean']:.3f} ± "
              f"{s['ce']['std']:.3f}** ({s['ce-labeled-only']['mean']:.3f} ± {s['ce-labeled-only']['std']:.3f} CE on "
              f"the labeled subset alone); training step, median over {len(samples['ce'])} epochs (range): "
              f"cached-teacher KD {step['kd-cached']} = **{t['median_ratio_cached_vs_ce']:.2f}x** a plain CE step "
              f"{step['ce']}, live teacher {step['kd-live']} = {med['kd-live'] / med['ce']:.2f}x; best case "
              f"(fastest epochs): {t['ratio_cached_vs_ce']:.2f}x and {t['ratio_live_vs_ce']:.2f}x")
    what = f"KD with {d['labeled_fraction']:.0%} labels + {1 - d['labeled_fraction']:.0%} unlabeled (digits, " \
           f"{len(d['seeds'])} seeds)"
    return [what, result, _how("python benchmarks/distill_digits_unlabeled.py", "teacher and students trained by "
                                                                                  "the script", d)]


def prune_row(d: dict) -> list[str]:
    parts, rounding = [], []
    for r in d["results"]:
        m, lat = r["main"], r["main"]["ort_latency_ms"]
        name = {"resnet": "ResNet", "mobilenet": "MobileNet (depthwise, SE, concat)"}.get(r["family"], r["family"])
        acc = m["accuracy"]
        parts.append(f"{name}, width {r['kwargs']['width']}: params **{m['params']['ratio']:.2f}x** "
                     f"({m['params']['teacher']:,} -> {m['params']['pruned']:,}), test accuracy "
                     f"{acc['pruned_after_kd_recovery']:.3f} vs teacher {acc['teacher']:.3f}, ORT p50 "
                     f"{_ms(lat['teacher']['p50'])} -> {_ms(lat['pruned']['p50'])} ms "
                     f"(p90 {_ms(lat['teacher']['p90'])} -> {_ms(lat['pruned']['p90'])})")
        by_multiple = {v["channel_multiple"]: v["ort_latency_ms"]["p50"] for v in r["rounding_global"]}
        rounding.append(f"{_ms(by_multiple[m['channel_multiple']])} vs {_ms(by_multiple[1])} ms ({name.split()[0]})")
    first = d["results"][0]["main"]
    result = ("; ".join(parts) + f"; same ratio without recovery, channel_multiple {first['channel_multiple']} vs "
              f"unrounded: ORT p50 {', '.join(rounding)}. p50 (p90) of {first['ort_latency_ms']['teacher']['runs']} "
              f"timed runs, batch 1, {d['ort_threads']} ORT thread")
    what = f"Pruning {first['ratio']:.0%} of channels + KD recovery ({d['data']})"
    return [what, result, _how("python benchmarks/prune_cnn.py", "teachers and students trained by the script", d)]


def kept_calibrated_start(entry: dict) -> tuple[bool, bool]:
    """(QAT returned its calibrated start, inferred): runs before `qat_kept_calibrated_start` existed
    show it only as QAT and PTQ artifacts agreeing with PyTorch identically, to the last digit."""
    flag = entry.get("qat_kept_calibrated_start")
    if flag is not None:
        return flag, False
    return entry["qat_parity"] == entry["ptq_parity"], True


def quant_row(d: dict) -> list[str]:
    s, targets = d["settings"], d["targets"].values()
    runtimes = {RUNTIME_LABELS[e["layer_choice"]["runtime"]]: e for e in targets}
    accuracy = "; ".join(f"{rt}: FP32 {e['fp32_accuracy']:.4f}, PTQ {e['ptq_accuracy']:.4f}, QAT+KD "
                         f"{e['qat_accuracy']:.4f}" for rt, e in runtimes.items())
    kept = {rt: kept_calibrated_start(e) for rt, e in runtimes.items()}
    kept_on = [rt for rt, (k, _) in kept.items() if k]
    trained_on = [rt for rt in kept if rt not in kept_on]
    start = []
    if kept_on:
        inferred = any(inf for _, inf in kept.values())
        start.append(f"QAT+KD returned its calibrated start, the PTQ model, on {' and '.join(kept_on)}"
                     + (" (not flagged by this run, which predates `qat_kept_calibrated_start`: its QAT and PTQ "
                        "parity figures are identical to the last digit)" if inferred else "")
                     + ": QAT >= PTQ holds trivially there, and the INT8 timing there is the PTQ model's")
    if trained_on:
        start.append(f"QAT+KD beat its calibrated (PTQ) start on validation on {' and '.join(trained_on)}")
    start = "; ".join(start)
    speed = ", ".join(f"**{e['speedup']:.2f}x** on {rt} ({_ms(e['fp32_p50_ms'])} -> {_ms(e['int8_p50_ms'])} ms)"
                      for rt, e in runtimes.items() if "speedup" in e)
    kernels = "; ".join(
        f"{rt}: " + " + ".join(f"{op} {n}" for op, n in e["qat_int8_kernels"]["kernels"].items())
        + f" of {e['qat_int8_kernels']['expected']} quantized layers"
        + (f" ({', '.join(e['layer_choice']['float_layers'])} kept float by the latency choice)"
           if e["layer_choice"]["float_layers"] else "")
        for rt, e in runtimes.items())
    result = (f"test accuracy, {accuracy}. {start}. INT8/FP32 p50, best case (the lowest p50 of "
              f"{s['rounds']} interleaved rounds): {speed}; integer kernels: {kernels}")
    quick = " --quick" if d["quick"] else ""
    what = f"QAT+KD vs PTQ vs FP32 (ResNet w{s['width']}, {d['data']['name']}{', `--quick`' if quick else ''})"
    return [what, result, _how(f"python benchmarks/quant_cnn_digits32.py{quick}",
                               f"trained by the script ({s['fp32_epochs']} FP32 + {s['qat_epochs']} QAT epochs)", d)]


def given_students(d: dict) -> tuple[str, str]:
    """(the command that reproduces the run, how its students were made), from hf_minilm.json's stages."""
    stages = d["stages"]
    flags = "".join(f" {GIVEN_FLAGS[name]} …" for name, stage in stages.items() if stage.get("trained") == "given")
    given = [f"{name}: \"{stage['meta']['trained']}\"" for name, stage in stages.items()
             if stage.get("trained") == "given"]
    made = (f"students **given** (`trained: \"given\"`), trained once outside the script ({'; '.join(given)})"
            if given else "students trained by the script")
    return f"python benchmarks/hf_minilm.py{flags}", made


def minilm_row(d: dict) -> list[str]:
    rows = {(r["variant"], r["runtime"]): r for r in d["rows"]}
    ort = [r for r in d["rows"] if r["runtime"] == "onnxruntime"]
    cells = []
    for r in ort:
        figure = f"{MINILM_LABELS[r['variant']]} {_ms(r['p50_ms'])} ms ({_spread(r['latency_p50_ms'])})"
        if r["variant"] != "teacher-fp32":
            figure += f", Spearman {r['spearman']:.3f}"
        if r["variant"] == "student-kd-qat-int8":
            figure = (f"**{figure}, {r['speedup_vs_teacher_fp32']:.2f}x the teacher's speed** (below the "
                      f"{d['verdict']['spearman_bar']} goal, see Limits)")
        cells.append(figure)
    others = [f"{MINILM_LABELS[v]} {_ms(r['p50_ms'])} ms ({_spread(r['latency_p50_ms'])}), "
              f"{r['speedup_vs_teacher_fp32']:.2f}x the ONNX Runtime teacher" for (v, rt), r in rows.items()
              if rt != "onnxruntime"]
    result = (f"ONNX Runtime p50, median of {d['latency_rounds']} interleaved rounds (range), and Spearman vs the "
              f"teacher on {d['data']['eval']} held-out fortunes: " + "; ".join(cells)
              + (f". OpenVINO: {'; '.join(others)}" if others else ""))
    what = (f"all-MiniLM-L6-v2 -> {d['student']['layers']}-layer INT8 student (fortunes, seq {d['sequence_length']}, "
            f"batch {d['batch_size']}, {d['runtime_threads']} thread)")
    command, made = given_students(d)
    return [what, result, _how(command, made, d)]


def fidelity_row(d: dict) -> list[str]:
    rounds = d["rounds"]
    result = (f"{d['model'].removeprefix('built: ')}, {d['precision'].upper()} IR: edgekd p50 "
              f"{_ms(d['edgekd_p50_ms'])} ms vs benchmark_app {_ms(d['benchmark_app_p50_ms'])} ms, medians of "
              f"{len(rounds)} interleaved rounds (per-round p50 {_spread([r['edgekd']['p50_ms'] for r in rounds])} vs "
              f"{_spread([r['benchmark_app']['p50_ms'] for r in rounds])} ms): ratio **{d['ratio']:.3f}**, "
              f"{'within' if d['within_tolerance'] else 'OUTSIDE'} the {d['tolerance']:.0%} tolerance (per-round "
              f"ratios {_spread([r['ratio'] for r in rounds])}, median {d['median_round_ratio']:.3f})")
    return ["harness fidelity: `edgekd bench` p50 vs OpenVINO `benchmark_app -hint latency -api sync`", result,
            _how("python benchmarks/bench_vs_benchmark_app.py", "no training (a built model, timed)", d)]


ROWS = {"distill_digits_unlabeled": distill_row, "prune_cnn": prune_row, "quant_cnn_digits32": quant_row,
        "hf_minilm": minilm_row, "bench_vs_benchmark_app": fidelity_row}


def benchmarks_block(results: Path = RESULTS) -> str:
    lines = ["| what | result | how it was produced: command; models; host |", "|---|---|---|"]
    hosts: dict[str, list[str]] = {}
    for name, row in ROWS.items():
        payload = load(name, results)
        lines.append("| " + " | ".join(row(payload)) + " |")
        hosts.setdefault(host(payload), []).append(f"`{name}.json`")
    lines += ["", "Hosts the results files record: " + "; ".join(f"{h}: {', '.join(files)}"
                                                                   for h, files in hosts.items()) + "."]
    return "\n".join(lines)


# ---- against the peers ------------------------------------------------------------------------------

def _runtime_clause(workload: dict, runtime: str) -> str:
    """What the table's own rule says on one runtime: rows dominated and not, and whether edgekd's deployable
    (its INT8 student, or the FP32 one the never-slower rule chose there) is the fastest row."""
    rows = workload["rows"]
    verdicts = [v for v in workload["pareto"] if v["runtime"] == runtime and v["compared"]]
    dominated = [f'"{rows[v["peer"]]["label"]}"' for v in verdicts if v["dominates"]]
    not_dominated = [f'"{rows[v["peer"]]["label"]}" (' + (
        f"metric {v['metric']['edgekd']:.4f} vs {v['metric']['peer']:.4f}" if v["faster"] else
        f"p50 {_ms(v['p50_ms']['edgekd'])} vs {_ms(v['p50_ms']['peer'])} ms") + ")"
        for v in verdicts if not v["dominates"]]
    measured = {key: row[runtime] for key, row in rows.items() if row[runtime]["measured"]}
    candidate = measured["student-int8"]
    fastest = min(measured, key=lambda key: measured[key]["p50_ms"])
    parts = []
    if dominated:
        parts.append("dominates " + ", ".join(dominated))
    if not_dominated:
        parts.append("does NOT dominate " + ", ".join(not_dominated))
    if fastest == "student-int8":
        parts.append(f"fastest row ({_ms(candidate['p50_ms'])} ms)")
    else:
        parts.append(f"not the fastest row: \"{rows[fastest]['label']}\" {_ms(measured[fastest]['p50_ms'])} ms vs "
                     f"{_ms(candidate['p50_ms'])} ms")
    fp32 = measured.get("student-fp32")
    deployed = workload.get("deployed", {}).get(runtime, "student-kd-qat-int8")
    if deployed != "student-kd-qat-int8":
        parts.append(f"deploys {deployed} here: the run measured its INT8 student slower on this runtime (never "
                     "slower than its FP32 self)")
    elif candidate["executed_precision"] == "fp32":  # the gate refuses an INT8 model no integer kernel runs
        parts.append("executes fp32: edgekd kept this student float, so it is its FP32 student's model")
    else:
        if fp32 and candidate["p50_ms"] > fp32["p50_ms"]:
            parts.append("slower than edgekd's own FP32 student, so the never-slower rule would deploy that one here")
        parts.append(f"executes {candidate['executed_precision']}")
    return f"{RUNTIME_LABELS[runtime]}: " + "; ".join(parts)


def peers_summary_block(results: Path = RESULTS) -> str:
    from peers import RUNTIMES

    d = load("peers", results)
    lines = [_wrap(f"What `benchmarks/results/peers.json` shows, by the table's own rule, per runtime (recorded "
                   f"{d['created']} on {host(d)}):"), ""]
    for name, workload in d["workloads"].items():
        if workload["status"] != "measured":
            lines.append(_wrap(f"- **{name}**: not measured ({workload['reason']})"))
            continue
        gains = [v["p50_ms"]["peer"] / v["p50_ms"]["edgekd"] for v in workload["pareto"]
                 if v["compared"] and v["peer"] != "teacher-fp32"]
        clauses = [_runtime_clause(workload, runtime) for runtime in RUNTIMES]
        line = (f"- **{name}**: " + ". ".join(clauses) + f". p50 {min(gains):.2f}-{max(gains):.2f}x lower than the "
                "peers' INT8 teachers' where compared.")
        students = workload.get("students")
        if students:
            line += " Its edgekd students were given, not trained by the benchmark: " + "; ".join(
                f"{kind}: \"{s['meta']['trained']}\"" for kind, s in students.items()) + "."
        lines.append(_wrap(line))
    return "\n".join(lines)


def peers_block(results: Path = RESULTS) -> str:
    """peers.py's own Markdown of peers.json (what it writes to peers.md), headings one level down."""
    from peers import render_markdown

    return re.sub(r"^### ", "#### ", render_markdown(load("peers", results)), flags=re.M).rstrip("\n")


# ---- Limits ----------------------------------------------------------------------------------------

def limits_minilm_block(results: Path = RESULTS) -> str:
    run, limits = load("hf_minilm", results), load("minilm_limits", results)
    f = limits["figures"]
    rows = {r["variant"]: r for r in run["rows"] if r["runtime"] == "onnxruntime"}
    int8, fp32 = rows["student-kd-qat-int8"], rows["student-kd-fp32"]
    own, low, high = f["own_training_fortunes"], *f["teacher_pair_similarity_p5_p95"]["value"]
    attempts = "; ".join(f"{a['what']}: {a['spearman']:.3f}" for a in f["cpu_attempts"]["runs"])
    _, made = given_students(run)
    return _wrap(
        f"- **Text encoders**: the {run['student']['layers']}-layer MiniLM student reaches Spearman "
        f"{int8['spearman']:.3f} (INT8; FP32 KD {fp32['spearman']:.3f}) against the teacher on {run['data']['eval']} "
        f"held-out fortunes, not the {run['verdict']['spearman_bar']} we aim for; the "
        f"{run['verdict']['speedup_bar']:g}x speed goal is met ({int8['speedup_vs_teacher_fp32']:.2f}x on ONNX "
        f"Runtime). These are `hf_minilm.json`'s figures, its {made}, so more training on this host is not what "
        f"is missing: the same student scores Spearman {own['spearman']:.3f} (per-text cosine "
        f"{own['per_text_cosine']:.3f}) on {own['texts']} of its own training fortunes against a held-out per-text "
        f"cosine of {f['held_out_per_text_cosine']['value']:.3f}: it generalises poorly from the "
        f"{f['training_texts']['value'] / 1000:g}k texts it trained on, and even its fit on seen text is just under "
        f"the bar. Random fortune pairs' teacher "
        f"similarities spread only {low:g}..{high:g} (5th-95th percentile), so the bar needs a per-text cosine "
        f"near {f['per_text_cosine_needed']['value']:g} (an estimate). Two CPU-only attempts from the FP32 student "
        f"did not move it ({attempts}); a 4-layer student reached {f['four_layer_student']['spearman']:.3f}. "
        f"These figures beyond `hf_minilm.json` are in `benchmarks/results/minilm_limits.json`: "
        f"{limits['produced_by']}; {host(limits)}. KD on far more unlabeled text (issue 18), or a 4-layer student, "
        f"is the way.")


def text_throughput_block(results: Path = RESULTS) -> str:
    """Length-bucketed text batches against random ones: texts/s and padding, with the per-round spread."""
    d = load("text_throughput", results)
    random, bucketed = d["summary"]["random"], d["summary"]["bucketed"]
    rounds = d["speedup_per_round"]
    load_avg = d.get("load_average_1min") or {}
    rows = ["| batches | texts/s (median of rounds) | padded tokens per real token | steps per epoch |",
            "|---|---|---|---|"]
    for name, row in (("random, 32 texts", random), ("bucketed, token budget", bucketed)):
        rows.append(f"| {name} | {row['texts_per_s']:.1f} | {row['padded_per_real_token']:.2f} | {row['steps']} |")
    note = (f"{d['teacher']} teaching its `{d['student']}` cut, {d['texts']} fortunes per epoch, {d['recipe']}; "
            f"{d['rounds']} interleaved rounds (A B A B), torch threads {d['torch_threads']}: bucketed is "
            f"{d['speedup_texts_per_s']:.2f}x the texts/s (rounds {', '.join(f'{r:.2f}' for r in rounds)}), with "
            f"{d['padded_tokens_ratio']:.2f}x fewer padded tokens (over all {d['full_corpus']['texts']:,} training "
            f"fortunes: {d['full_corpus']['padded_per_real_token']['random']:.2f} -> "
            f"{d['full_corpus']['padded_per_real_token']['bucketed']:.2f} padded per real token). "
            f"`python benchmarks/text_throughput.py`, trained by it; {host(d)}"
            + (f", load average {load_avg['before']:.1f} -> {load_avg['after']:.1f} during the run" if load_avg else "")
            + ".")
    return "\n".join(rows) + "\n\n" + _wrap(note)


def budget_profile_block(results: Path = RESULTS) -> str:
    """What `edgekd profile` costs, and the depth x width frontier it measures for a real text encoder."""
    d = load("budget_profile", results)
    lines = []
    for w in d["workloads"]:
        budget = ", ".join(f"{k} {'none' if v is None else format(v, 'g')}" for k, v in w["budget"]["*"].items())
        load_avg = w["load_average_1min"]
        teacher = {"minilm": "all-MiniLM-L6-v2"}.get(w["workload"], f"`{w['teacher']}`")  # minilm: a site-packages path
        lines.append(f"- **{w['workload']}** ({teacher} on {w['data']}, budget {budget}): "
                     f"{w['rows_timed']} rows (teacher and candidates, every target) in {w['wall_s']:.0f} s, "
                     f"{w['rows_per_minute']:.1f} a minute (load average {load_avg['before']:.1f} -> "
                     f"{load_avg['after']:.1f}); chosen: "
                     + "; ".join(f"{t['name']} {t['chosen'] or 'none'}" for t in w["targets"]) + ".")
    text = [_wrap(line) for line in lines]
    minilm = next((w for w in d["workloads"] if w["workload"] == "minilm"), None)
    if minilm:
        (target,) = minilm["targets"]
        rows = ["| candidate | params | INT8 p50 ms (round IQR) | speed-up vs FP32 teacher | size MB | fits |",
                "|---|---|---|---|---|---|"]
        for c in target["candidates"]:
            low, high = c["latency_spread_ms"]
            rows.append(f"| {c['student']} | {c['params']:,} | {_ms(c['latency_p50_ms'])} ({_ms(low)}-{_ms(high)}) | "
                        f"{c['speedup']:.2f}x | {c['model_size_mb']:.1f} | "
                        f"{'yes' if c['fits'] else 'no: ' + ', '.join(c['misses'])} |")
        text += ["", *rows]
    text += ["", _wrap(f"`python benchmarks/budget_profile.py`; untrained candidates (latency does not depend on "
                       f"the weights), so no quality is claimed; {host(d)}.")]
    return "\n".join(text)


def lm_smollm2_block(results: Path = RESULTS) -> str:
    """SmolLM2-135M distilled into a causal-LM student through `edgekd compress` (benchmarks/lm_smollm2.py): the
    quick recipe's run and, where it has been run, the longer one."""
    text = []
    for name, command in (("lm_smollm2.quick", "python benchmarks/lm_smollm2.py --quick"),
                          ("lm_smollm2", "python benchmarks/lm_smollm2.py")):
        if not (results / f"{name}.json").is_file():
            continue
        d = load(name, results)
        summary = d["summary"]
        targets = list(summary["targets"])
        labels = [RUNTIME_LABELS.get(t.removeprefix("x86-cpu-"), t) for t in targets]
        rows = ["| variant | agreement | perplexity | size MB | " + " | ".join(f"tokens/s {lb}" for lb in labels)
                + f" | TTFT p95 ms {labels[0]} |", "|---|---|---|---|" + "---|" * (len(targets) + 1)]
        for variant, v in summary["variants"].items():
            rates = v["decode_tokens_per_s"] or {}
            rows.append(f"| {variant} | {v['agreement']:.3f} | {v['perplexity']:.1f} | {v['size_mb']:.1f} | "
                        + " | ".join(f"{rates.get(t) or 0:.1f}" for t in targets)
                        + f" | {(v['ttft_ms_p95'] or {}).get(targets[0]) or 0:.1f} |")
        speedups = ", ".join(f"{summary['targets'][t]['speedup']:.2f}x on {lb}" for t, lb in zip(targets, labels))
        speedups = speedups.replace("x on", "x the FP32 teacher's tokens/s on", 1)
        speculative = next((s for s in (summary["speculative"] or {}).values() if s), None)
        lines = [f"**{d['student']}, {d['kd_steps']} KD steps (and as many without KD), {d['qat_steps']} QAT steps"
                 f"** ({'the quick recipe' if d['quick'] else 'trained by the script'}, "
                 f"{summary['wall_time_s'] / 60:.0f} min in the run):", "", *rows, "",
                 _wrap(f"- The deployed weight-INT{d['recipe']['quant']['weight_bits']} student decodes at {speedups}.")]
        if speculative:
            lines.append(_wrap(f"- Speculative decoding with it drafting (k = {speculative['k']}) on {labels[0]}: "
                               f"acceptance {speculative['acceptance_rate']:.2f}, {speculative['tokens_per_s']:.1f} "
                               f"tokens/s against the teacher's own {speculative['teacher_tokens_per_s']:.1f}; "
                               f"output identical to the teacher's: {speculative['identical_output']}."))
        parity = summary["parity"]
        lines.append(_wrap("- Export gate (graph arithmetic): " + "; ".join(
            f"{RUNTIME_LABELS.get('onnxruntime' if fmt == 'onnx' else fmt, fmt)} greedy tokens identical on "
            f"{p['greedy_token_match']:.0%} of {p['prompts']} prompts, prefill cosine {p['prefill_logits_cosine']:.6f}, "
            f"as deployed {p.get('deployed_greedy_token_match', 0):.0%}" for fmt, p in parity.items()) + "."))
        weights = next(iter(summary["targets"].values()))["weights"]
        lines.append(_wrap(f"- Weights the runtime keeps integer: {weights['int8'] + weights['int4']} MatMuls, "
                           f"{weights['float']} float" + (" (the tied embedding / output head)." if weights["float"]
                                                          else ", the output head (tied to the embedding) included.")))
        peers = d.get("peers")
        if peers:
            figures = "; ".join(
                f"{name}: agreement {r['top1_agreement']:.3f}, perplexity {r['perplexity']:.1f}, "
                f"{r['decode_tokens_per_s']:.1f} tokens/s, {r['size_mb']:.1f} MB, {r['weights']['float']} float MatMuls"
                for name, r in peers["rows"].items())
            lines.append(_wrap(f"- Peer on OpenVINO (NNCF writes IR only), the teacher's weights to INT8 by "
                               f"`{peers['api']}` (NNCF {peers['nncf']}) against edgekd's PTQ row, medians of "
                               f"{peers['rounds']} interleaved rounds: {figures}."))
        lines.append(_wrap(f"- {_how(command, 'trained by the script through edgekd compress', d)}."))
        text += ([""] if text else []) + lines
    return "\n".join(text) or "No run recorded yet: `python benchmarks/lm_smollm2.py --quick`."


QAT_VS_PTQ_ROWS = {"fp32": "FP32 teacher", "ptq-edgekd": "edgekd PTQ", "ptq-ort": "ORT `quantize_static` (peer)",
                   "qat-no-kd": "edgekd QAT, no KD", "qat-kd": "edgekd QAT + KD"}


def qat_vs_ptq_block(results: Path = RESULTS) -> str:
    """Where PTQ hurts: FP32, the PTQ rows and QAT with and without KD, per workload (benchmarks/qat_vs_ptq.py)."""
    d = load("qat_vs_ptq", results)
    names = list(d["workloads"])
    rows = ["| row | " + " | ".join(f"{name}: accuracy (agreement with FP32)" for name in names) + " |",
            "|---|" + "---|" * len(names)]
    for key, label in QAT_VS_PTQ_ROWS.items():
        cells = []
        for name in names:
            row = d["workloads"][name]["rows"][key]
            runs = row.get("runs")
            seeds = (f", seeds {min(r['accuracy'] for r in runs):.4f}-{max(r['accuracy'] for r in runs):.4f}"
                     if runs and len(runs) > 1 else "")
            cells.append(f"{row['accuracy']:.4f} ({row['agreement']:.4f}{seeds})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = len(d["settings"]["seeds"])
    lines = ["\n".join(rows), ""]
    for name in names:
        w = d["workloads"][name]
        lines.append(_wrap(f"- {name} ({w['title']}): {w['finding']}."))
    lines.append(_wrap(f"- Every figure is the exported ONNX run on ONNX Runtime CPU over the {d['data']['test_samples']} "
                       f"`{d['data']['name']}` test samples; QAT rows are the mean of {seeds} seeds. "
                       f"{_how('python benchmarks/qat_vs_ptq.py', 'trained by the script', d)}."))
    return "\n".join(lines)


BLOCKS = {"benchmarks": benchmarks_block, "peers-summary": peers_summary_block, "peers": peers_block,
          "limits-minilm": limits_minilm_block, "text-throughput": text_throughput_block,
          "budget-profile": budget_profile_block, "lm-smollm2": lm_smollm2_block,
          "qat-vs-ptq": qat_vs_ptq_block}


def blocks(results: Path = RESULTS) -> dict[str, str]:
    return {name: build(results) for name, build in BLOCKS.items()}


def render(readme: str, generated: dict[str, str]) -> str:
    """`readme` with every marked block replaced; a block the README lacks, or marks twice, is an error."""
    found = [m.group("name") for m in _BLOCK.finditer(readme)]
    missing = [name for name in generated if found.count(name) != 1]
    if missing or set(found) - set(generated):
        raise SystemExit(f"README.md must mark each of {', '.join(generated)} once as <!-- results:NAME --> ... "
                         f"<!-- /results:NAME -->; found {found or 'none'}")
    return _BLOCK.sub(lambda m: m.group(1) + generated[m.group("name")] + "\n" + m.group(4), readme)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 where README.md differs")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = render(current, blocks())
    if args.check:
        if wanted != current:
            print("README.md disagrees with benchmarks/results/*.json: run benchmarks/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
