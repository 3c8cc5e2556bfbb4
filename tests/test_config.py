"""Config: one home for defaults (MLproject and CLI agree), parsing, validation messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO
from resnet_exp.cli import main
from resnet_exp.config import TrainConfig, defaults_as_text, format_value
from resnet_exp.errors import ConfigError


def mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def test_mlproject_defaults_equal_the_cli_defaults():
    params = mlproject()["entry_points"]["main"]["parameters"]
    assert {k: str(v["default"]) for k, v in params.items()} == defaults_as_text()


def test_analyze_parameters_agree_in_mlproject_cli_and_docs():
    from analysis.config import defaults_as_text as analysis_defaults

    entry = mlproject()["entry_points"]["analyze"]
    assert {k: str(v["default"]) for k, v in entry["parameters"].items()} == analysis_defaults()
    assert {p.name: p.default for p in main.commands["analyze"].params} == analysis_defaults()
    study = (REPO / "docs" / "study.md").read_text()  # the analysis's parameter table
    for name, default in analysis_defaults().items():
        assert f"--{name.replace('_', '-')} {{{name}}}" in entry["command"]
        assert f"| `{name}` | `{default}` |" in study, name


def test_cli_defaults_come_from_the_config():
    command = main.commands["train"]
    cli_defaults = {p.name: p.default for p in command.params}
    assert cli_defaults == defaults_as_text()


def test_mlproject_command_passes_every_parameter_to_its_option():
    entry = mlproject()["entry_points"]["main"]
    assert entry["command"].startswith("python -m resnet_exp train")
    for name in entry["parameters"]:
        assert f"--{name.replace('_', '-')} {{{name}}}" in entry["command"]


def test_documented_defaults():
    c = TrainConfig()
    assert (c.data, c.freeze_blocks, c.blocks, c.weights) == (
        "lucabaggi/animal-wildlife",
        3,
        (2, 2, 2, 2),
        "imagenet",
    )
    assert (c.batch_size, c.learning_rate, c.max_epochs, c.image_size) == (32, 3e-5, 30, 224)
    assert (c.early_stopping_patience, c.seed) == (10, 42)
    assert c.block == "basic"


def test_text_round_trip():
    text = {
        "freeze_blocks": "2",
        "blocks": "3, 4, 6, 3",
        "learning_rate": "0.0001",
        "num_workers": "auto",
    }
    c = TrainConfig.from_text(text)
    assert c.blocks == (3, 4, 6, 3) and c.freeze_blocks == 2 and c.num_workers is None
    assert TrainConfig.from_text(c.to_params()) == c
    assert (
        format_value(3e-5) == "3e-5" and format_value(0.1) == "0.1" and format_value(1e20) == "1e20"
    )
    # no rounding: the hash sees the real value
    assert format_value(1.2345678e-4) == "0.00012345678"
    assert format_value(2.0) == "2"


def test_names_and_hash():
    c = TrainConfig(data="demo", freeze_blocks=2, seed=0)
    assert c.run_name == "r18-b2222-f2-s0"
    assert TrainConfig(blocks=(3, 4, 6, 3)).arch_name == "r34"
    assert TrainConfig(blocks=(1, 12, 1, 1), freeze_blocks=0).depth_label == "b1-12-1-1-f0"
    assert c.config_hash == c.replace(seed=7, num_workers=3, output_dir="elsewhere").config_hash
    assert c.config_hash != c.replace(freeze_blocks=3).config_hash
    assert (
        TrainConfig(data="lucabaggi/animal-wildlife").default_experiment_name
        == "resnet-exp-animal-wildlife"
    )


def test_bottleneck_names():
    resnet50 = TrainConfig(
        data="demo", block="bottleneck", blocks=(3, 4, 6, 3), freeze_blocks=2, seed=0
    )
    assert resnet50.run_name == "r50-bn3463-f2-s0" and resnet50.depth_label == "bn3463-f2"
    assert resnet50.replace(blocks=(3, 4, 23, 3)).arch_name == "r101"
    spec = resnet50.net_spec(["a", "b"])
    assert (spec.block, spec.blocks, spec.class_names, spec.image_size, spec.freeze_blocks) == (
        "bottleneck",
        (3, 4, 6, 3),
        ("a", "b"),
        224,
        2,
    )


def test_config_hash_of_basic_configs_is_what_it_was_before_block_existed():
    # Computed on the code before the `block` field was added: old runs and sweeps must match.
    assert TrainConfig(data="demo").config_hash == "b357dfbd0474"
    assert TrainConfig(data="demo", block="basic").config_hash == "b357dfbd0474"
    bottleneck = TrainConfig(data="demo", block="bottleneck")
    assert bottleneck.config_hash not in (
        "b357dfbd0474",
        bottleneck.replace(blocks=(3, 4, 6, 3)).config_hash,
    )


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"freeze_blocks": "7"}, ["freeze_blocks=7", "0..4"]),
        ({"freeze_blocks": "abc"}, ["freeze_blocks='abc'", "integer"]),
        ({"blocks": "2,2,2"}, ["blocks='2,2,2'", "4 positive integers"]),
        ({"blocks": "2,0,2,2"}, ["blocks='2,0,2,2'", "4 positive integers"]),
        ({"block": "wide"}, ["block='wide'", "basic, bottleneck"]),
        ({"weights": "nonsense"}, ["weights='nonsense'", "'imagenet', 'none'"]),
        ({"weights": "missing/file.pt"}, ["weights='missing/file.pt'", "no such file"]),
        ({"precision": "fp8"}, ["precision='fp8'", "32-true"]),
        ({"feature_cache": "sometimes"}, ["feature_cache='sometimes'", "auto, off"]),
        ({"image_size": "8"}, ["image_size=8", "32..8192"]),
        ({"image_size": "100000"}, ["image_size=100000", "32..8192"]),
        (
            {"val_fraction": "0.6", "test_fraction": "0.5"},
            ["val_fraction + test_fraction", "less than 1"],
        ),
        ({"data": "./no/such/folder"}, ["data='./no/such/folder'", "Hub dataset id", "'demo'"]),
        ({"num_workers": "many"}, ["num_workers='many'", "integer"]),
    ],
)
def test_bad_values_are_named_with_what_is_accepted(changes, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_text(changes)
    for word in words:
        assert word in str(err.value)


def test_cli_reports_a_bad_value_without_a_traceback():
    result = CliRunner().invoke(main, ["train", "--blocks", "2,2,2"])
    assert result.exit_code != 0
    assert "blocks='2,2,2'" in result.output and "Traceback" not in result.output


def test_every_parameter_has_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name


def test_same_value_compares_meaning_not_text():
    c = TrainConfig(learning_rate=3e-5, blocks=(1, 1, 1, 1))
    assert c.same_value("learning_rate", "0.00003") and c.same_value("blocks", "1, 1, 1, 1")
    assert not c.same_value("learning_rate", "1e-4") and not c.same_value("blocks", "junk")
    # `mlflow run` logs values that needed shell quoting with their quotes
    spaced = TrainConfig(output_dir="/tmp/my results", blocks=(1, 1, 1, 1))
    assert spaced.same_value("output_dir", "'/tmp/my results'") and spaced.same_value(
        "blocks", "'1,1,1,1'"
    )
    assert not spaced.same_value("output_dir", "'/tmp/other results'")
    assert not spaced.same_value("output_dir", "/tmp/my results extra")
    # a run resumed with --experiment-name X that `mlflow run --experiment-name X` began: its
    # param is the default text, and the run's experiment, checked on resume, is what counts
    assert TrainConfig(experiment_name="study").same_value("experiment_name", "auto")


def test_the_readme_documents_every_parameter():
    readme = (REPO / "README.md").read_text()
    for name, default in defaults_as_text().items():
        assert f"| `{name}` | `{default}` |" in readme, name


def test_fp16_on_a_cpu_is_refused_before_training():
    import torch

    from resnet_exp.hardware import resolve_runtime

    if torch.cuda.is_available():
        pytest.skip("a GPU runs 16-mixed")
    with pytest.raises(ConfigError, match="precision='16-mixed' needs a GPU"):
        resolve_runtime(TrainConfig(precision="16-mixed"))
    # precision=auto on a CPU is measured: see tests/test_resources.py
    runtime = resolve_runtime(TrainConfig(precision="32-true"))
    assert runtime.channels_last and runtime.to_params()["resolved/channels_last"] == "True"
