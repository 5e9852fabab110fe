"""``h2aseg experiment``: methods x seeds from one YAML file -> Table 1, Table 2 and a cost table."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail, sigterm_as_interrupt

#: Exit status of an invocation stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
STOPPED = 130


def experiment(
    config: Path = typer.Option(..., "--config", help="The experiment file (YAML; see experiments/*.yaml)."),
    out: Path = typer.Option(..., "--out", help="Output folder: split, runs/, tables (shared by shards)."),
    shard: str = typer.Option(
        "0/1",
        "--shard",
        help="I/N: take every N-th run starting at the I-th "
        "(0-based); start one process per shard on the same --out.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bars."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the runs and which are done, locked or pending; run nothing."
    ),
    tables_only: bool = typer.Option(
        False,
        "--tables-only",
        help="Run nothing: rewrite the tables and redraw the figures from the runs done so far "
        "(e.g. after shards that ran elsewhere were copied into --out, or processes stopped at a deadline).",
    ),
) -> None:
    """Train, predict and evaluate every (method, seed) run; resumable, and safe to run in parallel."""
    from h2aseg.errors import H2ASegError
    from h2aseg.experiments.plan import parse_shard
    from h2aseg.experiments.runner import plan_lines, run_experiment
    from h2aseg.experiments.spec import load_spec

    def log(msg: str) -> None:
        err_console.print(msg, highlight=False)

    errors = (H2ASegError, OSError)
    try:
        which = parse_shard(shard)
        spec = load_spec(config)
        if dry_run:
            for line in plan_lines(spec, out, which):
                typer.echo(line)
            return
        with sigterm_as_interrupt():
            result = run_experiment(
                spec, out, shard=which, progress=progress, log=log, tables_only=tables_only
            )
    except errors as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        log(f"stopped; the same command continues where this one stopped ({out})")
        raise typer.Exit(code=STOPPED) from None
    if tables_only:
        if not result.tables:
            raise fail(f"{out}: no run of {config} is done yet, so there is no table to write")
        log(f"tables and figures rewritten from the runs done ({result.total} run(s) in all):")
        for path in result.tables:
            log(f"  {path}")
        return
    log(
        f"shard {shard}: {len(result.done)} run(s) done now, {len(result.skipped)} done before, "
        f"{len(result.locked)} locked by other processes, {len(result.failed)} failed (of {result.selected} "
        f"in this shard, {result.total} in all)"
    )
    for path in result.tables:
        log(f"  {path}")
    if result.failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)
