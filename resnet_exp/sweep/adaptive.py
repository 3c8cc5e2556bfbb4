"""Seeds where the ranking is unresolved (`resnet-exp sweep --seeds auto --max-seeds N`): after
3 seeds of every configuration, each round adds one seed to each configuration still tied with
the leader (and one to the leader, so the new seeds pair with it), until no configuration is
tied or every tied one has max_seeds. The tie rule is the analysis's own
(analysis.rank.standing: paired t over common seeds, Holm-corrected), computed in-process from
the finished children; the analysis is imported here, lazily, and it imports no torch.

Each added child carries the tag `seed_reason` saying why it ran; the sweep's summary lists them.

    resnet-exp sweep --data demo --weights none --image-size 32 --max-epochs 2 \
        --freeze-blocks 2,4 --seeds auto --max-seeds 5
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import RunStatus

from resnet_exp import schema as S
from resnet_exp.config import TrainConfig

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedSeed:
    config_hash: str
    seed: int
    reason: str


def standing_of(run_ids: list[str], rows: dict[str, dict | None]) -> pandas.DataFrame | None:
    """The leader and the ties (analysis.rank.standing) over the finished runs among `run_ids`;
    None when no run has finished. `rows` caches each run's row (None: not usable), so a round
    reads only the runs added since the last."""
    import pandas as pd

    from analysis.rank import standing
    from analysis.runs import run_row

    client, finished = MlflowClient(), RunStatus.to_string(RunStatus.FINISHED)
    for run_id in run_ids:
        if run_id not in rows:
            run = client.get_run(run_id)
            usable = run.info.status == finished and S.TEST_ACC in run.data.metrics
            rows[run_id] = run_row(run) if usable else None
    usable_rows = [rows[run_id] for run_id in run_ids if rows[run_id] is not None]
    return standing(pd.DataFrame(usable_rows)) if usable_rows else None


def plan_round(
    table: pandas.DataFrame, max_seeds: int, round_: int
) -> tuple[list[PlannedSeed], str]:
    """The seeds of the next round, each with its reason, and, when there are none, why the
    sweep stops. Every configuration gets its own next seed (its highest + 1), so a newly tied
    configuration first catches up with the leader's seeds and pairs with them."""
    from analysis import columns as C

    leader, others = table.iloc[0], table.iloc[1:]
    tied = others[others[C.TIED]]
    if tied.empty:
        return [], f"resolved: no configuration is tied with the leader {leader[C.LABEL]}"
    open_ = tied[tied[C.N_RUNS] < max_seeds]
    if open_.empty:
        return [], (
            f"max_seeds={max_seeds} reached by every configuration still tied with the leader "
            f"{leader[C.LABEL]}: {', '.join(tied[C.LABEL])}"
        )
    planned = []
    if leader[C.N_RUNS] < max_seeds:
        planned.append(
            PlannedSeed(
                leader[C.CONFIG_HASH],
                int(leader[C.MAX_SEED]) + 1,
                f"round {round_}: the leader after {leader[C.N_RUNS]} seeds, still tied with "
                f"{', '.join(open_[C.LABEL])}: a new seed to pair with theirs",
            )
        )
    for _, row in open_.iterrows():
        planned.append(
            PlannedSeed(
                row[C.CONFIG_HASH],
                int(row[C.MAX_SEED]) + 1,
                f"round {round_}: tied with the leader {leader[C.LABEL]} after {row[C.N_RUNS]} "
                f"seeds (difference {row[C.DIFF]:+.4f}, Holm p {row[C.P_HOLM]:.3g}, "
                f"{row[C.COMPARISON]})",
            )
        )
    return planned, ""


def add_seeds(
    configs: list[TrainConfig],
    run_ids: list[str],
    max_seeds: int,
    train_child: Callable[[TrainConfig, str], tuple[str, bool]],
) -> tuple[list[TrainConfig], str]:
    """Run rounds until resolved or max_seeds: `train_child(config, reason)` trains one child
    (or finds it finished) and returns (run id, whether it finished). Returns the configurations
    added and why the rounds stopped. A failed child stops the rounds: its seed would only be
    planned again."""
    by_hash = {c.config_hash: c for c in configs}
    run_ids, added, round_, rows = list(run_ids), [], 1, {}
    while True:
        table = standing_of(run_ids, rows)
        if table is None:
            return added, "no run finished"
        planned, stop = plan_round(table, max_seeds, round_)
        if not planned:
            log.info("adaptive seeds: %s", stop)
            return added, stop
        for seed in planned:
            config = by_hash[seed.config_hash].replace(seed=seed.seed)
            log.info("adaptive seeds: %s: %s", config.run_name, seed.reason)
            run_id, ok = train_child(config, seed.reason)
            added.append(config)
            run_ids.append(run_id)
            if not ok:
                return added, f"stopped: {config.run_name} failed"
        round_ += 1
