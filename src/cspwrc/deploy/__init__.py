"""Deployment: ONNX/TorchScript export, numpy post-processing, and the speed benchmark (``cspwrc benchmark``).

Submodules are imported on use, so the numpy post-processing stays importable without onnx: ``export`` (ONNX,
TorchScript, end-to-end NMS), ``parity`` (the tolerant check of an end-to-end export against PyTorch),
``postprocess`` (numpy twin of the detector's post-processing), and the benchmark:
``benchmark`` (settings, rows, the run), ``modes`` and ``runtimes`` (what a model is converted to before timing),
``cost`` (params, FLOPs), ``timing`` (the one timing loop), ``peak`` (matmul peak), ``report`` (environment, table).
This package holds no folding code: folding lives with the modules it folds (:func:`cspwrc.layers.fold_model`,
``YoloDetector.fold()``), and the detector to export is loaded by :func:`cspwrc.det.load_detector`.
"""
