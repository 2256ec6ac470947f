"""Regenerate the vendored schemas in this folder from upstream files (data, no code copied).

    python infra/schemas/vendor.py SRC_DIR

SRC_DIR holds the upstream files at the versions pinned in infra/schemas/README.md:
ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and kuberay-operator.values.yaml (KubeRay),
prefect-worker.values.schema.json and prefect-worker.values.yaml (prefect-helm),
mlflow.values.schema.json and mlflow.values.yaml (community-charts). A chart's values.yaml is
kept as <chart>.values.defaults.yaml: helm validates the defaults merged with the user's values.

Two transformations, both so that the offline check is as strict as the real thing:
- a CRD's openAPIV3Schema gets `additionalProperties: false` on every object that lists its
  properties (unless it says x-kubernetes-preserve-unknown-fields). The API server silently
  prunes unknown fields of a custom resource, so a typo such as `shutdownAfterJobFinish`
  would be accepted by `kubectl apply` and ignored; kubeconform -strict rejects it, so do we.
- descriptions are dropped: they are most of the size and no validator reads them.
The kuberay-operator chart ships no values.schema.json; its schema is derived from the
chart's default values.yaml (every key the chart knows, with the type of its default), plus
the keys its values.yaml documents only in comments (COMMENTED).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# kuberay-operator keys that values.yaml shows only as comments (no default to derive from)
COMMENTED = {"watchNamespace": {"type": "array", "items": {"type": "string"}},
             "useKubernetesProxy": {"type": "boolean"}}


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items() if k != "description"}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def crd_schema(crd_file: Path, version: str = "v1") -> dict:
    crd = yaml.safe_load(crd_file.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = strict(v["schema"]["openAPIV3Schema"])
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            schema["title"] = f"{crd['spec']['group']}/{version} {crd['spec']['names']['kind']}"
            return schema
    raise SystemExit(f"{crd_file}: no version {version}")


# values the chart passes through as Kubernetes objects: their defaults show one example of
# a Kubernetes type (resources with limits only), not the keys the chart accepts
K8S_OBJECTS = {"resources", "securityContext", "podSecurityContext", "livenessProbe",
               "readinessProbe", "affinity", "nodeSelector"}


def from_defaults(value: Any, key: str = "") -> dict:
    """A schema that accepts the chart's keys only; an empty map or list accepts anything."""
    if isinstance(value, dict):
        if not value or key in K8S_OBJECTS:
            return {"type": "object"}
        return {"type": "object", "additionalProperties": False,
                "properties": {k: from_defaults(v, k) for k, v in value.items()}}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        return {"type": "number"}
    if value is None:  # null default: the chart takes anything there
        return {}
    return {"type": "string"}


def dump(schema: dict, name: str) -> None:
    (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main(src: Path) -> None:
    dump(crd_schema(src / "ray.io_rayclusters.yaml"), "raycluster-ray-v1.json")
    dump(crd_schema(src / "ray.io_rayjobs.yaml"), "rayjob-ray-v1.json")
    defaults = yaml.safe_load((src / "kuberay-operator.values.yaml").read_text())
    schema = from_defaults(defaults)
    schema["properties"].update(COMMENTED)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "kuberay-operator values (derived from the chart's values.yaml)"
    dump(schema, "kuberay-operator.values.schema.json")
    for chart in ("prefect-worker", "mlflow"):
        shutil.copyfile(src / f"{chart}.values.schema.json", HERE / f"{chart}.values.schema.json")
        shutil.copyfile(src / f"{chart}.values.yaml", HERE / f"{chart}.values.defaults.yaml")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
