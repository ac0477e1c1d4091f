"""The ``imgrec`` command line. Commands only parse arguments into the typed
config (``imgrec.config``) and call the library; no logic lives here."""

from __future__ import annotations

import typer

import imgrec

app = typer.Typer(help="Distributed image recognition on Ray and Keras 3.", no_args_is_help=True)
data_app = typer.Typer(help="Create, upload and inspect image datasets.", no_args_is_help=True)
augment_app = typer.Typer(help="Look at data augmentation.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(augment_app, name="augment")
app.add_typer(models_app, name="models")


@app.command()
def version() -> None:
    """Print the imgrec version."""
    typer.echo(imgrec.__version__)


@data_app.command("upload")
def data_upload(
    local_dir: str = typer.Argument(..., help="Local folder to upload."),
    uri: str = typer.Argument(..., help="Destination: s3://bucket/prefix or a local folder."),
    workers: int = typer.Option(16, help="Parallel uploads."),
) -> None:
    """Upload a local folder tree to a storage URI, in parallel, with progress."""
    from imgrec import storage

    with _clear_errors():
        n = storage.upload_dir(local_dir, uri, workers=workers)
    typer.echo(f"uploaded {n} files to {storage.normalize(uri)}")


class _clear_errors:
    """Show library errors (bad URI, missing bucket, bad config) as one line, exit 2."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from imgrec.config import ConfigError
        from imgrec.storage import StorageError

        if exc is not None and isinstance(exc, StorageError | ConfigError | FileNotFoundError | ValueError):
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2)
        return False


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
