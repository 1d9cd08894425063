"""Export a trained model (backbone + quality head) to deployable formats.

``onnx`` and ``onnxscript`` (and ``onnxruntime`` for the numeric check) are optional: they are
imported only when an export runs (``pip install onnx onnxscript onnxruntime``)."""

from fiqa.export.onnx import ExportWrapper, InputConvention, export_onnx

__all__ = ["ExportWrapper", "InputConvention", "export_onnx"]
