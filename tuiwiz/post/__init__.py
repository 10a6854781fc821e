"""After training: merge, export (GGUF, Ollama, ONNX, hub) and the chat engine, all reading a finished run's folder."""
