"""``guard monitor [--once]`` and ``guard monitor history``: parse, call, render.

Mounted by guard.cli with ``app.add_typer(monitor_app, name="monitor")``; GuardErrors
become one line and exit code 2 there. ``--once`` exits 0 when every watch is ok, 1 when
any drifts, 2 when any run failed.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

monitor_app = typer.Typer(
    help="Watch stores for drift on a schedule: metrics, history, alerts on change."
)
out = Console()


class Format(StrEnum):
    text = "text"
    json = "json"


ConfigOption = Annotated[
    Path, typer.Option("--config", help="guard.toml with [[watch]] tables and [monitor].")
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]


@monitor_app.callback(invoke_without_command=True)
def monitor(
    ctx: typer.Context,
    config: ConfigOption = Path("guard.toml"),
    once: Annotated[
        bool, typer.Option("--once", help="Run every watch once and exit (0 ok, 1 drift, 2 error).")
    ] = False,
    output_format: FormatOption = Format.text,
) -> None:
    """Run the monitor service (or, with --once, every watch once)."""
    if ctx.invoked_subcommand is not None:
        return
    from guard.config import load_config
    from guard.monitor.service import MonitorService, exit_code

    service = MonitorService(load_config(config))
    if not once:
        service.serve_forever()
        return
    runs = service.run_once()
    code = exit_code(runs)
    if output_format is Format.json:
        print(json.dumps({"exit_code": code, "runs": [run.as_dict() for run in runs]}, indent=2))
    else:
        for run in runs:
            out.print(_run_line(run.as_dict()), highlight=False)
    raise typer.Exit(code)


@monitor_app.command()
def history(
    config: ConfigOption = Path("guard.toml"),
    watch: Annotated[str | None, typer.Option(help="Only this watch.")] = None,
    limit: Annotated[int, typer.Option(help="Most recent runs per watch.")] = 20,
    output_format: FormatOption = Format.text,
) -> None:
    """The trend of each watch's last runs, oldest first."""
    from guard.config import load_config
    from guard.monitor.history import open_history

    dsn = load_config(config if config.exists() else None).monitor.state_dsn
    with open_history(dsn) as store:
        rows = store.trend(watch, limit)
    if output_format is Format.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table("watch", "run", "started", "status", "p1", "median", "upper", "overlap",
                  "new", "auc", "alert")  # fmt: skip
    for row in rows:
        table.add_row(
            row["watch"],
            str(row["id"]),
            row["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
            row["status"] + (f": {row['error']}" if row["error"] else ""),
            *(_number(row[key]) for key in ("cosine_p1", "cosine_median", "bound_upper")),
            _number(row["overlap"]),
            "" if row["new_records"] is None else str(row["new_records"]),
            _number(row["population_auc"]),
            row["alert"] or "",
        )
    out.print(table)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


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
    reasons = [*run["reasons"], *([run["error"]] if run["error"] else [])]
    return "; ".join(facts) + "".join(f"\n  - {reason}" for reason in reasons)
