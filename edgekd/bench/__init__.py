"""Benchmark a deployable artifact (.onnx / OpenVINO .xml) on a target profile and check its SLOs."""

from edgekd.bench.compare import ROUNDS, RoundTimes, clearly_faster, differ, time_interleaved
from edgekd.bench.core import BenchResult, benchmark, measure_latency
from edgekd.bench.feeds import parse_dims
from edgekd.bench.predict import predict
from edgekd.bench.render import render_bench
from edgekd.bench.samples import load_samples
from edgekd.bench.slo import SloCheck, SloVerdict, check_slo

__all__ = ["benchmark", "measure_latency", "time_interleaved", "clearly_faster", "differ", "RoundTimes", "ROUNDS",
           "predict", "BenchResult", "check_slo", "SloVerdict", "SloCheck", "render_bench", "load_samples",
           "parse_dims"]
