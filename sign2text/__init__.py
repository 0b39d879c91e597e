"""sign2text: every pipeline step (steps.py), by concern (data/, learning/, release/), and the
`sign2text` command line (cli.py). The serving package model/ never imports this one."""

import model  # noqa: F401  (sets the quiet video-decoder logging before anything opens a video)
