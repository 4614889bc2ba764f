"""transferkit: fine-tune a pretrained image model, gate it, and ship it as a verified ONNX model."""

__version__ = "0.1.0"
