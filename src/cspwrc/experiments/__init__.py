"""Measurement code behind the experiment scripts in tools/: importable, typed and tested like the rest.

* :mod:`.race`: cspwrc detectors against Ultralytics YOLO on the same data, budget and threads (``tools/race.py``;
  :mod:`.race_data` the shared data view, :mod:`.optimizers` what each contestant's optimizer really was,
  :mod:`.latency` the latency phase, :mod:`.race_report` the scoring and the table). The Ultralytics side,
  ``tools/race_ultralytics.py``, runs in Ultralytics' own venv and is never imported.
* :mod:`.compare`: one recipe on several backbones x seeds, paired statistics (``tools/compare_backbones.py``).
* :mod:`.gpu_check`: the GPU measurement of issue 15 (``tools/gpu_check.sh``), with its workers
  :mod:`.gpu_ultralytics` and :mod:`.startup_profile` (run with ``python -m``) and :mod:`.procs` (child processes).
* :mod:`.train_bench`: training-step WRC A/B and data pipeline vs step (``cspwrc benchmark --train-step``).

Nothing here is imported by ``import cspwrc``; every timing goes through :mod:`cspwrc.deploy.timing` and every
params/FLOPs count through :func:`cspwrc.deploy.cost.model_cost`.
"""
