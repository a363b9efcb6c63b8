"""``guard reindex ...``: each command parses, calls one library function and renders.

Mounted by guard.cli with ``app.add_typer(reindex_app, name="reindex")``; GuardErrors
become one line and an exit code there. ``verify`` exits 1 when the target is not yet
complete and right.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from guard.errors import ConfigError
from guard.progress import on_terminal

reindex_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as guard.cli's
    help="Plan, run, verify and switch re-index jobs (batched, resumable, atomic cutover).",
    short_help="Plan, run, verify and switch re-index jobs.",
)
# Nothing written to a file or a pipe wraps (guard.cli's stdout does the same).
_tty = sys.stdout.isatty()
out = Console(soft_wrap=not _tty, width=None if _tty else 10_000)

JobId = Annotated[
    str, typer.Argument(metavar="JOB_ID", help="Job id (or its first 8+ hex digits).")
]


class Format(StrEnum):
    text = "text"
    json = "json"


FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]
DEFAULT_MAX_PENDING = 10_000  # guard.reindex.switch's, kept here so help needs no import
DEFAULT_MAX_OUTAGE = 120.0  # guard.reindex.patience's, likewise
MaxPending = Annotated[
    int,
    typer.Option(
        min=0,
        help="Refuse when more records than this changed since the last catch-up "
        "(they are re-embedded while writers wait).",
    ),
]


def _json(data: dict[str, Any]) -> None:
    out.print_json(json.dumps(data, default=str))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds == float("inf"):
        return "never (rate 0)"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@reindex_app.command()
def plan(
    store: Annotated[str | None, typer.Option(help="Source store URI.")] = None,
    candidate: Annotated[str | None, typer.Option(help="Candidate engine URI.")] = None,
    from_report: Annotated[
        Path | None, typer.Option(help="A `guard check --format json` report.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Records per leased batch.")] = 1000,
    window: Annotated[
        str | None, typer.Option(help="Allowed hours HH:MM-HH:MM (worker's local time).")
    ] = None,
    max_rate: Annotated[
        float | None,
        typer.Option(help="Records per second at most, all workers of the job together."),
    ] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts per batch before failing.")] = 5,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Engine the stored vectors were made with (checked against them): rollback "
            "re-embeds writes made since cutover with it, serve --follow serves it."
        ),
    ] = None,
    output_format: FormatOption = Format.text,
) -> None:
    """Record a job, cut the source into batches and create the empty target."""
    from guard import api

    result = api.plan(
        store=store,
        candidate=candidate,
        from_report=from_report,
        batch_size=batch_size,
        window=window,
        max_rate=max_rate,
        max_attempts=max_attempts,
        baseline=baseline,
    )
    if output_format is Format.json:
        _json(result.as_dict())
        return
    out.print(f"job {result.job_id}", highlight=False)
    out.print(f"target     {result.target}", highlight=False)
    out.print(f"records    {result.records} in {result.batches} batches", highlight=False)
    out.print(
        f"estimate   {_duration(result.estimated_seconds)} at {result.measured_rate:.1f} texts/s"
        + (f" (limited to {result.max_rate:g}/s)" if result.max_rate else ""),
        highlight=False,
    )
    if result.window:
        out.print(f"window     {result.window}", highlight=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)
    out.print(f"next: guard reindex run {result.job_id}", highlight=False)


@reindex_app.command()
def run(
    job_id: JobId,
    lease_seconds: Annotated[
        float, typer.Option(help="Lease length; a dead worker's batches return after it.")
    ] = 60.0,
    output_format: FormatOption = Format.text,
    config: Annotated[
        Path | None, typer.Option(help="guard.toml whose [cache] table the run uses.")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Embed every text afresh; leave the cache alone.")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run as Ray actors: auto, local or ray://HOST:PORT (extra `ray`).",
        ),
    ] = None,
    actors: Annotated[int | None, typer.Option(help="Ray actors (with --ray).", min=1)] = None,
    cpus_per_actor: Annotated[
        float, typer.Option(help="CPUs Ray reserves per actor (with --ray).")
    ] = 1.0,
    gpus_per_actor: Annotated[
        float, typer.Option(help="GPUs Ray reserves per actor (with --ray).")
    ] = 0.0,
    max_outage: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Wait this long for a store or state database that went away mid-run, "
            "then stop (exit 6: the store, 7: the state database).",
        ),
    ] = DEFAULT_MAX_OUTAGE,
) -> None:
    """Work on the job until it is done, paused or outside its window; safe to kill."""
    from guard import api

    progress = on_terminal(Console(stderr=True))
    if ray is None:
        if actors is not None or (cpus_per_actor, gpus_per_actor) != (1.0, 0.0):
            raise ConfigError("--actors, --cpus-per-actor and --gpus-per-actor need --ray")
        result: Any = api.run(
            job_id,
            lease_seconds=lease_seconds,
            config=config,
            cache=not no_cache,
            progress=progress,
            max_outage=max_outage,
        )
    else:
        result = api.run_ray(
            job_id,
            address=ray,
            actors=actors or 1,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            lease_seconds=lease_seconds,
            progress=progress,
            max_outage=max_outage,
        )
    if output_format is Format.json:
        _json(result.as_dict())
    else:
        from_cache = (
            f", {result.cache['hits']} of {result.cache['hits'] + result.cache['misses']} "
            "vectors from the cache"
            if ray is None and result.cache["enabled"]
            else ""
        )
        on_ray = f" by {result.actors} Ray actors ({result.restarted} restarted)" if ray else ""
        out.print(
            f"{result.stopped}: {result.batches_done} batches, {result.written} written, "
            f"{result.skipped} skipped, {result.failed_batches} failed batches{from_cache}"
            f"{on_ray}",
            highlight=False,
            soft_wrap=True,
        )
    if result.stopped == "failed":
        raise typer.Exit(1)


@reindex_app.command()
def status(job_id: JobId, output_format: FormatOption = Format.text) -> None:
    """Progress, rate, ETA and failures by reason."""
    from guard import api

    result = api.status(job_id)
    if output_format is Format.json:
        _json(result.as_dict())
        return
    total = max(result.records, 1)
    out.print(f"job {result.job_id}  {result.state}{' (paused)' if result.paused else ''}")
    out.print(f"{result.source} -> {result.target}", highlight=False)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=min(result.done, total), width=40),
        f"{100 * min(result.done, total) / total:.0f}%",
    )
    out.print(bar)
    rate = f"{result.rate:.1f} records/s" if result.rate else "no rate yet"
    out.print(
        f"{result.done}/{result.records} records ({result.written} written, "
        f"{result.skipped} skipped), {rate}, ETA {_duration(result.eta_seconds)}",
        highlight=False,
    )
    out.print("batches: " + ", ".join(f"{n} {s}" for s, n in sorted(result.batches.items())))
    if result.skipped_by_reason:
        table = Table("skipped: reason", "records")
        for reason, count in result.skipped_by_reason.items():
            table.add_row(reason, str(count))
        out.print(table)
    for failed in result.failed_batches:
        out.print(
            f"failed batch {failed['batch']} after {failed['attempts']} attempts: "
            f"{failed['error']}",
            highlight=False,
        )


@reindex_app.command()
def pause(job_id: JobId) -> None:
    """Stop workers before their next chunk; `resume` lets them go on."""
    from guard import api

    out.print(f"paused {api.pause(job_id)}")


@reindex_app.command()
def resume(job_id: JobId) -> None:
    """Let workers go on (failed batches get a fresh set of attempts); start `run` again."""
    from guard import api

    out.print(f"resumed {api.resume(job_id)}")


@reindex_app.command()
def verify(
    job_id: JobId,
    sample: Annotated[int, typer.Option(help="Target vectors re-embedded and compared.")] = 64,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    accept_skipped: Annotated[
        bool, typer.Option(help="Records without text may be absent from the target.")
    ] = False,
    output_format: FormatOption = Format.text,
) -> None:
    """Exit 0 only when the target holds exactly the source ids, texts and vectors."""
    from guard import api

    result = api.verify(job_id, sample=sample, seed=seed, accept_skipped=accept_skipped)
    if output_format is Format.json:
        _json(result.as_dict())
    else:
        verdict = "ok" if result.ok else "NOT OK"
        out.print(
            f"{verdict}: {result.target_records} target records for {result.source_records} "
            f"source records, {result.sampled} vectors re-embedded"
            + (f" (min cosine {result.min_cosine:.6f})" if result.min_cosine is not None else ""),
            highlight=False,
        )
        for reason in result.reasons:
            out.print(f"- {reason}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@reindex_app.command("catch-up")
def catch_up(job_id: JobId, output_format: FormatOption = Format.text) -> None:
    """Apply source inserts, updates and deletes made since the job started."""
    from guard import api

    result = api.catch_up(job_id)
    if output_format is Format.json:
        _json(result.as_dict())
        return
    out.print(
        f"inserted {result.inserted}, updated {result.updated}, deleted {result.deleted}, "
        f"skipped {result.skipped}"
        + (
            f", rows of other collections copied {result.others_copied}"
            if result.others_copied
            else ""
        ),
        highlight=False,
    )


@reindex_app.command()
def cutover(
    job_id: JobId,
    alias: Annotated[
        str | None,
        typer.Option(
            help="Qdrant: the alias the application queries (when the source "
            "URI names a real collection)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Switch without verifying first.")] = False,
    accept_skipped: Annotated[
        bool, typer.Option(help="Records without text may be absent from the target.")
    ] = False,
    max_pending: MaxPending = DEFAULT_MAX_PENDING,
) -> None:
    """Switch readers to the target atomically (verifies first). Writes made since the
    last catch-up are re-embedded into the target while writers wait (readers never do)."""
    from guard import api

    result = api.cutover(
        job_id, alias=alias, force=force, accept_skipped=accept_skipped, max_pending=max_pending
    )
    out.print(
        f"cut over: {result.live} (kept until cleanup: {result.kept}){_carried(result)}",
        highlight=False,
    )


@reindex_app.command()
def rollback(
    job_id: JobId,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Engine the original vectors were made with (default: the job's, from "
            "plan --baseline): writes since cutover are re-embedded with it."
        ),
    ] = None,
    discard_writes: Annotated[
        bool,
        typer.Option("--discard-writes", help="Roll back without the writes made since cutover."),
    ] = False,
    max_pending: MaxPending = DEFAULT_MAX_PENDING,
) -> None:
    """Switch readers back to the original data, with the writes made since cutover."""
    from guard import api

    result = api.rollback(
        job_id, baseline=baseline, discard_writes=discard_writes, max_pending=max_pending
    )
    out.print(
        f"rolled back: {result.live} (kept until cleanup: {result.kept}){_carried(result)}",
        highlight=False,
    )


def _carried(result: Any) -> str:
    carried = result.carried
    if carried is None:
        return ""
    text = (
        f"; writes carried over: {carried.inserted} inserted, {carried.updated} updated,"
        f" {carried.deleted} deleted"
    )
    text += f", {carried.skipped} skipped" if carried.skipped else ""
    return text + f" ({result.held} of them while writers waited)"


@reindex_app.command()
def cleanup(job_id: JobId) -> None:
    """Drop what is not live: the old data after cutover, else the target."""
    from guard import api

    result = api.cleanup(job_id)
    out.print(f"dropped {result.kept}; live: {result.live}", highlight=False)
