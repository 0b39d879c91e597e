"""The offline KServe schema check catches what a cluster would silently prune or reject."""

import jsonschema
import pytest

from tests.crd_schema import validate, validate_patch

API = "serving.kserve.io/v1beta1"


def _isvc(predictor: dict) -> dict:
    return {
        "apiVersion": API,
        "kind": "InferenceService",
        "metadata": {"name": "s"},
        "spec": {"predictor": predictor},
    }


def test_valid_inference_service_passes():
    validate(
        _isvc(
            {
                "canaryTrafficPercent": 10,
                "model": {
                    "modelFormat": {"name": "sign2text"},
                    "runtime": "sign2text",
                    "storageUri": "s3://b/m",
                },
            }
        )
    )


def test_misspelt_field_and_wrong_type_fail():
    with pytest.raises(jsonschema.ValidationError, match="canaryTrafficPrecent"):
        validate(_isvc({"canaryTrafficPrecent": 10}))
    with pytest.raises(jsonschema.ValidationError):
        validate(_isvc({"canaryTrafficPercent": "ten"}))


def test_merge_patch_nulls_delete_and_values_are_checked():
    validate_patch("InferenceService", API, {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    with pytest.raises(jsonschema.ValidationError):
        validate_patch("InferenceService", API, {"spec": {"predictor": {"minReplicas": "x"}}})
