"""The registry side of a review: a version's record (review/record.json on its run), its
Markdown description, and the report and promotion it points to.

`register` writes the record and the first description; `unlearn report` logs the report on
the version's run and links it; `unlearn promote` records who promoted it, when and why, as
`promoted.*` tags, and each of them writes the description again from the record and the
tags, so the page MLflow shows is never older than the registry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.review import version_description
from flows.ops.gate import download_artifact
from flows.runtime.tracking import client

RECORD_ARTIFACT = "review/record.json"
REPORT_ARTIFACT = "report/report.html"
LEGACY_BLOBS = ("audit", "certificate", "metrics")  # JSON tags of versions registered earlier


def read_record(version: Any) -> dict | None:
    """A version's review/record.json (None: registered before it existed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(version.run_id, RECORD_ARTIFACT, tmp)
        return json.loads(path.read_text()) if path is not None else None


def review_blocks(version: Any) -> dict[str, dict]:
    """The `audit`, `certificate` and `metrics` blocks of a version: from its record, or
    from the JSON tags a version registered before the record carries."""
    tags = version.tags
    if all(k in tags for k in LEGACY_BLOBS):
        return {k: json.loads(tags[k]) for k in LEGACY_BLOBS}
    record = read_record(version) or {}
    return {k: record.get(k) or {} for k in LEGACY_BLOBS}


def refresh_description(name: str, number: int) -> bool:
    """Write a version's description from its record and its tags now; False (nothing
    written) for a version without a record."""
    version = client().get_model_version(name, str(number))
    record = read_record(version)
    if record is None:
        return False
    client().update_model_version(name, str(number),
                                  description=version_description(record, version.tags))
    return True


def link_report(name: str, number: int, page: Path, experiment_id: str) -> str:
    """Log `page` on the version's run and point the version at it (tags `report.uri`,
    `report.link`: the run's artifact page in MLflow's UI); returns the URI."""
    version = client().get_model_version(name, str(number))
    with tempfile.TemporaryDirectory() as tmp:  # logged under one name, wherever it was written
        fixed = Path(tmp) / Path(REPORT_ARTIFACT).name
        shutil.copyfile(page, fixed)
        client().log_artifact(version.run_id, str(fixed), Path(REPORT_ARTIFACT).parent.as_posix())
    uri = f"runs:/{version.run_id}/{REPORT_ARTIFACT}"
    link = f"#/experiments/{experiment_id}/runs/{version.run_id}/artifacts/{REPORT_ARTIFACT}"
    client().set_model_version_tag(name, str(number), "report.uri", uri)
    client().set_model_version_tag(name, str(number), "report.link", link)
    refresh_description(name, number)
    return uri
