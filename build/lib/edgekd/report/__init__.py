"""Reporting stage: per-class audit, report rendering (Markdown, HTML, plots) and the run manifest."""

from edgekd.report.audit import audit
from edgekd.report.manifest import CheckResult, build_manifest, check_run, read_manifest, write_manifest
from edgekd.report.render import load_report, render_report

__all__ = [
    "CheckResult",
    "audit",
    "build_manifest",
    "check_run",
    "load_report",
    "read_manifest",
    "render_report",
    "write_manifest",
]
