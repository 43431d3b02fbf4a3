"""Demos and model architectures of the field: examples built on taylorc, outside its core."""
