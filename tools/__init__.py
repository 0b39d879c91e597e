"""Tools users run from the repository root: a local S3 server, benchmarks, the demo matrix."""
