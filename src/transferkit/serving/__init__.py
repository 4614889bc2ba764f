"""Running exported models: the ONNX Runtime session wrapper (and, later, the HTTP server)."""
