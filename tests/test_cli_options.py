"""Command-line options: enumerated values are choices the parser refuses
(before any Ray or TensorFlow work), the config refuses them too, and
``imgrec --version`` answers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import imgrec
from imgrec.cli import app
from imgrec.config import LR_SCHEDULES, OPTIMIZERS, ConfigError, TrainConfig


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == imgrec.__version__


@pytest.mark.parametrize("args, option", [
    (["train", "--data", "/nowhere", "--optimizer", "adamw"], "--optimizer"),
    (["transfer", "--data", "/nowhere", "--lr-schedule", "linear"], "--lr-schedule"),
    (["train", "--data", "/nowhere", "--resize", "fit"], "--resize"),
    (["tune", "--data", "/nowhere", "--search", "bayes"], "--search"),
    (["tune", "--data", "/nowhere", "--scheduler", "pbt"], "--scheduler"),
])
def test_enumerated_options_are_refused_by_the_parser(args, option):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and args[-1] in result.output


def test_the_config_refuses_what_the_parser_would():
    for name in OPTIMIZERS:
        assert TrainConfig(optimizer=name).optimizer == name
    for name in LR_SCHEDULES:
        assert TrainConfig(lr_schedule=name).lr_schedule == name
    with pytest.raises(ConfigError, match="optimizer must be one of adam, sgd, rmsprop, got 'adamw'"):
        TrainConfig(optimizer="adamw")
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")
