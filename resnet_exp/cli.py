"""The `resnet-exp` command: click options -> a config -> train, sweep, analyze or predict.
Nothing else lives here.

Options are generated from TrainConfig's fields, so names, defaults and help exist once.

    resnet-exp train --help
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from analysis.config import AnalysisConfig
from analysis.config import defaults_as_text as analysis_defaults
from analysis.config import option_help as analysis_help
from resnet_exp.config import TrainConfig, defaults_as_text, option_help
from resnet_exp.errors import UserError
from resnet_exp.schema import ANALYSIS_FOLDER, REPORT_HTML, REPORT_MD, TEST_ACC
from resnet_exp.sweep.grid import (
    GRID_FIELDS,
    check_ray_address,
    grid_defaults_as_text,
    grid_help,
    split_sweep_values,
)

# What `--help` shows as each option's value, by the field's type annotation.
METAVARS = {
    "int": "INTEGER",
    "float": "FLOAT",
    "tuple[int, ...]": "N,N,N,N",
    "int | None": "auto|INTEGER",
}


def config_options(exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Add one `--name-with-dashes` option per TrainConfig field (but `exclude`), default shown
    as text. Values arrive as text and TrainConfig parses them, so every message has one home."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    defaults = {k: v for k, v in defaults_as_text().items() if k not in exclude}
    return text_options(
        defaults, option_help(), {k: METAVARS.get(t, "TEXT") for k, t in types.items()}
    )


def text_options(
    defaults: dict[str, str], help_texts: dict[str, str], metavars: dict[str, str]
) -> Callable[[Callable], Callable]:
    def add(command: Callable) -> Callable:
        for name, default in reversed(defaults.items()):
            flag = "--" + name.replace("_", "-")
            command = click.option(
                flag,
                name,
                default=default,
                show_default=True,
                help=help_texts[name],
                metavar=metavars.get(name, "TEXT"),
            )(command)
        return command

    return add


def user_message(err: UserError) -> str:
    """The error's own message. A DataLoader worker re-raises it with the worker's traceback
    folded into the text; keep only what follows the last '<ErrorType>: '."""
    text, marker = str(err), f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def disk_failure(err: OSError) -> Exception:
    """A full disk, a read-only filesystem or a refused permission as one line naming the path;
    any other OSError is a bug and keeps its traceback."""
    from resnet_exp.disk import disk_error, is_disk_error

    return click.ClickException(str(disk_error(err))) if is_disk_error(err) else err


class _LightningInterruptLine(logging.Filter):
    """Lightning announces a Ctrl-C with a line of its own; ours names the run instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in record.getMessage()


class _Commands(click.Group):
    """What every command answers alike, in one line each:
    - Ctrl-C or SIGTERM: which run it marked KILLED (or that none was open yet), then the exit
      status of a process ended by that signal (130 or 143); SIGTERM is an exception from the
      command's start (signals.sigterm_raises), so that work under way cleans up;
    - a tracking server that is unreachable past MLflow's retry budget, or that refuses the
      credentials: the server, and what could not be done."""

    def invoke(self, ctx: click.Context) -> Any:
        from resnet_exp.signals import RunInterrupted, Terminated, sigterm_raises

        try:
            with sigterm_raises():
                return super().invoke(ctx)
        except RunInterrupted as err:
            click.echo(f"interrupted: run {err.run_id} marked KILLED", err=True)
            raise SystemExit(err.exit_code) from None
        except (KeyboardInterrupt, Terminated) as err:
            click.echo("interrupted before any run was opened: nothing recorded", err=True)
            raise SystemExit(130 if isinstance(err, KeyboardInterrupt) else err.code) from None
        except Exception as err:
            from resnet_exp.tracking.server import TrackingLost, tracking_failure

            failure = tracking_failure(err)
            if failure is None:
                raise
            from resnet_exp.tracking.store import tracking_uri

            said = err if isinstance(err, TrackingLost) else failure  # a lost run names itself
            raise click.ClickException(said.message(tracking_uri())) from None


def _check_before_work(config: TrainConfig) -> None:
    """What fails in seconds, before the heavy imports, the data and Ray: a tracking server with
    a wrong address or password, and a Hub dataset that cannot be had offline."""
    from resnet_exp.tracking.server import check_tracking_server

    check_tracking_server()
    if config.data_source == "hub":
        from resnet_exp.offline import check_hub_dataset

        check_hub_dataset(config.data)


@click.group(cls=_Commands)
def main() -> None:
    """ResNet depth experiments tracked in MLflow."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_LightningInterruptLine())


@main.command()
@config_options()
def train(**values: Any) -> None:
    """Train one ResNet configuration and record it as one MLflow run."""
    try:
        config = TrainConfig.from_text(values)
        _check_before_work(config)
        from resnet_exp.tracking import training_run as tracking  # heavy imports after validation
        from resnet_exp.training.train import train as run_training

        result = run_training(config)
    except UserError as err:
        raise click.ClickException(user_message(err)) from None
    except OSError as err:
        raise disk_failure(err) from None
    acc = result.metrics.get(TEST_ACC)
    click.echo(
        f"run {result.run_id} finished: test_acc={acc:.4f}"
        if acc is not None
        else f"run {result.run_id} finished"
    )
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    from resnet_exp.tracking.store import browse_hint

    click.echo(f"compare runs:    {browse_hint(tracking.tracking_uri())}")
    click.echo(f"curves:          tensorboard --logdir {tracking.logs_dir(config)}")
    registered = result.registered
    if registered is None:
        click.echo(f"model:           {result.model_uri} (not registered)")
        return
    aliases = f" (now {', '.join(registered.aliases)})" if registered.aliases else ""
    click.echo(f"model:           {registered.uri}{aliases}")
    click.echo(
        f"predict:         resnet-exp predict --model models:/{registered.name}@champion IMAGE..."
    )


@main.command()
@click.option(
    "--model",
    "model_uri",
    required=True,
    metavar="URI",
    help="An MLflow model URI: models:/<name>@champion, models:/<name>/<version>, runs:/<id>/<run name>.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per image, with the top 5."
)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def predict(model_uri: str, as_json: bool, images: tuple[Path, ...]) -> None:
    """Label image files (or every image in given folders) with a logged or registered model.
    Unreadable files are listed after the labels (exit status 3); if none is readable, exit 1."""
    # heavy imports after the arguments are checked
    from resnet_exp.model import predict as prediction

    try:
        files = prediction.image_files(images)
        found = prediction.predict_files(model_uri, files)
    except UserError as err:
        raise click.ClickException(user_message(err)) from None
    click.echo(prediction.as_json(found) if as_json else prediction.as_text(found))
    if found.unreadable:
        click.echo(prediction.unreadable_text(found), err=True)
        raise SystemExit(prediction.SOME_UNREADABLE_EXIT)


@main.command()
@text_options(grid_defaults_as_text(), grid_help(), {"shard": "I/N"})
@config_options(exclude=GRID_FIELDS)
def sweep(**values: Any) -> None:
    """Train every (configuration, seed) of a grid as child runs of one parent run; resumable."""
    try:
        grid, base = split_sweep_values(values)
        if grid.parsed("executor") == "ray":
            check_ray_address(grid.parsed("ray_address"))
        _check_before_work(base)
        from resnet_exp.sweep.run import run_sweep  # heavy imports after validation

        result = run_sweep(grid, base)
    except UserError as err:
        raise click.ClickException(user_message(err)) from None
    except OSError as err:
        raise disk_failure(err) from None
    from resnet_exp.sweep.run import FAILED, SKIPPED, TRAINED

    click.echo(
        f"sweep {result.sweep_id} (parent run {result.parent_run_id}), shard {grid.shard} of a "
        f"{result.grid_size}-run grid: {result.count(TRAINED)} trained, "
        f"{result.count(SKIPPED)} skipped (already finished), {result.count(FAILED)} failed"
    )
    for failure in result.failed:
        click.echo(f"  FAILED {failure.run_name} (run {failure.run_id}): {failure.error}")
    if grid.adaptive:
        for added in result.added:
            click.echo(f"  added seed {added.run_name} ({added.outcome}): {added.reason}")
        click.echo(f"  seeds stopped: {result.stop_reason}")
    if result.summary:  # the grid has ended: its analysis is on the parent
        click.echo(f"result:          {plain_text(result.summary)}")
        click.echo(f"report:          the parent run's artifacts, {ANALYSIS_FOLDER}/{REPORT_HTML}")
        click.echo("learning curves: the experiment's Views menu, the sweep's 'Learning curves'")
    else:
        click.echo(f"rank:            resnet-exp analyze --sweep-run-id {result.parent_run_id}")
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} of {len(result.outcomes)} children failed; "
            "run the same command again to retry them"
        )


@main.command()
@text_options(analysis_defaults(), analysis_help(), {"sweep_run_id": "RUN_ID"})
def analyze(**values: Any) -> None:
    """Rank depth configurations from their MLflow runs: ranking.csv, report.md/.html and plots."""
    try:
        config = AnalysisConfig.from_text(values)
        import analysis  # heavy imports (pandas, scipy, matplotlib) after validation

        result = analysis.analyze(config)
    except UserError as err:
        raise click.ClickException(user_message(err)) from None
    click.echo(analysis.format_ranking(result.ranking))
    click.echo(f"\n{result.answer}\n")
    click.echo(f"report:          {result.output_folder / REPORT_HTML} (and {REPORT_MD})")
    click.echo(f"analysis run:    {result.run_id}")
    click.echo(f'learning curves: the experiment\'s Views menu, "{result.view}"')


def plain_text(markdown: str) -> str:
    """A description's markdown for a terminal: no bold marks, a link as its text."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown.replace("**", ""))


def run() -> None:
    """The `resnet-exp` command as a process: `main`, and after Ctrl-C or SIGTERM (exit 130 or
    143, every run closed KILLED and every temporary folder removed by then) an exit that skips
    the interpreter's teardown, which spends 1-2 s unloading torch and Lightning: so that the
    process ends within 2 s of the signal."""
    try:
        main()
    except SystemExit as done:
        if done.code not in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            raise
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(done.code)
