"""The three InferenceService calls the rollout needs, and their implementation on a cluster;
likewise the TrainJob and pod calls of multi-node training (`components.training.trainjob`).

`KubeApi` is what `components.release.deploy` talks to; `KubernetesApi` implements it with the
`kubernetes` client's CustomObjectsApi (kubernetes 30.1 sends its patches as
`application/merge-patch+json`, RFC 7386: a null removes a field). KServeClient is not used: it
breaks with newer kubernetes clients (see DESIGN.md). `KubernetesTrainJobApi` implements
`components.training.trainjob.TrainJobApi` the same way, plus CoreV1Api for pods and logs.
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


def _load_config(kubeconfig: str | None, context: str | None) -> None:
    """kubeconfig if given, else in-cluster, else ~/.kube/config."""
    from kubernetes import config
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


def _call(what: str, fn, *args, **kwargs):
    """fn(*args) with the request timeout; a 404 on a get is None, other errors KubeError."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
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


class KubernetesApi:
    """KubeApi on a real cluster: kubeconfig if given, else in-cluster, else ~/.kube/config."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client

        _load_config(kubeconfig, context)
        self._api = client.CustomObjectsApi()

    def _call(self, what: str, fn, *args):
        return _call(what, fn, GROUP, VERSION, *args)

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


class KubernetesTrainJobApi:
    """TrainJobApi on a real cluster (the pipeline's train step, in-cluster)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client

        from components.training import trainjob as tj

        _load_config(kubeconfig, context)
        self._api, self._core = client.CustomObjectsApi(), client.CoreV1Api()
        self._crd = (tj.GROUP, tj.VERSION)
        self._plural, self._kind, self._container = tj.PLURAL, tj.KIND, tj.NODE

    def get(self, namespace: str, name: str) -> dict | None:
        fn = self._api.get_namespaced_custom_object
        what = f"get {self._kind} {namespace}/{name}"
        return _call(what, fn, *self._crd, namespace, self._plural, name)

    def create(self, namespace: str, obj: dict) -> dict:
        name = obj.get("metadata", {}).get("name")
        fn = self._api.create_namespaced_custom_object
        what = f"create {self._kind} {namespace}/{name}"
        return _call(what, fn, *self._crd, namespace, self._plural, obj)

    def delete(self, namespace: str, name: str) -> None:
        # Foreground: the JobSet and its pods go before the TrainJob does.
        fn = self._api.delete_namespaced_custom_object
        what = f"delete {self._kind} {namespace}/{name}"
        _call(what, fn, *self._crd, namespace, self._plural, name, propagation_policy="Foreground")

    def pods(self, namespace: str, label_selector: str) -> list[dict]:
        fn = self._core.list_namespaced_pod
        what = f"list pods {namespace} -l {label_selector}"
        pods = _call(what, fn, namespace, label_selector=label_selector)
        return [self._core.api_client.sanitize_for_serialization(p) for p in pods.items]

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        fn = self._core.read_namespaced_pod_log
        kwargs = {"timestamps": True, "container": self._container}
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        return _call(f"log of pod {namespace}/{pod}", fn, pod, namespace, **kwargs)
