"""Data steps: the dataset layout, synthesis, ingest, validation, conversion to shards, versions."""
