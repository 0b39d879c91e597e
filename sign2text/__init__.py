"""Pipeline steps: plain typed functions shared by the CLI, DVC stages and KFP components."""

import model  # noqa: F401  (sets the quiet video-decoder logging before anything opens a video)
