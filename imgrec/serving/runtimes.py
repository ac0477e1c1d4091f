"""Each serving format: the packages its exporter and runtime need, how Keras writes it,
and how its own runtime runs it (TensorFlow for a SavedModel, onnxruntime for ONNX,
the ``ai-edge-litert`` interpreter for LiteRT). Only ``missing_packages`` runs
without TensorFlow; the rest is called after the preflight."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from imgrec.layout import ExportLayout

INSTALL_HINT = "pip install 'imgrec[export]'"


@dataclass(frozen=True)
class ServingFormat:
    name: str  # the --format value
    keras_format: str  # model.export(format=...)
    modules: tuple[str, ...]  # import names the export and its check need beyond TensorFlow
    runtime: str  # what verifies it

    @property
    def file_name(self) -> str:
        return ExportLayout.files()[self.name].name


FORMATS = {
    "saved_model": ServingFormat("saved_model", "tf_saved_model", (), "tensorflow"),
    "onnx": ServingFormat("onnx", "onnx", ("tf2onnx", "onnx", "onnxruntime"), "onnxruntime"),
    "litert": ServingFormat("litert", "litert", ("ai_edge_litert",), "ai-edge-litert"),
}


def missing_packages(fmt: ServingFormat) -> list[str]:
    """The import names ``fmt`` needs that are not installed (found without importing them)."""
    return [m for m in fmt.modules if importlib.util.find_spec(m) is None]


def serving_model(model):
    """The checkpoint's model with a serving output: uint8 (N, H, W, 3) RGB pixels in,
    (N, classes) probabilities out (a 2-class sigmoid unit p becomes [1 - p, p], as
    ``imgrec.models.class_probabilities`` does). Built-in layers only."""
    import keras

    pixels = keras.Input(tuple(model.input.shape[1:]), dtype="uint8", name="pixels")
    p = model(pixels, training=False)
    if p.shape[-1] == 1:
        p = keras.layers.Concatenate(name="probabilities")([keras.layers.Rescaling(-1.0, offset=1.0)(p), p])
    else:
        p = keras.layers.Identity(name="probabilities")(p)
    return keras.Model(pixels, p, name=f"{model.name}_serving")


def write(fmt: ServingFormat, model, path: str) -> None:
    model(np.zeros((1, *model.input.shape[1:]), "uint8"))  # Keras' ONNX export needs a called model
    model.export(path, format=fmt.keras_format, verbose=False)


def run(fmt: ServingFormat, path: str, pixels: np.ndarray) -> np.ndarray:
    """Probabilities of ``pixels`` (uint8 N x H x W x 3) from the export at ``path``,
    run by the format's own runtime, as a server would."""
    return {"saved_model": _run_saved_model, "onnx": _run_onnx, "litert": _run_litert}[fmt.name](path, pixels)


def _run_saved_model(path: str, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]  # what TF Serving calls
    (out,) = serve(tf.constant(pixels)).values()
    return out.numpy()


def _run_onnx(path: str, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def _litert_interpreter(path: str):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path)


def _run_litert(path: str, pixels: np.ndarray) -> np.ndarray:
    interpreter = _litert_interpreter(path)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], pixels.shape)  # the batch is dynamic (-1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def litert_select_ops(path: str) -> list[str]:
    """The TensorFlow ops (``SELECT_TF_OPS``, Flex) a LiteRT model needs beyond the
    built-in ones: these need the Flex delegate on the device."""
    ops = _litert_interpreter(path)._get_ops_details()
    return sorted({op["op_name"] for op in ops if str(op["op_name"]).startswith("Flex")})
