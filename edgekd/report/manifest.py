"""The run manifest: what went in (teacher, data, recipe, seed, versions, host) and what came out.

`check_run` answers two questions a deployment pipeline asks before shipping a run directory:
were its artifacts changed since the run ("corrupt"), and has the teacher or the data moved on
since, so the student should be distilled again ("stale").
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable, Literal

from edgekd.errors import BadInput
from edgekd.host import detect_host
from edgekd.io import sha256_file, write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

# Not artifacts: the manifest itself, resumable state (checkpoints/ and edgekd.runstate's
# state.json, rewritten whenever a stage finishes), caches, half-written temp files, and the
# rendered views of report.json. The views are left out because `edgekd report` re-renders
# them (possibly on another machine, with another matplotlib) and that must not make
# `edgekd check` call the run corrupt; report.json, their single source, is hashed.
_SKIPPED_TOP_LEVEL = frozenset({MANIFEST_NAME, "checkpoints", "state.json", "report.md", "report.html", "plots"})
_CACHE_DIRS = frozenset({"__pycache__", ".cache", "cache", ".pytest_cache"})
_VERSIONED_PACKAGES = ("edgekd", "torch", "onnx", "onnxruntime", "openvino", "numpy")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _is_artifact(relative: Path) -> bool:
    parts = relative.parts
    if parts[0] in _SKIPPED_TOP_LEVEL or any(part in _CACHE_DIRS for part in parts[:-1]):
        return False
    name = parts[-1]
    return not (name.startswith(".") and name.endswith(".tmp"))  # edgekd.io.atomic_path leftovers


def _default_artifacts(run_dir: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(run_dir):
        dirs.sort()
        for name in sorted(files):
            relative = (Path(root) / name).relative_to(run_dir)
            if _is_artifact(relative):
                found.append(relative)  # relative to the run, which may itself be a relative path
    return found


def _relative_to_run(run_dir: Path, path: Path) -> str:
    """`path` as a POSIX path relative to `run_dir`; artifacts outside the run are refused."""
    root = Path(os.path.normpath(run_dir.absolute()))
    # normpath, not resolve: a symlinked artifact stays named by its place in the run.
    absolute = Path(os.path.normpath(path if path.is_absolute() else root / path))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        raise BadInput(f"artifact {path} is outside the run directory {run_dir}") from None


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return versions


def _require_fields(value: object, what: str, keys: tuple[str, ...], hashed: str) -> dict:
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a mapping with keys {', '.join(keys)}, got {type(value).__name__}")
    missing = [key for key in keys if key not in value]
    if missing:
        raise BadInput(f"{what}: missing key {missing[0]!r}")
    if not isinstance(value[hashed], str) or not _SHA256.match(value[hashed]):
        raise BadInput(f"{what}.{hashed} must be a lowercase hex sha256 (64 characters), got {value[hashed]!r}")
    return dict(value)


def build_manifest(
    *,
    run_dir: Path,
    teacher: dict,
    data: dict,
    recipe: dict,
    hyperparameters: dict,
    seed: int,
    artifacts: Iterable[Path] | None = None,
) -> dict:
    """Describe a finished run; `artifacts` defaults to every file in `run_dir` that is not skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} does not exist")
    teacher = _require_fields(teacher, "teacher", ("ref", "sha256"), "sha256")
    data = _require_fields(data, "data", ("name", "sha256", "provenance"), "sha256")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BadInput(f"seed must be an integer, got {seed!r}")
    paths = _default_artifacts(run_dir) if artifacts is None else [Path(p) for p in artifacts]
    recorded = {}
    for path in paths:
        relative = _relative_to_run(run_dir, path)
        absolute = run_dir / relative
        if not absolute.is_file():
            raise BadInput(f"artifact {relative} does not exist in {run_dir}")
        recorded[relative] = {"sha256": sha256_file(absolute), "size": absolute.stat().st_size}
    return {
        "manifest_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "teacher": teacher,
        "data": data,
        "recipe": dict(recipe),
        "hyperparameters": dict(hyperparameters),
        "seed": seed,
        "versions": _package_versions(),
        "host": detect_host().as_dict(),
        "artifacts": dict(sorted(recorded.items())),
    }


def write_manifest(*, run_dir: Path, manifest: dict) -> Path:
    """Write `run_dir/manifest.json` atomically."""
    return write_json(Path(run_dir) / MANIFEST_NAME, manifest)


def read_manifest(*, run_dir: Path) -> dict:
    """Load and shape-check `run_dir/manifest.json` (BadInput names the file and the key at fault)."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BadInput(f"{path}: no manifest in this run directory (is it an edgekd run?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"{path}: top level must be an object")
    for key in ("teacher", "data", "artifacts"):
        if not isinstance(manifest.get(key), dict):
            raise BadInput(f"{path}: key {key!r} missing or not an object")
    for key in ("teacher", "data"):
        if not isinstance(manifest[key].get("sha256"), str):
            raise BadInput(f"{path}: key '{key}.sha256' missing or not a string")
    for name, entry in manifest["artifacts"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BadInput(f"{path}: key 'artifacts.{name}.sha256' missing or not a string")
    return manifest


@dataclass(frozen=True)
class CheckResult:
    """Verdict of `check_run`: "corrupt" outranks "stale", which outranks "ok"."""

    status: Literal["ok", "stale", "corrupt"]
    problems: list[str]
    verified: list[str] = field(default_factory=list)  # artifacts whose hash still matches
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    stale_inputs: list[str] = field(default_factory=list)  # "teacher" and/or "data"
    unchecked_inputs: list[str] = field(default_factory=list)  # no current hash was supplied
    unrecorded: list[str] = field(default_factory=list)  # files added since the run (not a problem)

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 when ok, 1 (a failed gate) when stale or corrupt."""
        return 0 if self.status == "ok" else 1

    def as_dict(self) -> dict:
        return {
            "status": self.status, "problems": self.problems, "verified": self.verified,
            "missing": self.missing, "modified": self.modified, "stale_inputs": self.stale_inputs,
            "unchecked_inputs": self.unchecked_inputs, "unrecorded": self.unrecorded,
        }


def check_run(
    *,
    run_dir: Path,
    current_teacher_sha256: str | None = None,
    current_data_sha256: str | None = None,
) -> CheckResult:
    """Compare the run's artifacts and the given current input hashes with manifest.json."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir=run_dir)
    problems: list[str] = []
    verified, missing, modified = [], [], []
    for relative, entry in manifest["artifacts"].items():
        path = run_dir / _relative_to_run(run_dir, Path(relative))
        if not path.is_file():
            missing.append(relative)
            problems.append(f"missing artifact: {relative}")
            continue
        if not path.resolve().is_relative_to(run_dir.resolve()):  # a link planted in the run: not its file
            modified.append(relative)
            problems.append(f"modified artifact: {relative} is a link to a file outside the run")
            continue
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            modified.append(relative)
            problems.append(f"modified artifact: {relative} (sha256 was {entry['sha256'][:12]}…, now {actual[:12]}…)")
        else:
            verified.append(relative)

    stale_inputs, unchecked = [], []
    for key, current in (("teacher", current_teacher_sha256), ("data", current_data_sha256)):
        if current is None:
            unchecked.append(key)
            continue
        recorded = manifest[key]["sha256"]
        if current != recorded:
            stale_inputs.append(key)
            source = manifest[key].get("ref") or manifest[key].get("name") or key
            problems.append(f"{key} changed since the run: {source} sha256 was {recorded[:12]}…, now {current[:12]}… "
                            "(distill again)")

    unrecorded = [p.as_posix() for p in _default_artifacts(run_dir) if p.as_posix() not in manifest["artifacts"]]
    status = "corrupt" if missing or modified else "stale" if stale_inputs else "ok"
    return CheckResult(status=status, problems=problems, verified=verified, missing=missing, modified=modified,
                       stale_inputs=stale_inputs, unchecked_inputs=unchecked, unrecorded=unrecorded)
