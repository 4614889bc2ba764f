"""ONNX export, its verification against PyTorch, metadata and the model card."""
