"""Video preprocessing shared by conversion, training, evaluation and serving: decode.py
(decoding), clip.py (frames -> the model's clip), limits.py (bounded reads of untrusted video)."""
