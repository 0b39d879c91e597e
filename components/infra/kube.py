"""The Kubernetes API as the steps use it: one namespaced custom resource kind, and pods.

`CustomObjects` gets, creates, merge-patches and deletes objects of one kind (a `Resource`) with
the `kubernetes` client's CustomObjectsApi (kubernetes 30.1 sends its patches as
`application/merge-patch+json`, RFC 7386: a null removes a field); `Pods` lists pods and reads
their logs. Release (InferenceServices) and training (TrainJobs) each build theirs from these;
this module knows neither. KServeClient is not used: it breaks with newer kubernetes clients.
Every call has a request timeout; every failure is a `KubeError` that names the call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

REQUEST_TIMEOUT_S = 30


class KubeError(ValueError):
    """The API server refused a request or could not be reached; says which call and why."""


@dataclass(frozen=True)
class Resource:
    """A namespaced custom resource kind, as the API names it."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def load_config(kubeconfig: str | None = None, context: str | None = None) -> None:
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


def call(what: str, fn, *args, **kwargs):
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


class CustomObjects:
    """Objects of one custom resource kind on a real cluster (kubeconfig if given, else
    in-cluster, else ~/.kube/config)."""

    def __init__(
        self, resource: Resource, kubeconfig: str | None = None, context: str | None = None
    ) -> None:
        from kubernetes import client

        load_config(kubeconfig, context)
        self.resource = resource
        self._api = client.CustomObjectsApi()

    def _call(self, verb: str, namespace: str, name: str | None, fn, *args, **kwargs):
        r = self.resource
        what = f"{verb} {r.kind} {namespace}/{name}"
        return call(what, fn, r.group, r.version, namespace, r.plural, *args, **kwargs)

    def get(self, namespace: str, name: str) -> dict | None:
        """The object, or None when it does not exist."""
        return self._call("get", namespace, name, self._api.get_namespaced_custom_object, name)

    def create(self, namespace: str, obj: dict) -> dict:
        name = obj.get("metadata", {}).get("name")
        fn = self._api.create_namespaced_custom_object
        return self._call("create", namespace, name, fn, obj)

    def patch(self, namespace: str, name: str, patch: dict) -> dict:
        """Apply a JSON merge patch (RFC 7386)."""
        fn = self._api.patch_namespaced_custom_object
        return self._call("patch", namespace, name, fn, name, patch)

    def delete(self, namespace: str, name: str) -> None:
        # Foreground: what the object owns (a TrainJob's JobSet and pods) goes before it does.
        fn = self._api.delete_namespaced_custom_object
        self._call("delete", namespace, name, fn, name, propagation_policy="Foreground")


class Pods:
    """Pods and their logs on a real cluster; `container` names the one whose log is read."""

    def __init__(
        self, container: str, kubeconfig: str | None = None, context: str | None = None
    ) -> None:
        from kubernetes import client

        load_config(kubeconfig, context)
        self.container = container
        self._core = client.CoreV1Api()

    def list(self, namespace: str, label_selector: str) -> list[dict]:
        """Pods (as API dicts) matching the selector."""
        fn = self._core.list_namespaced_pod
        what = f"list pods {namespace} -l {label_selector}"
        pods = call(what, fn, namespace, label_selector=label_selector)
        return [self._core.api_client.sanitize_for_serialization(p) for p in pods.items]

    def log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        """The pod's log, each line prefixed with its RFC 3339 timestamp and a space."""
        fn = self._core.read_namespaced_pod_log
        kwargs = {"timestamps": True, "container": self.container}
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        return call(f"log of pod {namespace}/{pod}", fn, pod, namespace, **kwargs)
