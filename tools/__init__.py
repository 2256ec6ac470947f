"""Research and measurement tools around the pipeline: `make benchmark`/`make ablation`
(benchmark), `make bench-perf` (perf), `make families` (families), `make bench-gpu`
(bench_gpu) and the ImageFolder export (export_imagefolder).

`flows` is imported first: its package sets the quiet, offline defaults that Ray, Prefect and
MLflow read when they are imported.
"""

import flows  # noqa: F401
