"""The rtml runtime: serves one Model (ONNX + Feast features) under its SLO."""
