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
    (["train", "--data", "/nowhere", "--optimizer", "adagrad"], "--optimizer"),
    (["transfer", "--data", "/nowhere", "--lr-schedule", "linear"], "--lr-schedule"),
    (["train", "--data", "/nowhere", "--resize", "fit"], "--resize"),
    (["tune", "--data", "/nowhere", "--search", "bayes"], "--search"),
    (["tune", "--data", "/nowhere", "--scheduler", "pbt"], "--scheduler"),
    (["train", "--data", "/nowhere", "--augment", "heavy"], "--augment"),
    (["tune", "--data", "/nowhere", "--head", "wide"], "--head"),
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
    with pytest.raises(ConfigError, match="optimizer must be one of adam, adamw, sgd, rmsprop, got 'adagrad'"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")


# --------------------------------------------------------------------------- one source of options

def _commands():
    import typer

    from imgrec.cli_predict import PREDICT_OPTIONS
    from imgrec.cli_train import SCRATCH_DEFAULTS, TRANSFER_DEFAULTS, train_options
    from imgrec.cli_tune import TUNE_OPTIONS
    from imgrec.config import PredictConfig, SweepConfig

    group = typer.main.get_command(app)
    return [
        (group.commands["train"], TrainConfig, train_options(**SCRATCH_DEFAULTS), ["--data", "/d"]),
        (group.commands["transfer"], TrainConfig, train_options(**TRANSFER_DEFAULTS), ["--data", "/d"]),
        (group.commands["tune"], SweepConfig, TUNE_OPTIONS, ["--data", "/d"]),
        (group.commands["predict"], PredictConfig, PREDICT_OPTIONS,
         ["--model", "/m", "--input", "/i", "--output", "/o"]),
    ]


@pytest.mark.parametrize("index", range(4), ids=["train", "transfer", "tune", "predict"])
def test_every_option_s_help_default_is_what_the_config_gets(index):
    """Each option's default as --help shows it, parsed as the option parses it,
    equals the value the config receives when the option is not given, and no
    help text states a default of its own in prose (it would drift)."""
    import enum

    from imgrec.cli_options import build, get_path

    click_command, root, options, required = _commands()[index]
    ctx = click_command.make_context(click_command.name, list(required))
    cfg = build(root, options, dict(ctx.params))
    by_name = {opt.name: opt for opt in options}
    params = [p for p in click_command.params if p.name != "help"]
    assert sorted(p.name for p in params) == sorted(by_name), "every parameter is a declared option"
    for param in params:
        opt = by_name[param.name]
        assert "default" not in opt.help.lower(), f"--{param.name}: the help states a default in prose"
        if param.required or set(param.opts) & set(required):
            continue
        shown = param.default.value if isinstance(param.default, enum.Enum) else param.default
        expected = opt.parse(shown) if opt.parse else shown
        for path in opt.paths:
            assert get_path(cfg, path) == expected, (click_command.name, param.name, path, shown)


def test_class_weight_is_an_option_of_every_training_command_with_the_config_default():
    """--class-weight (train, transfer, tune's base run) shows the config's default, which the
    help-default test above then checks option by option."""
    for click_command, *_ in _commands()[:3]:
        param = next(p for p in click_command.params if p.name == "class_weight")
        assert param.opts == ["--class-weight"] and param.default == "none" == TrainConfig().class_weight


def test_transfer_and_tune_share_the_training_options():
    """tune's base-run options are the training commands' (same help), and the
    shown defaults are the transfer job's (the old tune --help said the image
    size defaulted to the model's input size while it was 128)."""
    from imgrec.cli_train import OPTION
    from imgrec.cli_tune import TUNE_OPTIONS

    shared = [opt for opt in TUNE_OPTIONS if all(p.startswith("base.") for p in opt.paths)]
    assert len(shared) >= 14
    for opt in shared:
        train_opt = OPTION[opt.name]
        assert opt.paths == tuple(f"base.{p}" for p in train_opt.paths)
        assert opt.help == train_opt.help or opt.name in {"epochs", "augment", "batch_size", "workers"}
    tune_click = _commands()[2][0]
    size = next(p for p in tune_click.params if p.name == "image_size")
    assert size.default == "128"


def test_one_image_size_syntax_and_the_old_forms_still_work(tmp_path):
    from imgrec.decode import image_info

    for args, note in ((["--image-size", "40x48"], False), (["--image-size", "40", "48"], True)):
        out = tmp_path / ("old" if note else "new")
        result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--classes", "2", "--per-class", "2",
                                          "--test-per-class", "1", *args])
        assert result.exit_code == 0, result.output
        assert ("deprecated; use --image-size 40x48" in result.output) is note
        first = next((out / "train").rglob("*.jpg"))
        assert image_info(first.read_bytes())[:2] == (48, 40)  # width, height

    from PIL import Image

    src = tmp_path / "photo.png"
    Image.new("RGB", (50, 50), (90, 120, 200)).save(src)
    for flag, note in (("--image-size", False), ("--size", True)):  # --size: augment preview's old name
        grid = tmp_path / f"grid{flag}.png"
        result = CliRunner().invoke(app, ["augment", "preview", str(src), "--out", str(grid), "-n", "2",
                                          flag, "30x60"])
        assert result.exit_code == 0, result.output
        assert ("--size is deprecated; use --image-size" in result.output) is note
        with Image.open(grid) as im:  # two 30x60 (h x w) samples side by side: 4:1
            assert im.width / im.height == pytest.approx(4, rel=0.05)

    bad = CliRunner().invoke(app, ["train", "--data", "/d", "--image-size", "0x5"])
    assert bad.exit_code == 2 and "image size '0x5': use N or HxW" in bad.output


@pytest.mark.parametrize("job, command", [("train", "train"), ("transfer", "transfer"), ("sweep", "tune"),
                                          ("predict", "predict"), ("demo", "demo")])
def test_every_job_script_delegates_to_the_cli(job, command):
    """``python jobs/<job>.py --help`` is the typer command's help (no parser of its own)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Usage: jobs/{job}.py {command} [OPTIONS]" in done.stdout
    assert "argparse" not in (repo / "jobs" / f"{job}.py").read_text()
