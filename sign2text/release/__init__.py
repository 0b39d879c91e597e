"""Release steps: packaging, the object store, rollout to KServe (canary, smoke checks)."""
