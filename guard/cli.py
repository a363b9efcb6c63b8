"""The `guard` command line: parse, call one library function, render, map exit codes.

Every GuardError becomes one line on stderr and its exit code here, and nowhere else.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from guard import __version__, logs
from guard.errors import GuardError
from guard.uri import redact

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Check an embedding-engine switch against the vectors already stored.",
)
models_app = typer.Typer(no_args_is_help=True, help="Build the local demo models.")
app.add_typer(models_app, name="models")

stdout = Console()
stderr = Console(stderr=True)


class LogFormat(StrEnum):
    console = "console"
    json = "json"


def _version(value: bool) -> None:
    if value:
        stdout.print(f"guard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global_options(
    log_format: Annotated[
        LogFormat, typer.Option(help="Log format on stderr.")
    ] = LogFormat.console,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logs.configure(log_format.value, verbose)


@models_app.command("build-demo")
def build_demo(
    out: Annotated[Path | None, typer.Option(help="Folder for the GGUF files.")] = None,
    llama_cpp_src: Annotated[
        Path | None, typer.Option(help="llama.cpp sources holding convert_hf_to_gguf.py.")
    ] = None,
) -> None:
    """Write all-MiniLM-L6-v2 as GGUF F16, Q8_0 and Q4_0 (cached by content)."""
    from guard import models

    built = models.build_demo_models(out or models.default_models_dir(), llama_cpp_src)
    for name, path in built.items():
        stdout.print(f"{name}\t{path}")


@app.command()
def demo(
    limit: Annotated[int, typer.Option(help="Corpus paragraphs to index.")] = 2000,
    sample: Annotated[int, typer.Option(help="Records each candidate re-embeds.")] = 400,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 7,
) -> None:
    """Everything on embedded defaults: no servers, no downloads."""
    from guard.demo import run_demo

    run_demo(stdout, limit=limit, sample_size=sample, seed=seed)


def main() -> None:
    """Console entry point: the single place where errors become exit codes."""
    try:
        code = app(prog_name="guard", standalone_mode=False)
    except GuardError as exc:
        stderr.print(f"[bold red]error:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click says exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        stderr.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # files named on the command line: --output, --config, ...
        stderr.print(f"[bold red]error:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
