"""A sweep's grid: which depth configurations and seeds, parsed from command-line text, validated
before anything runs, expanded into one TrainConfig per (configuration, seed), and split into
shards. The only home of the sweep's defaults.

    python -c "from resnet_exp.sweep.grid import SweepGrid; print([c.run_name for c in SweepGrid().expand()])"
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from resnet_exp import schema as S
from resnet_exp.config import AUTO, NUM_STAGES, TrainConfig, format_value, parse_blocks
from resnet_exp.errors import ConfigError, ServerUnreachable

GRID_FIELDS = (S.FREEZE_BLOCKS, S.BLOCKS, S.SEED)  # TrainConfig fields the grid decides
AUTO_SEEDS = (
    "auto"  # seeds=auto: AUTO_FIRST_SEEDS of everything, then seeds where the ranking is unresolved
)
AUTO_FIRST_SEEDS = 3  # the fewest seeds a paired t test with 2 degrees of freedom can use
# how a sweep runs its cells: one after another here, or as Ray Tune trials
EXECUTORS = (
    "local",
    "ray",
)
TRIAL_RESOURCE_KEYS = ("cpu", "gpu")


def _parse_freeze_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 0 <= int(p) <= NUM_STAGES for p in parts):
        raise ConfigError(
            f"freeze_blocks={text!r} is not valid: expected integers 0..{NUM_STAGES} "
            "separated by commas, e.g. 0,1,2,3,4"
        )
    return _unique(int(p) for p in parts)


def _parse_blocks_list(text: str) -> tuple[tuple[int, ...], ...]:
    parts = [p for p in str(text).split(";") if p.strip()]
    if not parts:
        raise ConfigError(
            f"blocks={text!r} is not valid: expected one or more block lists separated "
            "by ';', e.g. 2,2,2,2 or 1,1,1,1;2,2,2,2;3,4,6,3"
        )
    return _unique(parse_blocks(p, "blocks") for p in parts)


def _parse_seeds(text: str) -> tuple[int, ...]:
    """'3' -> seeds 0, 1, 2; '0,1,7' (or '7,' for the one seed 7) -> exactly those; 'auto' ->
    the first round of an adaptive sweep, seeds 0, 1, 2 (resnet_exp/sweep/adaptive.py adds more)."""
    text = str(text).strip()
    if text == AUTO_SEEDS:
        return tuple(range(AUTO_FIRST_SEEDS))
    parts = [p.strip() for p in text.split(",") if p.strip()]
    is_count = "," not in text
    if not parts or not all(p.isdigit() for p in parts) or (is_count and int(parts[0]) < 1):
        raise ConfigError(
            f"seeds={text!r} is not valid: expected a count of seeds >= 1 (3 means "
            "seeds 0,1,2), seeds >= 0 separated by commas, e.g. 0,1,7, or 'auto'"
        )
    if is_count:
        return tuple(range(int(parts[0])))
    return _unique(int(p) for p in parts)


def _parse_max_seeds(text: str) -> int:
    text = str(text).strip()
    if not text.isdigit() or int(text) < AUTO_FIRST_SEEDS:
        raise ConfigError(
            f"max_seeds={text!r} is not valid: expected an integer >= {AUTO_FIRST_SEEDS} "
            f"(seeds=auto starts with {AUTO_FIRST_SEEDS} seeds of every configuration)"
        )
    return int(text)


def _parse_shard(text: str) -> tuple[int, int]:
    """'1/3' -> (1, 3): the second of three shards."""
    index, _, count = str(text).strip().partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ConfigError(
            f"shard={text!r} is not valid: expected i/n with 0 <= i < n, e.g. 0/1 "
            "(everything), or 0/2 and 1/2 on two machines"
        )
    return int(index), int(count)


def _parse_executor(text: str) -> str:
    text = str(text).strip()
    if text not in EXECUTORS:
        raise ConfigError(f"executor={text!r} is not valid: expected one of {', '.join(EXECUTORS)}")
    return text


def _parse_ray_address(text: str) -> str:
    """'' (start Ray on this machine), 'auto' (the cluster this machine belongs to) or an address."""
    text = str(text).strip()
    if any(c.isspace() for c in text):
        raise ConfigError(
            f"ray_address={text!r} is not valid: expected '' (start Ray here), 'auto' or "
            "an address such as 10.0.0.5:6379 or ray://head:10001"
        )
    return text


def check_ray_address(address: str) -> None:
    """A cluster's address (host:port, ray://host:port) must answer a TCP connection within a few
    seconds, before anything slow: Ray itself retries an address that does not answer for about
    14 minutes. '' and 'auto' are Ray's to resolve."""
    from resnet_exp.offline import PROBE_TIMEOUT_S, connect_error

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address in ("", AUTO) or not host or not port.isdigit():
        return
    why = connect_error(host.strip("[]"), int(port))
    if why is not None:
        raise ServerUnreachable(
            f"ray_address={address!r}: no Ray cluster answers there ({why} within "
            f"{PROBE_TIMEOUT_S:.0f} s): start its head with `ray start --head`, give the head's "
            "address, or leave ray_address empty to start Ray here (see docs/cluster.md)"
        )


def _parse_trial_resources(text: str) -> dict[str, float]:
    """'cpu=2,gpu=0.25' -> {'cpu': 2.0, 'gpu': 0.25}; 'auto' -> {} (the executor decides: one CPU,
    plus one GPU where the cluster has GPUs)."""
    text = str(text).strip()
    if text == AUTO:
        return {}
    accepted = "expected 'auto' or key=value pairs with keys cpu, gpu and positive numbers, e.g. cpu=2,gpu=0.25"
    resources: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if (
            key not in TRIAL_RESOURCE_KEYS
            or key in resources
            or not amount > 0
            or amount == float("inf")
        ):
            raise ConfigError(f"trial_resources={text!r} is not valid at {part!r}: {accepted}")
        resources[key] = amount
    return resources


def _parse_count(name: str, least: int, meaning: str):
    def parse(text: str) -> int:
        text = str(text).strip()
        if not text.isdigit() or int(text) < least:
            raise ConfigError(
                f"{name}={text!r} is not valid: expected an integer >= {least}{meaning}"
            )
        return int(text)

    return parse


def _unique(values) -> tuple:
    """In the given order, each value once (a repeated value would train the same run twice)."""
    return tuple(dict.fromkeys(values))


def _option(default: str, help: str, parse) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse})


@dataclass(frozen=True)
class SweepGrid:
    """The grid as command-line text; parsed values come from the properties."""

    freeze_blocks: str = _option(
        "0,1,2,3,4", "freeze_blocks values to sweep, e.g. 0,1,2,3,4.", _parse_freeze_list
    )
    blocks: str = _option(
        "2,2,2,2",
        "Block lists to sweep, separated by ';', e.g. 1,1,1,1;2,2,2,2;3,4,6,3.",
        _parse_blocks_list,
    )
    seeds: str = _option(
        "3", "A count N (seeds 0..N-1) or a comma-separated list of seeds.", _parse_seeds
    )
    max_seeds: str = _option(
        "5",
        "With seeds=auto: the most seeds any configuration gets; ignored otherwise.",
        _parse_max_seeds,
    )
    shard: str = _option(
        "0/1",
        "i/n: run every n-th (configuration, seed) starting at i, so n "
        "machines share one sweep (point them at one tracking server).",
        _parse_shard,
    )
    # How the cells run (docs/cluster.md). None of these changes sweep_id or a child's
    # config_hash: a local and a ray sweep of one grid share a parent and skip each other's cells.
    executor: str = _option(
        "local",
        "local: train the cells one after another in this process; ray: "
        "one Ray Tune trial per cell (docs/cluster.md).",
        _parse_executor,
    )
    ray_address: str = _option(
        "",
        "executor=ray: '' starts Ray on this machine; 'auto' or an address "
        "(host:port, ray://host:10001) joins that cluster.",
        _parse_ray_address,
    )
    trial_resources: str = _option(
        "auto",
        "executor=ray: what one trial reserves, e.g. cpu=2,gpu=0.25 "
        "(fractional GPUs pack trials); auto: cpu=1, plus gpu=1 where "
        "the cluster has GPUs.",
        _parse_trial_resources,
    )
    max_concurrent_trials: str = _option(
        "0",
        "executor=ray: most trials at once (0: as many as the resources allow).",
        _parse_count("max_concurrent_trials", 0, " (0: as many as the resources allow)"),
    )
    max_failures: str = _option(
        "2",
        "executor=ray: retries of a trial whose worker died (Ray's "
        "FailureConfig); the retry resumes the cell.",
        _parse_count("max_failures", 0, " (retries of a trial whose worker died)"),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["parse"](getattr(self, f.name))  # raises ConfigError naming the value
        if self.adaptive and self.shard.strip() != "0/1":
            raise ConfigError(
                f"seeds=auto with shard={self.shard!r}: an adaptive sweep decides each "
                "round from all the runs of the one before, so it runs as one shard (0/1)"
            )

    @property
    def adaptive(self) -> bool:
        """seeds=auto: seeds are added where the ranking is unresolved (resnet_exp/sweep/adaptive.py)."""
        return str(self.seeds).strip() == AUTO_SEEDS

    def parsed(self, name: str) -> Any:
        return self.__dataclass_fields__[name].metadata["parse"](getattr(self, name))

    def expand(self, base: TrainConfig | None = None) -> list[TrainConfig]:
        """Every (configuration, seed) of the grid, seed-major: the first seed of every
        configuration trains before any second seed, so a half-done sweep already compares
        all configurations."""
        base = base or TrainConfig()
        return [
            base.replace(blocks=blocks, freeze_blocks=freeze, seed=seed)
            for seed in self.parsed("seeds")
            for blocks in self.parsed("blocks")
            for freeze in self.parsed(S.FREEZE_BLOCKS)
        ]

    def shard_of(self, configs: list[TrainConfig]) -> list[TrainConfig]:
        """This shard's share: round-robin, so every shard gets a mix of cheap and costly runs."""
        index, count = self.parsed("shard")
        return configs[index::count]


def sweep_id(configs: list[TrainConfig], adaptive: str = "") -> str:
    """Identity of a whole grid (not of a shard): equal for every shard and every re-run. An
    adaptive sweep's grid grows as it runs, so it is named by its first round plus `adaptive`
    (e.g. 'auto:5'), which keeps it apart from a fixed sweep of the same first seeds."""
    keys = sorted(f"{c.config_hash}:{c.seed}" for c in configs) + ([adaptive] if adaptive else [])
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def grid_entries(configs: list[TrainConfig]) -> list[dict[str, Any]]:
    """The grid as the parent run's sweep.json lists it; analysis selects the sweep's runs by it."""
    return [
        {
            S.TAG_CONFIG_HASH: c.config_hash,
            S.SEED: c.seed,
            "run_name": c.run_name,
            S.BLOCK: c.block,
            S.BLOCKS: format_value(c.blocks),
            S.FREEZE_BLOCKS: c.freeze_blocks,
            S.TAG_DEPTH: c.depth_label,
        }
        for c in configs
    ]


def grid_defaults_as_text() -> dict[str, str]:
    return {f.name: f.default for f in dataclasses.fields(SweepGrid)}


def grid_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(SweepGrid)}


def split_sweep_values(values: Mapping[str, Any]) -> tuple[SweepGrid, TrainConfig]:
    """CLI values -> (grid, base training config). The grid owns freeze_blocks, blocks and seed."""
    grid_names = set(grid_defaults_as_text())
    grid = SweepGrid(**{k: v for k, v in values.items() if k in grid_names})
    base = TrainConfig.from_text({k: v for k, v in values.items() if k not in grid_names})
    return grid, base
