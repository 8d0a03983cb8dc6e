"""Serving: safe checkpoint loading, the scorer (torch or ONNX), ONNX export, int8 weights, onnxruntime sessions."""
