"""The `guard` command line: parse, call one library function, render, map exit codes.

Every GuardError becomes one line on stderr and its exit code here, and nowhere else.
"""

from __future__ import annotations

import io
import os
import sys
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from guard import __version__, logs
from guard.errors import GuardError
from guard.monitor.cli import monitor_app
from guard.reindex.cli import reindex_app
from guard.uri import redact

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Check an embedding-engine switch against the vectors already stored.",
)
models_app = typer.Typer(no_args_is_help=True, help="Build the local demo models.")
app.add_typer(models_app, name="models")
app.add_typer(reindex_app, name="reindex")
app.add_typer(monitor_app, name="monitor")

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


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"
    html = "html"


@app.command()
def check(
    store: Annotated[str, typer.Option(help="Store URI, e.g. qdrant+local:PATH?collection=C.")],
    candidate: Annotated[str, typer.Option(help="Engine URI of the candidate.")],
    baseline: Annotated[
        str | None, typer.Option(help="Engine URI of the engine that wrote the store.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="guard.toml with a \\[thresholds] table.")
    ] = None,
    sample: Annotated[int | None, typer.Option(help="Most records to re-embed.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    output_format: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option(help="Write the report to this file.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Per-record cosine to match.")] = None,
    allowed_share: Annotated[
        float | None, typer.Option(help="Largest share below min-cosine that approves.")
    ] = None,
    confidence: Annotated[float | None, typer.Option(help="Confidence of the bound.")] = None,
    min_overlap: Annotated[float | None, typer.Option(help="Least mean overlap@k.")] = None,
    overlap_k: Annotated[int | None, typer.Option(help="k of overlap@k.")] = None,
    initial_sample: Annotated[int | None, typer.Option(help="Records in round one.")] = None,
    schedule: Annotated[
        bool, typer.Option("--schedule", help="On a reindex verdict, plan the re-index job.")
    ] = False,
    bridge_out: Annotated[
        Path | None,
        typer.Option(help="Where a fitted bridge is written (default under GUARD_HOME)."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Embed every text afresh; leave the cache alone.")
    ] = False,
    queries: Annotated[
        Path | None,
        typer.Option(
            help='JSONL of {"query": ..., "relevant": [ids]}: recall as stored vs switch.'
        ),
    ] = None,
    min_recall_ratio: Annotated[
        float | None,
        typer.Option(help="Least recall@k of the switch over as stored (lower bound)."),
    ] = None,
) -> None:
    """Is switching to CANDIDATE safe without re-indexing STORE? Exit code = verdict."""
    from guard import api
    from guard.checking import render as reports

    overrides = {
        "min_cosine": min_cosine,
        "allowed_share": allowed_share,
        "confidence": confidence,
        "min_overlap": min_overlap,
        "overlap_k": overlap_k,
        "initial_sample": initial_sample,
        "min_recall_ratio": min_recall_ratio,
    }
    result = api.check(
        store,
        candidate,
        baseline=baseline,
        config=config,
        sample=sample,
        seed=seed,
        queries=queries,
        thresholds={key: value for key, value in overrides.items() if value is not None},
        bridge_out=bridge_out,
        cache=not no_cache,
    )
    _emit(reports, result, output_format, output, width=100)
    if output is not None:
        stderr.print(f"{result.verdict}: report written to {output}")
    if schedule and result.verdict == "reindex":
        job = api.plan(store=store, candidate=candidate)
        stderr.print(
            f"re-index job {job.job_id} planned into {redact(job.target)}; "
            f"start it with: guard reindex run {job.job_id}"
        )
    raise typer.Exit(result.exit_code)


def _emit(
    reports: ModuleType,
    report: Any,
    output_format: ReportFormat,
    output: Path | None,
    *,
    width: int,
) -> None:
    """Print ``report`` in ``output_format``, or write it to ``output``; ``reports`` is the
    module that renders it (guard.checking.render or guard.comparing.render)."""
    if output_format is ReportFormat.text:
        if output is None:
            reports.to_text(report, stdout)
            return
        buffer = io.StringIO()
        reports.to_text(report, Console(file=buffer, width=width, color_system=None))
        rendered = buffer.getvalue()
    else:
        render = {
            ReportFormat.json: reports.to_json,
            ReportFormat.markdown: reports.to_markdown,
            ReportFormat.html: reports.to_html,
        }[output_format]
        rendered = render(report)
        if output is None:
            print(rendered)
            return
    output.write_text(rendered.rstrip("\n") + "\n", encoding="utf-8")


@app.command()
def compare(
    store: Annotated[str, typer.Option(help="Store URI, e.g. qdrant+local:PATH?collection=C.")],
    candidate: Annotated[
        list[str], typer.Option(help="Engine URI of a candidate; repeat for each.")
    ],
    baseline: Annotated[
        str | None, typer.Option(help="Engine URI of the engine that wrote the store.")
    ] = None,
    sample: Annotated[int | None, typer.Option(help="Most records to re-embed.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    k: Annotated[int, typer.Option("--k", help="k of overlap@k and of retrieval.")] = 10,
    queries: Annotated[
        Path | None,
        typer.Option(help='JSONL of {"query": ..., "relevant": [ids]}; else synthetic queries.'),
    ] = None,
    subcorpus: Annotated[
        int, typer.Option(help="Sampled distractors of the re-index sub-corpus.", min=1)
    ] = 1000,
    output_format: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option(help="Write the report to this file.")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Embed every text afresh; leave the cache alone.")
    ] = False,
) -> None:
    """Rank CANDIDATES on one sample of STORE: loads, verdict, speed, memory, retrieval.

    Exit 0 when one can be switched to without re-indexing, 1 when none can but some
    load, 4 when none loads, 2 on errors."""
    from guard import api
    from guard.comparing import render as reports

    result = api.compare(
        store,
        candidate,
        baseline=baseline,
        sample=sample,
        seed=seed,
        k=k,
        queries=queries,
        subcorpus=subcorpus,
        cache=not no_cache,
    )
    _emit(reports, result, output_format, output, width=140)
    if output is not None:
        stderr.print(f"exit {result.exit_code}: report written to {output}")
    raise typer.Exit(result.exit_code)


@app.command()
def serve(
    engine: Annotated[str, typer.Option(help="Engine URI to serve, options and bridge= included.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    max_batch: Annotated[int, typer.Option(help="Most texts per engine call.")] = 128,
    max_inputs: Annotated[int, typer.Option(help="Most texts per request.")] = 2048,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 << 20,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting; more get 503.")] = 256,
) -> None:
    """Serve ENGINE as OpenAI /v1/embeddings and Ollama /api/embed until SIGTERM/SIGINT."""
    from guard.serve import Limits
    from guard.serve import serve as run_server

    limits = Limits(max_batch, max_inputs, max_body_bytes, max_queue)
    run_server(engine, host=host, port=port, limits=limits, announce=_announce)


def _announce(line: str) -> None:
    """Plain and flushed: scripts and tests read the bound address from this line."""
    print(line, file=sys.stderr, flush=True)


@app.command()
def demo(
    limit: Annotated[int, typer.Option(help="Corpus paragraphs to index.")] = 1000,
    sample: Annotated[int, typer.Option(help="Most records each check re-embeds.")] = 1000,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 7,
) -> None:
    """Everything on embedded defaults: no servers, no downloads."""
    from guard.demo import run_demo

    run_demo(stdout, limit=limit, sample_size=sample, seed=seed)


def main() -> None:
    """Console entry point: the single place where errors become exit codes.

    Typer handles usage errors itself (exit 2) and turns typer.Exit into the exit code;
    everything the guard can explain arrives here as a GuardError.
    """
    # torch and llama.cpp may share this process (a sentence-transformers baseline, the
    # demo): spinning OpenMP workers of one starve the other on small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app(prog_name="guard")
    except GuardError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # files named on the command line: --output, --config, ...
        _fail(str(exc), 2)


def _fail(message: str, code: int) -> None:
    stderr.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)
