"""``guard monitor [--once]`` and ``guard monitor history``: parse, call, render.

Mounted by guard.cli with ``app.add_typer(monitor_app, name="monitor")``; GuardErrors
become one line and exit code 2 there. ``--once`` exits 0 when every watch is ok, 1 when
any drifts, 2 when any run failed.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

monitor_app = typer.Typer(
    rich_markup_mode=None,  # plain help, as guard.cli's
    help="Watch stores for drift on a schedule: metrics, history, alerts on change.",
    short_help="Watch stores for drift on a schedule.",
)
# Nothing written to a file or a pipe wraps (guard.cli's stdout does the same).
_tty = sys.stdout.isatty()
out = Console(soft_wrap=not _tty, width=None if _tty else 10_000)


class Format(StrEnum):
    text = "text"
    json = "json"


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="guard.toml with [[watch]] and [monitor] tables (default ./guard.toml).",
    ),
]
DEFAULT_CONFIG = Path("guard.toml")
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]


@monitor_app.callback(invoke_without_command=True)
def monitor(
    ctx: typer.Context,
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run every watch once and exit (0 ok, 1 drift, 2 error).")
    ] = False,
    output_format: FormatOption = Format.text,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Embed every sampled text afresh.")
    ] = False,
) -> None:
    """Run the monitor service (or, with --once, every watch once)."""
    if ctx.invoked_subcommand is not None:
        return
    from guard.config import load_config
    from guard.monitor.service import MonitorService, exit_code

    settings = load_config(config or DEFAULT_CONFIG)
    if no_cache:
        settings.cache.enabled = False
    service = MonitorService(settings)
    if not once:
        service.serve_forever()
        return
    runs = service.run_once()
    code = exit_code(runs)
    if output_format is Format.json:
        print(json.dumps({"exit_code": code, "runs": [run.as_dict() for run in runs]}, indent=2))
    else:
        for run in runs:
            out.print(_run_line(run.as_dict()), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


@monitor_app.command()
def history(
    config: ConfigOption = None,
    watch: Annotated[str | None, typer.Option(help="Only this watch.")] = None,
    limit: Annotated[int, typer.Option(help="Most recent runs per watch.")] = 20,
    output_format: FormatOption = Format.text,
) -> None:
    """The trend of each watch's last runs, oldest first."""
    from guard.config import load_config
    from guard.monitor.history import open_history

    # Only [monitor] state_dsn matters here; without a config, GUARD_STATE_DSN decides.
    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    dsn = load_config(config).monitor.state_dsn
    with open_history(dsn) as store:
        rows = store.trend(watch, limit)
    if output_format is Format.json:
        print(json.dumps(rows, indent=2, default=lambda value: value.isoformat()))
        return
    # Plain aligned columns: readable in a terminal, in a pipe and in a CI log alike.
    width = max([len("watch"), *(len(row["watch"]) for row in rows)])
    header = ("started (UTC)", "status", "cos p1", "median", "upper", "overlap", "new", "auc")
    out.print(
        f"{'watch':<{width}}  {header[0]:<19}  {header[1]:<6}"
        + "".join(f"  {name:>7}" for name in header[2:])
        + "  alert",
        highlight=False,
        soft_wrap=True,
    )
    for row in rows:
        numbers = [row[key] for key in ("cosine_p1", "cosine_median", "bound_upper", "overlap")]
        cells = [_number(value) for value in numbers]
        cells += [_count(row["new_records"]), _number(row["population_auc"])]
        out.print(
            f"{row['watch']:<{width}}  {row['started_at']:%Y-%m-%d %H:%M:%S}  {row['status']:<6}"
            + "".join(f"  {cell:>7}" for cell in cells)
            + f"  {row['alert'] or ''}"
            + (f"  {row['error']}" if row["error"] else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _run_line(run: dict[str, Any]) -> str:
    sample = run["sample"] or {}
    facts = [f"{run['watch']}: {run['status']}"]
    if sample.get("cosine_median") is not None:
        facts.append(
            f"cosine p1 {sample['cosine_p1']:.4f} median {sample['cosine_median']:.4f} "
            f"over {sample['n']} records"
        )
    if run["new_records"] is not None:
        facts.append(f"{run['new_records']} new records")
    if run["population"]:
        facts.append(f"population AUC {run['population']['auc']:.3f}")
    if (run["cache"] or {}).get("enabled") and sample.get("n"):
        facts.append(f"{run['cache']['hits']} of {sample['n']} sampled vectors from the cache")
    reasons = [*run["reasons"], *([run["error"]] if run["error"] else [])]
    return "; ".join(facts) + "".join(f"\n  - {reason}" for reason in reasons)
