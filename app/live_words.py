"""Live mode's words: a stream's scored windows -> words, as sentence mode finds them, and the
rule that says when a word is final.

The model server scores each window of the stream once, when the frames that complete it have
arrived (its `windows` mode: the windows sentence mode scores, centred on every `stride`-th
frame of the stream, the stream's first frame repeated before it). This module does the rest
of sentence mode (model/sentence.py, steps 2 and 3) on them: frames between two window centres
interpolate their probabilities, a frame is signing where P(no sign) < 1 - threshold and takes
its most probable gloss, and runs of one gloss become words by `segment`'s rules. The app ships
no model code, so these steps are written again here in plain Python (the app has no numpy);
tests/test_live_words.py holds them equal to `transcribe` on the same frames.

A word is final once no frame still to come can change it (frames are labelled from complete
windows only, so a label never changes once made):
- a run of at least `max_gap` frames of no sign follows it (`segment` never joins words across
  such a rest, nor lets anything after it reach back): what comes before is what sentence mode
  says of the whole stream, spans included;
- or a run of one other gloss at least `min_len` frames long follows it (no rule relabels such
  a run; later frames can only make it longer): the words before it are final if they come out
  the same, spans included, with that run as short as it is now and as long as it could get;
- or, a guard on memory, HOLD frames have passed with neither: all is final.
What is final is said once and forgotten; the labels from there on are kept.
"""

from __future__ import annotations

HOLD = 1500  # frames held undecided at most (60 s at 25 fps); then all is final
DEFAULT_THRESHOLD = 0.5  # sentence mode's: P(some sign) a frame needs to belong to a word


def runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """(label, start, end inclusive) for each run of equal labels."""
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((labels[start], start, i - 1))
            start = i
    return out


def _words_beside(rs: list[tuple[int, int, int]], k: int) -> list[tuple[int, int, int]]:
    return [rs[j] for j in (k - 1, k + 1) if 0 <= j < len(rs) and rs[j][0] >= 0]


def segment(labels: list[int], min_len: int, max_gap: int) -> list[tuple[int, int, int]]:
    """model/sentence.py's segment, step for step: per-frame labels (-1 = no sign) ->
    [(label, start, end)] of the words."""
    labels = list(labels)
    while True:
        rs = runs(labels)
        short = [
            (e - s, k)
            for k, (lab, s, e) in enumerate(rs)
            if lab >= 0 and e - s + 1 < min_len and _words_beside(rs, k)
        ]
        if not short:
            break
        k = min(short)[1]
        _, s, e = rs[k]
        into = max(_words_beside(rs, k), key=lambda r: r[2] - r[1])[0]
        labels[s : e + 1] = [into] * (e - s + 1)
    for lab, s, e in runs(labels):  # alone and too short to be a sign
        if lab >= 0 and e - s + 1 < max(1, min_len // 2):
            labels[s : e + 1] = [-1] * (e - s + 1)
    rs = runs(labels)
    for k in range(1, len(rs) - 1):  # a short pause inside one sign, or a repeat
        lab, s, e = rs[k]
        if lab < 0 and e - s + 1 < max_gap and rs[k - 1][0] == rs[k + 1][0]:
            labels[s : e + 1] = [rs[k - 1][0]] * (e - s + 1)
    return [r for r in runs(labels) if r[0] >= 0]


class Transcript:
    """One stream's frame labels, from its scored windows, and its words.

    `add` takes each window in order of its centre; `settle` gives the words now final (once
    each) and those still pending, as {"word", "start", "end"} in stream frames."""

    def __init__(self, glosses: list[str], window: int, threshold: float = DEFAULT_THRESHOLD):
        self.glosses, self.window, self.threshold = glosses, window, threshold
        self.min_len, self.max_gap = max(1, window // 2), max(1, window // 8)
        self.base = 0  # stream index of labels[0]
        self.labels: list[int] = []  # per frame, up to the last window's centre
        self.last: tuple[int, list[float]] | None = None  # the last window: (centre, probs)

    def add(self, centre: int, probs: list[float]) -> None:
        """One window's probabilities (glosses, then no sign); the frames since the last
        window's centre interpolate the two, as numpy's interp does."""
        if len(probs) != len(self.glosses) + 1:
            raise ValueError(f"{len(probs)} probabilities for {len(self.glosses)} glosses + 1")
        if self.last is None:
            self.base, self.labels = centre, [self._label(probs)]
        else:
            c0, p0 = self.last
            dx = float(centre - c0)
            for t in range(c0 + 1, centre):
                x = float(t - c0)
                between = [(b - a) / dx * x + a for a, b in zip(p0, probs, strict=True)]
                self.labels.append(self._label(between))
            self.labels.append(self._label(probs))
        self.last = (centre, probs)

    def _label(self, p: list[float]) -> int:
        g = len(self.glosses)
        if not 1.0 - p[g] >= self.threshold:
            return -1
        return max(range(g), key=p.__getitem__)  # the first of equals, as argmax

    def _segment(self, labels: list[int]) -> list[tuple[int, int, int]]:
        return segment(labels, self.min_len, self.max_gap)

    def settle(self) -> tuple[list[dict], list[dict]]:
        """(the words final now, said once; the words still pending)."""
        words = self._segment(self.labels)
        cut = self._settled(words)
        final = [self._item(w) for w in words if w[2] < cut]
        pending = [self._item(w) for w in words if w[2] >= cut]
        del self.labels[:cut]
        self.base += cut
        return final, pending

    def _settled(self, words: list[tuple[int, int, int]]) -> int:
        """How many labels no later frame can change the words of."""
        if len(self.labels) > HOLD:
            return len(self.labels)
        cut, last_long = 0, None
        for lab, s, e in runs(self.labels):
            if lab < 0 and e - s + 1 >= self.max_gap:
                cut, last_long = s, None  # a rest nothing joins across: all before is settled
            elif lab >= 0 and e - s + 1 >= self.min_len:
                last_long = (lab, s, e)
        if last_long is None:
            return cut
        # A run of one gloss min_len long is a word whatever comes (no rule relabels it); only
        # its length may still change, as later frames join it or the next word. The words
        # before the word holding it are settled if they come out the same with that run as
        # short as it may end up (nothing after it) and as long (longer than all held).
        lab, s, e = last_long
        start = next(w[1] for w in words if w[1] <= s <= w[2])
        before = [w for w in words if w[2] < start]
        shortest = self.labels[: e + 1]
        longest = shortest + [lab] * len(self.labels)
        for labels in (shortest, longest):
            if [w for w in self._segment(labels) if w[2] < start] != before:
                return cut
        return max(cut, start)

    def _item(self, w: tuple[int, int, int]) -> dict:
        lab, s, e = w
        return {"word": self.glosses[lab], "start": self.base + s, "end": self.base + e}
