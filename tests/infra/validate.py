"""Offline validation of every manifest under infra/k8s and infra/helm against real schemas.

    python -m tests.infra.validate [--k8s-version 1.33.0] [FILE ...]   (default: all of them)

What validates what (infra/check.sh runs this, then the shape tests):
- built-in Kubernetes objects: kubernetes-validate's schemas of that Kubernetes version, strict
  (an unknown field is an error, as with kubeconform -strict);
- RayCluster / RayJob (ray.io/v1): the KubeRay CRD schemas vendored in infra/schemas/, made
  strict by infra/schemas/vendor.py (the API server would silently prune a misspelt field);
- the Prefect work-pool base job template: its two parts, `variables` as a JSON schema and
  `job_configuration` whose placeholders all name a variable, then its job manifest rendered
  with the variables' defaults (Prefect's own templating) and validated as a batch/v1 Job;
- prefect.yaml: each deployment's job_variables against that template's variables schema;
- helm values: the chart's values.schema.json over the chart's defaults merged with ours,
  as `helm install` does (kuberay-operator ships none: a schema derived from its defaults).
Exit status 1 when anything is invalid, with one line per error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "infra" / "schemas"
MANIFEST_DIRS = (REPO / "infra" / "k8s", REPO / "infra" / "helm")
K8S_VERSION = "1.33.0"  # the oldest minor the manifests target; newer ones accept them too
CRDS = {("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json",
        ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json"}
PLACEHOLDER = re.compile(r"{{\s*([\w.-]+)\s*}}")
# what the Kubernetes worker puts in for the variables that have no default, in the shape it
# gives them when it builds the Job (command split into args, env as a list of name/value)
WORKER_VALUES = {"name": "flow-run-name", "command": ["prefect", "flow-run", "execute"],
                 "env": [{"name": "PREFECT__FLOW_RUN_ID", "value": "0000"}],
                 "labels": {"prefect.io/flow-run-id": "0000"}, "annotations": {}}

WORK_POOL_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "type", "base_job_template", "concurrency_limit"],
    "properties": {"name": {"type": "string", "minLength": 1}, "type": {"const": "kubernetes"},
                   "base_job_template": {"type": "string"},
                   "concurrency_limit": {"type": "integer", "minimum": 1}},
}
DEPLOYMENTS_SCHEMA = {
    "type": "object", "required": ["name", "deployments"],
    "properties": {"deployments": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "entrypoint", "work_pool"],
        "properties": {
            "name": {"type": "string"},
            "entrypoint": {"type": "string", "pattern": r"^flows/\w+\.py:\w+$"},
            "work_pool": {"type": "object", "required": ["name"], "additionalProperties": False,
                          "properties": {"name": {"type": "string"},
                                         "work_queue_name": {"type": "string"},
                                         "job_variables": {"type": "object"}}}}}}},
}


def where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


def schema_errors(instance: Any, schema: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"at {where(e)}: {e.message}" for e in
            sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))]


def load_schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def kubernetes_errors(doc: Any, version: str) -> list[str]:
    """One Kubernetes object: a vendored CRD schema or kubernetes-validate's, strictly."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion/kind)"]
    crd = CRDS.get((doc["apiVersion"], doc["kind"]))
    if crd:
        errors = schema_errors(doc, load_schema(crd))
        name = doc.get("metadata", {}).get("name")
        if not isinstance(name, str) or not name:  # the CRD schema says nothing of metadata
            errors.append("at metadata.name: a custom resource needs a name")
        return errors
    import kubernetes_validate  # only here: the shape tests import this module without it

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:  # a jsonschema error: the first one
        return [f"at {where(exc)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {version}"]
    return []


def render_job_manifest(template: dict) -> dict:
    """The Job the worker would create: the job manifest with every variable's default."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update({k: v for k, v in WORKER_VALUES.items() if k not in values})
    return apply_values(template["job_configuration"]["job_manifest"], values)


def base_job_template_errors(template: Any, version: str) -> list[str]:
    if not isinstance(template, dict) or set(template) != {"job_configuration", "variables"}:
        return ["a base job template has exactly `job_configuration` and `variables`"]
    variables = template["variables"]
    errors = [f"variables: {e}" for e in schema_errors(variables, {
        "type": "object", "required": ["type", "properties"],
        "properties": {"type": {"const": "object"}, "properties": {"type": "object"}}})]
    if errors:
        return errors
    try:
        jsonschema.Draft7Validator.check_schema(variables)
    except jsonschema.SchemaError as exc:
        return [f"variables is not a valid JSON schema: {exc.message}"]
    for name, prop in variables["properties"].items():  # a default must fit its own schema
        if "default" in prop:
            errors += [f"variables.{name}.default {e}"
                       for e in schema_errors(prop["default"], prop)]
    text = json.dumps(template["job_configuration"])
    for name in sorted(set(PLACEHOLDER.findall(text)) - set(variables["properties"])):
        errors.append(f"job_configuration uses {{{{ {name} }}}}, which no variable declares")
    manifest = template["job_configuration"].get("job_manifest")
    if not isinstance(manifest, dict):
        return [*errors, "job_configuration.job_manifest is missing"]
    job = render_job_manifest(template)
    # prefect-kubernetes refuses a manifest without these two keys in the pod spec (where
    # Kubernetes has no such fields and drops them): the one departure from strict validation
    pod = job.get("spec", {}).get("template", {}).get("spec", {})
    for key in ("parallelism", "completions"):
        pod.pop(key, None)
    errors += [f"job_manifest (rendered): {e}" for e in kubernetes_errors(job, version)]
    return errors


def helm_values_errors(path: Path, values: Any) -> list[str]:
    chart = path.name.removesuffix(".values.yaml")
    schema_file = SCHEMAS / f"{chart}.values.schema.json"
    if not schema_file.exists():
        return [f"no vendored values schema for chart {chart!r} ({schema_file.name})"]
    defaults_file = SCHEMAS / f"{chart}.values.defaults.yaml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    return schema_errors(merge(defaults, values or {}), json.loads(schema_file.read_text()))


def merge(base: dict, over: dict) -> dict:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge(base[key], value) if both else value
    return out


def deployments_errors(path: Path, doc: Any) -> list[str]:
    errors = schema_errors(doc, DEPLOYMENTS_SCHEMA)
    if errors:
        return errors
    template = json.loads((path.parent / "base-job-template.json").read_text())
    for i, dep in enumerate(doc["deployments"]):
        job_vars = dep["work_pool"].get("job_variables", {})
        schema = {**template["variables"], "additionalProperties": False}
        errors += [f"deployments.{i}.work_pool.job_variables {e}"
                   for e in schema_errors(job_vars, schema)]
    return errors


def file_errors(path: Path, version: str = K8S_VERSION) -> tuple[int, list[str]]:
    """(objects checked, errors) of one file, chosen by what the file is."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        return 0, [f"not YAML/JSON: {exc}"]
    if path.name == "base-job-template.json":
        return 1, base_job_template_errors(docs[0], version)
    if path.name == "work-pool.yaml":
        errors = schema_errors(docs[0], WORK_POOL_SCHEMA)
        if not errors and not (path.parent / docs[0]["base_job_template"]).exists():
            errors.append(f"base_job_template {docs[0]['base_job_template']} does not exist")
        return 1, errors
    if path.name == "prefect.yaml":
        return 1, deployments_errors(path, docs[0])
    if path.name.endswith(".values.yaml"):
        return 1, helm_values_errors(path, docs[0] if docs else {})
    errors = []
    for i, doc in enumerate(docs):
        label = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}" \
            if isinstance(doc, dict) else f"document {i}"
        errors += [f"{label} {e}" for e in kubernetes_errors(doc, version)]
    return len(docs), errors or ([] if docs else ["no object in the file"])


def manifest_files() -> Iterator[Path]:
    for folder in MANIFEST_DIRS:
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".yaml", ".yml", ".json"):
                yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--k8s-version", default=K8S_VERSION)
    args = parser.parse_args(argv)
    files = args.files or list(manifest_files())
    failed = 0
    for path in files:
        count, errors = file_errors(path, args.k8s_version)
        shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        if errors:
            failed += 1
            for error in errors:
                print(f"INVALID {shown}: {error}")
        else:
            print(f"ok      {shown} ({count} object{'s' * (count != 1)})")
    print(f"{len(files) - failed}/{len(files)} files valid (Kubernetes {args.k8s_version})")
    return 1 if failed or not files else 0


if __name__ == "__main__":
    sys.exit(main())
