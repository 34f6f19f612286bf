"""The ``effscale`` click group: lazy subcommands and one way out for every error.

Each subcommand lives in its own module (``effscale/cli/<name>.py``) and is imported only
when invoked, so ``effscale --help`` and ``effscale scale`` (without ``--build``) never
import Keras.

Error policy (docs/errors.md):
* bad option values and usage: ``Error: ...`` on one line, exit 2;
* ``EffscaleError`` from the library: ``Error: ...`` on one line, exit 1;
* Ctrl-C: ``Interrupted.`` plus the resume command when there is one, exit 130;
* anything else: ``Unexpected error: <type>: <msg> (details in <log>)``, exit 1; the
  traceback goes to the log, and ``effscale --debug ...`` re-raises it instead.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from effscale import __version__
from effscale.console import describe, one_line
from effscale.errors import EffscaleError

# name -> "module:attribute"; modules are imported on first use only.
COMMANDS = {
    "scale": "effscale.cli.scale:scale",
    "report": "effscale.cli.report:report",
    "grid": "effscale.cli.grid:grid",
    "transfer": "effscale.cli.transfer:transfer",
    "evaluate": "effscale.cli.evaluate:evaluate",
    "bench": "effscale.cli.bench:bench",
    "export": "effscale.cli.export:export",
}


@dataclass
class SessionState:
    """What the error handler needs to know about the running command."""

    debug: bool = False
    log_path: Path | None = None  # a run's effscale.log once a command has a run dir
    resume_hint: str | None = None  # e.g. "effscale grid --resume runs/x"


state = SessionState()


class EffscaleGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name or "effscale", standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"Error: {one_line(exc.format_message())}{hint}", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            code = exc.exit_code
        except (KeyboardInterrupt, click.Abort):
            hint = f" Resume with: {state.resume_hint}" if state.resume_hint else ""
            click.echo(f"Interrupted.{hint}", err=True)
            code = 130
        except EffscaleError as exc:
            click.echo(f"Error: {one_line(exc)}", err=True)
            code = 1
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if state.debug:
                raise
            log = state.log_path or Path.home() / ".cache" / "effscale" / "last-error.log"
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(traceback.format_exc())
            except OSError:
                log = Path("(log unavailable)")
            click.echo(f"Unexpected error: {describe(exc)} (details in {log})", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code or 0)
        return code


@click.group(cls=EffscaleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="effscale")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """EfficientNet-style compound model scaling: search, derive, transfer.

    \b
      effscale scale --phi 3          derive a scaled variant with exact params/FLOPs
      effscale scale --all            the official B0-B7 beside the formula
    """
    state.debug = debug


def main() -> None:
    cli.main(prog_name="effscale")
