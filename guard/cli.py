"""The `guard` command line: parse, call one library function, render, map exit codes.

Every GuardError and every usage error becomes one line on stderr and its exit code
here, and nowhere else. Output to a file or a pipe is never wrapped, and a reader that
goes away (`guard check ... | head -1`) changes no exit code.
"""

from __future__ import annotations

import io
import os
import sys
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from guard import __version__, logs
from guard.errors import ConfigError, GuardError
from guard.monitor.cli import monitor_app
from guard.progress import on_terminal
from guard.reindex.cli import reindex_app
from guard.uri import redact

# Plain help (rich_markup_mode=None): flags read as flags, not `<bool>`, and text in
# brackets ("[ids]", "[thresholds]") is kept, not taken for markup.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Check an embedding-engine switch against the vectors already stored.",
)
models_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Build the local demo models."
)
app.add_typer(models_app, name="models")
app.add_typer(reindex_app, name="reindex")
app.add_typer(monitor_app, name="monitor")

# Wide enough that nothing written to a file or a pipe wraps (URIs stay whole).
UNWRAPPED = 10_000
_tty = sys.stdout.isatty()
stdout = Console(soft_wrap=not _tty, width=None if _tty else UNWRAPPED)
stderr = Console(stderr=True)

# Each threshold option and the Thresholds field it sets (its default shown in --help).
THRESHOLD_OPTIONS = {
    "sample": "max_sample",
    "min_cosine": "min_cosine",
    "allowed_share": "allowed_share",
    "confidence": "confidence",
    "min_overlap": "min_overlap",
    "overlap_k": "overlap_k",
    "initial_sample": "initial_sample",
    "min_recall_ratio": "min_recall_ratio",
}


class ThresholdHelp(TyperCommand):
    """A command whose threshold options default to None (guard.toml decides, else
    guard.core.policy.Thresholds) but show Thresholds' defaults in --help. The policy
    module (scipy) is imported only for the help, not at every start."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from guard.core.policy import Thresholds

        defaults = Thresholds().as_dict()
        for param in self.params:
            field = THRESHOLD_OPTIONS.get(param.name or "")
            if field is not None and param.default is None:
                param.default = defaults[field]
                param.show_default = True  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


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
    verbose: Annotated[
        int,
        typer.Option(
            "-v", "--verbose", count=True, show_default=False, help="More logs: -v info, -vv debug."
        ),
    ] = 0,
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


def _below_one(value: float | None) -> float | None:
    """An option's value in [0, 1): typer's own ranges are closed."""
    if value is not None and not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"{value:g} is not in the range 0<=x<1.")
    return value


def _between_zero_and_one(value: float | None) -> float | None:
    """An option's value in (0, 1)."""
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value:g} is not in the range 0<x<1.")
    return value


@app.command(
    cls=ThresholdHelp, short_help="Is switching to CANDIDATE safe without re-indexing STORE?"
)
def check(
    store: Annotated[str, typer.Option(help="Store URI, e.g. qdrant+local:PATH?collection=C.")],
    candidate: Annotated[str, typer.Option(help="Engine URI of the candidate.")],
    baseline: Annotated[
        str | None, typer.Option(help="Engine URI of the engine that wrote the store.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="guard.toml whose [thresholds] replace the defaults shown."),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Most records to re-embed (at least --initial-sample).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="Report format.")
    ] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option(help="Write the report to this file.")] = None,
    min_cosine: Annotated[
        float | None, typer.Option(help="Per-record cosine to match.", min=-1.0, max=1.0)
    ] = None,
    allowed_share: Annotated[
        float | None,
        typer.Option(
            help="Largest share below min-cosine that approves [0<=x<1].", callback=_below_one
        ),
    ] = None,
    confidence: Annotated[
        float | None,
        typer.Option(help="Confidence of the bound [0<x<1].", callback=_between_zero_and_one),
    ] = None,
    min_overlap: Annotated[
        float | None, typer.Option(help="Least mean overlap@k.", min=0.0, max=1.0)
    ] = None,
    overlap_k: Annotated[int | None, typer.Option(help="k of overlap@k.", min=1)] = None,
    initial_sample: Annotated[
        int | None, typer.Option(help="Records in round one; each round doubles.", min=1)
    ] = None,
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
        typer.Option(
            help="Least recall@k of the switch over as stored (lower bound).", min=0.0, max=1.0
        ),
    ] = None,
) -> None:
    """Is switching to CANDIDATE safe without re-indexing STORE? Exit code = verdict.

    Threshold options override the [thresholds] table of --config, which overrides the
    defaults shown."""
    from guard import api
    from guard.checking import render as reports

    _check_sample_options(config, sample, initial_sample)
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
        progress=on_terminal(stderr),
        baseline=baseline,
        config=config,
        sample=sample,
        seed=seed,
        queries=queries,
        thresholds={key: value for key, value in overrides.items() if value is not None},
        bridge_out=bridge_out,
        cache=not no_cache,
    )
    _emit(reports, result, output_format, output)
    if output is not None:
        stderr.print(f"{result.verdict}: report written to {output}", soft_wrap=True)
    if schedule and result.verdict == "reindex":
        job = api.plan(store=store, candidate=candidate)
        stderr.print(
            f"re-index job {job.job_id} planned into {redact(job.target)}; "
            f"start it with: guard reindex run {job.job_id}",
            soft_wrap=True,
        )
    raise typer.Exit(result.exit_code)


def _check_sample_options(config: Path | None, sample: int | None, first: int | None) -> None:
    """``--sample`` and ``--initial-sample`` against each other (and guard.toml's
    [thresholds]), refused with the option the user typed and its range rather than
    the policy's own field names."""
    if sample is None and first is None:
        return
    from guard.config import load_config, thresholds_from

    base = thresholds_from(load_config(config).thresholds)
    if sample is not None:
        least = first if first is not None else base.initial_sample
        if sample < least:
            source = "--initial-sample" if first is not None else "the first round's size"
            raise ConfigError(f"--sample must be at least {least} ({source}), not {sample}")
    elif first is not None and first > base.max_sample:
        raise ConfigError(
            f"--initial-sample must be at most {base.max_sample} (the sample limit; "
            f"raise it with --sample), not {first}"
        )


def _emit(
    reports: ModuleType, report: Any, output_format: ReportFormat, output: Path | None
) -> None:
    """Print ``report`` in ``output_format``, or write it to ``output``; ``reports`` is the
    module that renders it (guard.checking.render or guard.comparing.render). Text in a
    file is not wrapped."""
    if output_format is ReportFormat.text:
        if output is None:
            reports.to_text(report, stdout)
            return
        buffer = io.StringIO()
        file = Console(file=buffer, width=UNWRAPPED, soft_wrap=True, color_system=None)
        reports.to_text(report, file)
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


@app.command(cls=ThresholdHelp, short_help="Rank CANDIDATES on one sample of STORE.")
def compare(
    store: Annotated[str, typer.Option(help="Store URI, e.g. qdrant+local:PATH?collection=C.")],
    candidate: Annotated[
        list[str], typer.Option(help="Engine URI of a candidate; repeat for each.")
    ],
    baseline: Annotated[
        str | None, typer.Option(help="Engine URI of the engine that wrote the store.")
    ] = None,
    sample: Annotated[int | None, typer.Option(help="Most records to re-embed.", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    k: Annotated[int, typer.Option("--k", help="k of overlap@k and of retrieval.", min=1)] = 10,
    queries: Annotated[
        Path | None,
        typer.Option(help='JSONL of {"query": ..., "relevant": [ids]}; else synthetic queries.'),
    ] = None,
    subcorpus: Annotated[
        int, typer.Option(help="Sampled distractors of the re-index sub-corpus.", min=1)
    ] = 1000,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="Report format.")
    ] = ReportFormat.text,
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
        progress=on_terminal(stderr),
        baseline=baseline,
        sample=sample,
        seed=seed,
        k=k,
        queries=queries,
        subcorpus=subcorpus,
        cache=not no_cache,
    )
    _emit(reports, result, output_format, output)
    if output is not None:
        stderr.print(f"exit {result.exit_code}: report written to {output}", soft_wrap=True)
    raise typer.Exit(result.exit_code)


@app.command(short_help="Serve ENGINE as OpenAI's and Ollama's embedding APIs.")
def serve(
    engine: Annotated[
        str | None, typer.Option(help="Engine URI to serve, options and bridge= included.")
    ] = None,
    follow: Annotated[
        str | None,
        typer.Option(
            metavar="JOB_ID",
            help="Serve a re-index job's baseline until its cutover, its candidate after "
            "(and the baseline again after a rollback), instead of --engine.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)
    ] = 8080,
    max_batch: Annotated[int, typer.Option(help="Most texts per engine call.")] = 128,
    max_inputs: Annotated[int, typer.Option(help="Most texts per request.")] = 2048,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 << 20,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting; more get 503.")] = 256,
    any_model: Annotated[
        bool,
        typer.Option(
            "--any-model",
            help="Answer requests naming any model (default: only the served model's names).",
        ),
    ] = False,
) -> None:
    """Serve ENGINE as OpenAI /v1/embeddings and Ollama /api/embed until SIGTERM/SIGINT.

    A request naming another model than the served one gets 404 in its API's shape,
    unless --any-model. With --follow JOB the engine moves with the job's store; the
    X-Guard-Fingerprint header names the engine that embedded each answer."""
    from guard.serve import Limits
    from guard.serve import serve as run_server

    limits = Limits(max_batch, max_inputs, max_body_bytes, max_queue)
    run_server(
        engine,
        follow=follow,
        host=host,
        port=port,
        limits=limits,
        announce=_announce,
        any_model=any_model,
    )


def _announce(line: str) -> None:
    """Plain and flushed: scripts and tests read the bound address from this line."""
    print(line, file=sys.stderr, flush=True)


@app.command()
def demo(
    limit: Annotated[int, typer.Option(help="Corpus paragraphs to index.", min=1)] = 1000,
    sample: Annotated[int, typer.Option(help="Most records each check re-embeds.")] = 1000,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 7,
) -> None:
    """Everything on embedded defaults: no servers, no downloads."""
    from guard.demo import run_demo

    _check_sample_options(None, sample, None)
    run_demo(stdout, limit=limit, sample_size=sample, seed=seed)


def main() -> None:
    """Console entry point: the single place where errors become exit codes.

    Usage errors (an unknown option, a value out of range) are one line and exit 2, as
    is everything the guard can explain (a GuardError). A reader of stdout that goes
    away early (``| head -1``) ends the output quietly: the command's own exit code
    stands, the verdict's included.
    """
    # torch and llama.cpp may share this process (a sentence-transformers baseline, the
    # demo): spinning OpenMP workers of one starve the other on small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.stdout = ClosedPipeQuiet(sys.stdout)
    try:
        code = app(prog_name="guard", standalone_mode=False)
        sys.stdout.flush()
    except GuardError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # files named on the command line: --output, --config, ...
        _fail(str(exc), 2)
    except CLICK_EXCEPTION as exc:
        _usage_error(exc)
    except typer.Abort:
        _fail("aborted", 1)
    sys.exit(code if isinstance(code, int) else 0)


# Typer raises click's exceptions (its own copy of click in recent versions): the class
# is found through typer's public BadParameter rather than a private module.
CLICK_EXCEPTION: type[Exception] = next(
    kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "ClickException"
)


class ClosedPipeQuiet:
    """sys.stdout, except that a reader gone away (EPIPE) sends the rest to /dev/null:
    no traceback, no "Exception ignored" at exit, and no exit code of its own
    (Python's recipe: on BrokenPipeError, dup2 devnull onto stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _usage_error(exc: Exception) -> NoReturn:
    """Typer's usage errors (unknown option, missing option, bad value) as one line."""
    code = int(getattr(exc, "exit_code", 2))
    ctx = getattr(exc, "ctx", None)
    text = str(exc.format_message())  # type: ignore[attr-defined]
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `guard` or group: the help
        print(text, file=sys.stderr)
        sys.exit(code)
    message = " ".join(text.split())
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    _fail(f"{message}{where}", code)


def _fail(message: str, code: int) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)
