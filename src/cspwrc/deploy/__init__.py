"""Deployment: inference folding helpers, ONNX/TorchScript export, numpy post-processing and the speed benchmark.

Submodules are imported on use (``cspwrc.deploy.export``, ``cspwrc.deploy.benchmark``,
``cspwrc.deploy.postprocess``) so the numpy post-processing stays importable without onnx.
"""
