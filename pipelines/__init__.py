"""The Kubeflow pipeline (DAG, parameters, gating) and its compiled spec live here."""
