"""The `edgekd` command line: parse arguments, call the Python API, map errors to exit codes.

Exit codes (the contract): 0 done; 1 ran but an SLO or parity gate failed; 2 bad input, with a
one-line message on stderr and no traceback unless `--debug`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgekd.errors import EdgeKDError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune, distill, quantize, export and benchmark PyTorch models for edge targets.")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


@app.command()
def targets(as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")):
    """List target profiles and whether each device is present on this host."""
    from edgekd.host import detect_host, isa_summary
    from edgekd.targets import availability, list_targets

    host = detect_host()
    rows = []
    for target in list_targets():
        available, reason, warnings = availability(target, host)
        rows.append({
            "name": target.name, "device": target.device, "runtime": target.runtime,
            "runtime_device": target.runtime_device, "precision": target.precision,
            "available": available, "reason": reason, "warnings": warnings,
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Target profiles on {isa_summary(host)}")
    for col in ("name", "device", "runtime / device", "precision", "available", "why not / notes"):
        table.add_column(col)
    for row in rows:
        note = row["reason"] or "; ".join(row["warnings"])
        table.add_row(row["name"], row["device"], f"{row['runtime']} / {row['runtime_device']}", row["precision"],
                      "[green]yes[/]" if row["available"] else "[red]no[/]", note)
    console.print(table)


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: run the app, turning edgekd errors into exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except EdgeKDError as err:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted: finished stages and checkpoints are kept; re-run with --resume")
        return 130
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", None)
        return int(code if code is not None else getattr(stop, "code", 0) or 0)
    except Exception as err:
        # Typer's (vendored) click reports usage errors as exceptions with show() and exit_code.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return 2
        if type(err).__name__ == "Abort":
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
