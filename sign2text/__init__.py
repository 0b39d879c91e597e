"""The `sign2text` command line (cli.py, one cmd_*.py module per command group): the one front
door to every step in components/, the model server and app, and the Kubeflow pipeline."""

from importlib import metadata

import model  # noqa: F401  (sets the quiet video-decoder logging before anything opens a video)

try:
    __version__ = metadata.version("sign2text")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
