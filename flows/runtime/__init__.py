"""What every stage runs on: the stage wrapper (common), Ray Train job submission and job modes
(jobs), the code Ray workers run (worker), MLflow tracking (tracking), one Prefect server for a
command's stages (stack) and the per-model figures kept between runs (scores)."""
