"""The ``imgrec`` command line. Commands only parse arguments into the typed
config (``imgrec.config``) and call the library; no logic lives here."""

from __future__ import annotations

import dataclasses
import inspect
import sys

import typer

import imgrec
from imgrec import augment, console, data, models, serving, storage, synth
from imgrec import features as feats
from imgrec.cli_cache import cache_app
from imgrec.cli_common import ImgrecGroup, clear_errors, take_verbose
from imgrec.cli_options import parse_size
from imgrec.cli_predict import predict_command
from imgrec.cli_train import train_command, transfer_command
from imgrec.cli_tune import tune_command
from imgrec.config import EXPORT_FORMATS, AugmentConfig, DecodeConfig, ExportConfig, replace
from imgrec.demo import run_demo
from imgrec.explain import explain_image
from imgrec.layout import explain_output
from imgrec.predict import describe_one

app = typer.Typer(help="Distributed image recognition on Ray and Keras 3.", no_args_is_help=True, cls=ImgrecGroup)
data_app = typer.Typer(help="Create, upload and inspect image datasets.", no_args_is_help=True)
augment_app = typer.Typer(help="Look at data augmentation.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(augment_app, name="augment")
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")
baseline_app = typer.Typer(help="The classic baseline: hand-made features + a linear classifier.",
                           no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
app.command("train")(train_command)
app.command("transfer")(transfer_command)
app.command("tune")(tune_command)
app.command("predict")(predict_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(imgrec.__version__)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the imgrec version and exit."),
             verbose: bool = typer.Option(False, "--verbose", "-v", help="Every line TensorFlow and Ray print "
                                          "(also IMGREC_LOG_LEVEL=DEBUG); accepted anywhere on the line.")) -> None:
    """Distributed image recognition on Ray and Keras 3."""


@app.command()
def version() -> None:
    """Print the imgrec version."""
    typer.echo(imgrec.__version__)


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo-output", help="Where data, weights and runs go (local or s3://)."),
    workers: int = typer.Option(2, help="Ray Train workers."),
    pretrain_epochs: int = typer.Option(8, help="Epochs pretraining the backbone on task A."),
    transfer_epochs: int = typer.Option(4, help="Epochs of the transfer job on task B."),
) -> None:
    """The embedded default end to end (make demo): synthetic data, MobileNet pretraining on task A,
    the transfer job fine-tuning on task B, evaluation and report, offline on a local Ray cluster."""
    with clear_errors():
        run_demo(out, workers=workers, pretrain_epochs=pretrain_epochs, transfer_epochs=transfer_epochs)


@data_app.command("upload")
def data_upload(
    local_dir: str = typer.Argument(..., help="Local folder to upload."),
    uri: str = typer.Argument(..., help="Destination: s3://bucket/prefix or a local folder."),
    workers: int = typer.Option(16, help="Parallel uploads."),
) -> None:
    """Upload a local folder tree to a storage URI, in parallel, with progress."""

    with clear_errors():
        n = storage.upload_dir(local_dir, uri, workers=workers)
    typer.echo(f"uploaded {n} files to {storage.normalize(uri)}")


@data_app.command("synth")
def data_synth(
    out: str = typer.Option(..., "--out", help="Destination root: s3://bucket/prefix or a local folder."),
    task: str = typer.Option("shapes", help="shapes | colors | brightness | noinfo"),
    classes: int = typer.Option(3, help="Number of classes (2-8)."),
    per_class: int = typer.Option(100, help="Training images per class."),
    test_per_class: int = typer.Option(None, help="Test images per class (default: 20% of --per-class)."),
    image_size: str = typer.Option("64", help="N or HxW (height x width), e.g. 375x500 for photo-like images."),
    seed: int = typer.Option(0, help="Same seed, byte-identical files."),
    quality: int = typer.Option(90, help="JPEG quality (1-95)."),
    overwrite: bool = typer.Option(False, help="Replace what is already under --out."),
) -> None:
    """Write a procedurally generated class-per-folder JPEG dataset (<out>/train, <out>/test)."""

    with clear_errors():
        summary = synth.make_dataset(
            out,
            task=task,
            classes=classes,
            per_class=per_class,
            image_size=parse_size(image_size),
            seed=seed,
            test_per_class=test_per_class,
            quality=quality,
            overwrite=overwrite,
            progress=True,
        )
    typer.echo(str(summary))


@data_app.command("inspect")
def data_inspect(
    uri: str = typer.Argument(..., help="Image tree root (s3://bucket/prefix or a local folder) or a "
                             ".csv/.parquet label manifest."),
    sample: int = typer.Option(2000, help="Read the headers of at most this many files for the size summary."),
    decode_all: bool = typer.Option(True, "--decode-all/--decode-sample", help="Find bad files by decoding "
                                    "every file with Ray Data (default), or only the sample, in this process."),
    validation_split: float = typer.Option(0.3, help="Held-out fraction of train/, as training splits it."),
    image_size: str = typer.Option("64", help="N or HxW (height x width) the bad-file check decodes to."),
) -> None:
    """Counts per class and split, image sizes/modes/formats, and the files that fail to decode."""

    with clear_errors():  # Ray starts for --decode-all once the tree's listing is good
        report = data.inspect(uri, DecodeConfig(image_size=parse_size(image_size)), validation_split=validation_split,
                              sample=sample, decode_all=decode_all)
    typer.echo(str(report))


@data_app.command("export-cifar10")
def data_export_cifar10(
    uri: str = typer.Argument(..., help="Destination root: s3://bucket/prefix or a local folder."),
    overwrite: bool = typer.Option(False, help="Replace what is already under URI."),
) -> None:
    """Download CIFAR-10 (keras.datasets) and write it as <URI>/train|test/<class>/<i>.png (lossless)."""

    with clear_errors():
        counts = data.export_cifar10(uri, overwrite=overwrite, progress=True)
    for split, per_class in counts.items():
        typer.echo(f"{split}: {sum(per_class.values())} images, " + ", ".join(f"{k} {v}" for k, v in per_class.items()))


def augment_preview(
    image: str = typer.Argument(..., help="Image file or s3:// URI."),
    out: str = typer.Option("augment_preview.png", "--out", "-o", help="PNG to write (local or s3://)."),
    n: int = typer.Option(8, "-n", help="Number of augmented samples (one row)."),
    preset: str = typer.Option("course", help=f"Starting point: {' | '.join(augment.preset_names())}; options "
                               "below override it."),
    # ... here one option per augmentation op field (_OpOptions) ...
    fill_mode: str = typer.Option(None, help="nearest | constant | reflect | wrap. Default: from --preset."),
    cval: int = typer.Option(None, help="Fill value for --fill-mode constant. Default: from --preset."),
    image_size: str = typer.Option(None, help="Decode size, N or HxW (height x width); unset: the image's own "
                                   "aspect, longer side 256."),
    seed: int = typer.Option(None, help="Same seed, same grid."),
    **op_values,
) -> None:
    """Write a 1×N grid of randomly augmented copies of one image (the course's preview)."""

    with clear_errors():
        base = AugmentConfig.preset(preset)
        changes = {k: v for k, v in {"fill_mode": fill_mode, "cval": cval}.items() if v is not None}
        for op in augment.ops(base):
            for option in op.options:
                changes.update(option.changes(op_values.get(option.field)))
        cfg = replace(base, **changes)
        written = augment.save_preview(image, out, cfg, n=n, image_size=parse_size(image_size), seed=seed)
    typer.echo(f"wrote {written} ({n} samples: {augment.describe(cfg)})")


class _OpOptions:
    """A typer command whose signature gains one option per augmentation op field
    (``imgrec.augment.ops``: help text, type, ``--x/--no-x`` for a flag) after
    ``after``, read from the op list each time typer builds the CLI, so a new op
    has its option without an edit here. The command starts from
    ``AugmentConfig.preset``, so it offers the ops whose fields ``AugmentConfig`` has."""

    def __init__(self, command, after: str):
        self.command, self.after = command, after
        self.__doc__ = command.__doc__
        self.__annotations__: dict = {}  # the signature carries the types

    @property
    def __signature__(self) -> inspect.Signature:
        fixed = [p for p in inspect.signature(self.command, eval_str=True).parameters.values()
                 if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in fixed].index(self.after) + 1
        order = [f.name for f in dataclasses.fields(AugmentConfig)]  # options in the config's field order
        options = [o for op in augment.ops(AugmentConfig) for o in op.options]
        generated = [_op_parameter(o) for o in sorted(options, key=lambda o: order.index(o.field))]
        return inspect.Signature(fixed[:at] + generated + fixed[at:])

    def __call__(self, **kwargs):
        return self.command(**kwargs)


def _op_parameter(option: augment.CliOption) -> inspect.Parameter:
    help_text = f"{option.help} Default: from --preset.".strip()
    decls = [f"{option.flag}/--no-{option.flag[2:]}"] if option.type is bool else []
    return inspect.Parameter(option.field, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             default=typer.Option(None, *decls, help=help_text), annotation=option.type)


augment_app.command("preview")(_OpOptions(augment_preview, after="preset"))


@models_app.command("list")
def models_list(
    kind: str = typer.Option(None, help="Only this kind: course | scratch | backbone."),
) -> None:
    """Every model name --model accepts: kind, parameters, depth, published weights
    size and ImageNet top-1/top-5 (backbones), default input size, preprocessing."""
    with clear_errors():
        rows = [r for r in models.models_table() if kind is None or r["kind"] == kind]
        if kind is not None and kind not in models.KINDS:
            raise ValueError(f"--kind must be one of {models.KINDS}, got {kind!r}")
    typer.echo(models.format_models_table(rows))
    typer.echo(
        "\nalpha: accepts a width multiplier. Backbone numbers are the published ImageNet ones "
        "(keras.io/api/applications); course/scratch ones are counted for 10 classes (2 for seed_catsdogs)."
    )


@baseline_app.command("train")
def baseline_train(
    data: str = typer.Option(..., "--data", help="Image tree root: s3://bucket/prefix or a local folder."),
    out: str = typer.Option(None, "--out", help="Where to write baseline.json, decision_boundary.png, "
                            "baseline.html (local or s3://)."),
    cnn_run: str = typer.Option(None, "--cnn-run", help="A CNN run (or checkpoint) URI on the same data, "
                                "shown side by side (its evaluation.json, else its best val_accuracy)."),
    features: str = typer.Option("all", help="Comma-separated feature names or groups: brightness, color, "
                                 "extent, edges, orientation, course (brightness + object height), all."),
    plot: str = typer.Option("brightness,object_height", help="The two features of the decision-boundary plot."),
    image_size: str = typer.Option("64", help="N or HxW (height x width) the images are decoded to."),
    validation_split: float = typer.Option(0.3, help="Held-out fraction of train/ when there is no test/ tree."),
) -> None:
    """Hand-made features (brightness, colour, object size, edges) + logistic regression:
    the recognition before CNNs, with an honest verdict against chance."""

    with clear_errors():
        result = feats.train_baseline(
            data,
            features=features,
            plot_features=[p.strip() for p in plot.split(",")],
            image_size=parse_size(image_size),
            validation_split=validation_split,
            out=out,
            cnn_run=cnn_run,
        )
    typer.echo(result.summary())


@app.command("predict-one")
def predict_one_command(
    image: str = typer.Argument(..., help="Image file or s3:// URI."),
    model: str = typer.Option(..., "--model", help="Run URI (its best checkpoint) or checkpoint URI."),
    top_k: int = typer.Option(None, help="Show only the K most likely classes (default: all)."),
) -> None:
    """Predict one image and print every class's probability (no Ray needed)."""

    with clear_errors():
        text = describe_one(image, model, top_k=top_k)
    typer.echo(text)


@app.command("explain")
def explain_command(
    image: str = typer.Argument(..., help="Image file or s3:// URI."),
    model: str = typer.Option(..., "--model", help="Run URI (its best checkpoint) or checkpoint URI."),
    out: str = typer.Option(None, "--out", help="Where the PNG goes, local or s3:// "
                            "(default: <image name>-gradcam.png here)."),
    top_k: int = typer.Option(5, help="Print the K most likely classes."),
) -> None:
    """Grad-CAM: where the model looked for its answer; writes the image beside its heatmap (no Ray needed)."""
    with clear_errors():
        found = explain_image(image, model, top_k=top_k)
        target = out or explain_output(image)
        storage.atomic_write(target, found.png)
    typer.echo(f"{found}\nwrote {storage.normalize(target)}")


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="Run URI (its best checkpoint) or checkpoint URI, local or s3://."),
    format: str = typer.Option(..., "--format", help=f"{' | '.join(EXPORT_FORMATS)}"),
    out: str = typer.Option(..., "--out", help="Folder or s3:// prefix: the model file and serving.json."),
    images: str = typer.Option(None, "--images", help="Images to verify the export on (default: the "
                               "checkpoint's data tree)."),
    sample: int = typer.Option(16, help="Images the verification runs."),
    overwrite: bool = typer.Option(False, help="Replace what is already under --out."),
) -> None:
    """A checkpoint as a serving model (uint8 HxWx3 in, class probabilities out) plus serving.json,
    verified with the format's own runtime against the .keras model (needs imgrec[export] for
    onnx and litert)."""
    with clear_errors():
        cfg = ExportConfig(model=model, format=format, out=out, images=images, sample=sample, overwrite=overwrite)
        try:
            result = serving.export_model(cfg)
        except serving.ExportMismatch as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
    typer.echo(result.summary())


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """The ``imgrec`` console script and every ``jobs/*.py``: the quiet console
    (``imgrec.console``; ``-v`` anywhere on the line keeps everything) set up
    before any command imports TensorFlow, then the command."""
    args = list(sys.argv[1:] if args is None else args)
    take_verbose(args)
    console.quiet_process()
    app(args, prog_name=prog_name)


if __name__ == "__main__":  # pragma: no cover
    main()
