"""Offline validation of custom objects against their CRD schemas: KServe's
(tests/fixtures/kserve/) and Kubeflow Trainer's TrainJob (tests/fixtures/kubeflow-trainer/).

The API server prunes unknown fields silently; here they are errors, so a misspelt field
(`canaryTrafficPrecent`) fails a test instead of being dropped on a cluster. The CRDs' CEL
rules (x-kubernetes-validations) are not evaluated, except TrainJob's name rule (`validate`).
"""

from __future__ import annotations

import copy
import functools
import gzip
import re
from pathlib import Path

import jsonschema
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
# kind -> (API group, gzipped CRD)
CRDS = {
    "InferenceService": ("serving.kserve.io", "kserve/serving.kserve.io_inferenceservices.yaml.gz"),
    "ServingRuntime": ("serving.kserve.io", "kserve/serving.kserve.io_servingruntimes.yaml.gz"),
    "ClusterServingRuntime": (
        "serving.kserve.io",
        "kserve/serving.kserve.io_clusterservingruntimes.yaml.gz",
    ),
    "TrainJob": (
        "trainer.kubeflow.org",
        "kubeflow-trainer/trainer.kubeflow.org_trainjobs.yaml.gz",
    ),
}
# TrainJob's own CEL rule on its name (an RFC 1035 label), checked here as the server would.
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _strict(schema: dict) -> dict:
    """Forbid properties the schema does not declare, as `kubectl --validate=strict` would."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for v in schema.values():
            _strict(v)
    elif isinstance(schema, list):
        for v in schema:
            _strict(v)
    return schema


@functools.cache
def _validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    # Skips meta-validation of the 2 MB schema (jsonschema.validate would do it every call).
    return jsonschema.Draft7Validator(_schema(kind, version))


@functools.cache
def _schema(kind: str, version: str) -> dict:
    crd = yaml.safe_load(gzip.decompress((FIXTURES / CRDS[kind][1]).read_bytes()))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            # metadata is validated by the API server itself, not by the CRD schema
            schema["properties"]["metadata"] = {"type": "object"}
            return schema
    raise KeyError(f"{kind} has no version {version}")


def validate(obj: dict) -> None:
    """Raise jsonschema.ValidationError if `obj` (a whole object) breaks its CRD schema."""
    kind = obj["kind"]
    group, _, version = obj["apiVersion"].partition("/")
    if kind not in CRDS or CRDS[kind][0] != group:
        raise KeyError(f"not a kind this validates: {obj['apiVersion']} {kind}")
    _validator(kind, version).validate(obj)
    name = obj["metadata"].get("name", "")
    if kind == "TrainJob" and not (RFC1035.match(name) and len(name) <= 63):
        raise jsonschema.ValidationError(f"metadata.name must be an RFC 1035 label: {name!r}")


@functools.cache
def _partial_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    """The schema with every `required` dropped: a patch names only what it changes."""

    def unrequire(s):
        if isinstance(s, dict):
            s.pop("required", None)
            for x in s.values():
                unrequire(x)
        elif isinstance(s, list):
            for x in s:
                unrequire(x)

    schema = copy.deepcopy(_schema(kind, version))
    unrequire(schema)
    return jsonschema.Draft7Validator(schema)


def validate_patch(kind: str, api_version: str, patch: dict) -> None:
    """A JSON merge patch: nulls delete, so drop them and validate what remains as partial."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if x is not None}
        return v

    _partial_validator(kind, api_version.partition("/")[2]).validate(strip(patch))
