"""The three InferenceService calls the rollout needs, and their implementation on a cluster.

`KubeApi` is what `sign2text.release.deploy` talks to; `KubernetesApi` implements it with the
`kubernetes` client's CustomObjectsApi (kubernetes 30.1 sends its patches as
`application/merge-patch+json`, RFC 7386: a null removes a field). KServeClient is not used: it
breaks with newer kubernetes clients (see DESIGN.md).
"""

from __future__ import annotations

import json
from typing import Protocol

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
REQUEST_TIMEOUT_S = 30


class KubeError(ValueError):
    """The API server refused a request or could not be reached; says which call and why."""


class KubeApi(Protocol):
    def get(self, namespace: str, name: str) -> dict | None:
        """The InferenceService, or None when it does not exist."""

    def create(self, namespace: str, obj: dict) -> dict: ...

    def patch(self, namespace: str, name: str, patch: dict) -> dict:
        """Apply a JSON merge patch (RFC 7386)."""


class KubernetesApi:
    """KubeApi on a real cluster: kubeconfig if given, else in-cluster, else ~/.kube/config."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if kubeconfig or context:
                config.load_kube_config(config_file=kubeconfig, context=context)
            else:
                try:
                    config.load_incluster_config()
                except ConfigException:
                    config.load_kube_config()
        except (ConfigException, OSError) as e:
            where = kubeconfig or "in-cluster or ~/.kube/config"
            raise KubeError(f"no usable Kubernetes config ({where}): {e}") from e
        self._api = client.CustomObjectsApi()

    def _call(self, what: str, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(GROUP, VERSION, *args, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as e:
            if e.status == 404 and what.startswith("get"):
                return None
            try:
                message = json.loads(e.body or "{}").get("message") or e.reason
            except (ValueError, AttributeError):
                message = e.reason
            raise KubeError(f"{what}: HTTP {e.status}: {message}") from e
        except HTTPError as e:
            raise KubeError(f"{what}: cannot reach the API server ({type(e).__name__})") from e

    def get(self, namespace: str, name: str) -> dict | None:
        fn = self._api.get_namespaced_custom_object
        return self._call(f"get {KIND} {namespace}/{name}", fn, namespace, PLURAL, name)

    def create(self, namespace: str, obj: dict) -> dict:
        name = obj.get("metadata", {}).get("name")
        fn = self._api.create_namespaced_custom_object
        return self._call(f"create {KIND} {namespace}/{name}", fn, namespace, PLURAL, obj)

    def patch(self, namespace: str, name: str, patch: dict) -> dict:
        fn = self._api.patch_namespaced_custom_object
        return self._call(f"patch {KIND} {namespace}/{name}", fn, namespace, PLURAL, name, patch)
