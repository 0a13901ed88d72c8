"""The two ways edgekd stops early, mapped to the contract's exit codes.

`BadInput` (exit 2) is the user's to fix: the message names the file, key or shape at
fault. `GateFailed` (exit 1) means the run worked but its evidence says "do not ship":
an SLO missed or an exported model that disagrees with PyTorch. Anything else that escapes is a
crash (exit 3). `close_matches` words the "did you mean" part of a message.
"""

import difflib


class EdgeKDError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2


class BadInput(EdgeKDError):
    """Malformed or missing input: a file, key, shape, ratio or reference at fault."""

    exit_code = 2


class GateFailed(EdgeKDError):
    """A parity or SLO gate failed: the run finished but its result must not ship."""

    exit_code = 1


# Never the user's input, whatever code raised them: a broken install (ImportError) or the host's
# limits (MemoryError). Code that turns a library's many exception types into BadInput re-raises
# these first, so they surface as a crash (exit 3), not as "fix your input".
NOT_INPUT_ERRORS = (ImportError, MemoryError)


def close_matches(name: str, candidates, limit: int = 12) -> str:
    """'close matches: a, b' for an error message, or what exists (a sample only of long lists)."""
    candidates = list(candidates)
    near = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.5)
    if near:
        return "close matches: " + ", ".join(near)
    sample = ", ".join(candidates[:limit]) + (", ..." if len(candidates) > limit else "")
    return f"available: {sample or 'none'}"
