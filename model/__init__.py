"""sign2text model package: the I3D network, checkpoint I/O, video preprocessing, prediction.

Shipped alone in the serving image; never imports `sign2text` or `pipelines`.
"""

import os

# FFmpeg and OpenCV print to stderr for every unreadable file ("moov atom not found"...). Our
# typed errors already say what is wrong, so keep their noise out of CLI output and server logs.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
