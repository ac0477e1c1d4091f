"""Serving exports of a checkpoint (``imgrec export``): SavedModel, ONNX or LiteRT, each
taking uint8 H x W x 3 pixels and returning class probabilities, verified with its own
runtime against the ``.keras`` model, with a sidecar (``serving.json``) describing the
input, the classes and the decode contract. A package, leaf first: ``runtimes`` (each
format: its packages, Keras' writer, its runtime), ``export`` (preflight, sample,
verify, sidecar, upload)."""

from imgrec.serving.export import ExportMismatch, ExportResult, check_export, export_model, sample_uris
from imgrec.serving.runtimes import FORMATS, INSTALL_HINT, ServingFormat, serving_model

__all__ = ["FORMATS", "INSTALL_HINT", "ExportMismatch", "ExportResult", "ServingFormat", "check_export",
           "export_model", "sample_uris", "serving_model"]
