"""Which reduced precisions a model may serve at: the package-time accuracy gate.

For each reduced precision this CPU runs (OpenVINO bf16 where its CPU plugin reports BF16), the
model's verified model.onnx runs on a fixed clip set at that precision and at f32 (OpenVINO's
f32, itself within 1e-4 of torch by the export's check), and the precision passes when

- top-1 agrees on every clip (1.000), over the glosses (word mode's answer) and over every output
  (the no-sign output included: sentence mode's question), and
- max |logit - f32 logit| <= RELATIVE x the f32 logits' scale, the scale being the largest spread
  (max - min) of one clip's f32 logits over the set: a logit error is judged against the gaps
  between logits that decide an answer, and adding a constant to every logit changes nothing.

The result goes into config.json as "precision": {"bf16": {...}}, bound to the model.onnx it
measured (its sha256): model/runtimes/choice.py serves bf16 only where the record passed, for
that very file, on a CPU that reports BF16. Where the packaging CPU has no BF16 the record says
it could not be measured, and every CPU then serves f32: an emulation elsewhere (torch's bf16,
say) runs other kernels than OpenVINO's, so its pass would not prove what serves.

The clip set (`gate_clips`) needs no data, as packaging has none (the pipeline's package step
gets the trained model and the evaluation, not the videos): the bundled dataset's renderer
(components/data/synth_render.py) draws every class the renderer has, up to the model's glosses,
each signed by the first SIGNERS of the bundled dataset's test-split signers (never trained on),
plus each of those signers at rest, deterministically, through the model's own preprocessing.
For the demo model these are its own classes and unseen signers, so the set is its test split
in kind: 10 glosses x 3 signers + 3 at rest = 33 clips. For other models (WLASL's) the clips are
inputs, not labelled examples: the gate compares two runs of one network on them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from model.files import hash_file, write_atomic
from model.modeldir import CONFIG, ONNX, read_model_info
from model.video.clip import PreprocessConfig, clip_from_frames

RELATIVE = 0.02  # max |diff| allowed, as a fraction of the f32 logits' scale
SIGNERS = 3
MAX_CLIPS = 33
REDUCED = ("bf16",)  # the precisions gated (int8: not built, see docs/serving.md)


def gate_clips(
    pre: PreprocessConfig, glosses: int, signers: int = SIGNERS, max_clips: int = MAX_CLIPS
) -> tuple[np.ndarray, str]:
    """B x 3 x T x H x W uint8 clips for the gate, and a line saying what they are."""
    from components.data.synth import SIGNERS as BUNDLED_SIGNERS
    from components.data.synth import split_signers
    from components.data.synth_render import (
        MAX_CLASSES,
        SIZES,
        class_spec,
        render_clip,
        signer_look,
    )

    test_signers = split_signers(BUNDLED_SIGNERS)["test"][:signers]  # the bundled dataset's
    n_classes = min(glosses, MAX_CLASSES)
    per_signer = max(1, max_clips // len(test_signers) - 1)  # one at rest each
    classes = sorted({round(c) for c in np.linspace(0, n_classes - 1, min(n_classes, per_signer))})
    clips = []
    for k, signer in enumerate(test_signers):
        look = signer_look(0, signer)
        for c in classes:
            rng = np.random.default_rng([0, 3, signer, c])
            size = SIZES[(c + k) % len(SIZES)]
            frames, _ = render_clip(class_spec(c), look, size, 30, 5, 5, rng)
            clips.append(clip_from_frames(np.stack(frames), pre))
        frames, _ = render_clip(class_spec(0), look, SIZES[k % len(SIZES)], 0, 20, 20)
        clips.append(clip_from_frames(np.stack(frames), pre))  # at rest: no sign
    what = (
        f"synthetic: {len(classes)} classes x {len(test_signers)} test-split signers "
        f"+ {len(test_signers)} at rest"
    )
    return np.stack(clips), what


def compare(ref: np.ndarray, got: np.ndarray, glosses: int, relative: float = RELATIVE) -> dict:
    """B x N clip logits at a reduced precision against f32's: the gate's figures and verdict."""
    agree = min(
        float((got.argmax(1) == ref.argmax(1)).mean()),
        float((got[:, :glosses].argmax(1) == ref[:, :glosses].argmax(1)).mean()),
    )
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    scale = float((ref.max(1) - ref.min(1)).max())
    tolerance = relative * scale
    return {
        "passed": agree == 1.0 and diff <= tolerance,  # NaN fails too
        "top1_agreement": agree,
        "max_abs_diff": diff,
        "logit_scale": scale,
        "tolerance": tolerance,
        "relative_tolerance": relative,
        "clips": len(ref),
    }


def forwards(runtimes: dict, clips: np.ndarray, repeats: int = 3) -> tuple[dict, dict]:
    """Every runtime's clip logits for `clips`, batch by batch, the runtimes taking turns on each
    batch so that machine noise hits them alike, and their seconds per clip: per batch the best
    of `repeats` turns (after a warm-up batch each), as another process on the machine only
    ever adds time. Batches stay small enough to bound a full-width forward's memory."""
    step = max(1, 8 * 16 * 112 * 112 // int(np.prod(clips.shape[2:])))
    batches = [clips[i : i + step] for i in range(0, len(clips), step)]
    for rt in runtimes.values():
        rt.logits(batches[0])  # the first forward of a shape compiles its kernels
    out = {name: [] for name in runtimes}
    seconds = dict.fromkeys(runtimes, 0.0)
    for batch in batches:
        best = dict.fromkeys(runtimes, float("inf"))
        for turn in range(repeats):
            for name, rt in runtimes.items():
                t = time.perf_counter()
                logits = rt.logits(batch)
                best[name] = min(best[name], time.perf_counter() - t)
                if turn == 0:
                    out[name].append(logits)
        for name in runtimes:
            seconds[name] += best[name]
    per_clip = {name: s / len(clips) for name, s in seconds.items()}
    return {name: np.concatenate(v) for name, v in out.items()}, per_clip


def gate_precisions(
    model_dir: str | Path,
    *,
    precisions: frozenset[str] | None = None,
    relative: float = RELATIVE,
    write: bool = True,
) -> dict:
    """Measure every REDUCED precision against f32 on `gate_clips` and (write=True) record the
    result in model_dir/config.json's "precision". precisions: what this CPU runs (default:
    OpenVINO's answer); one it lacks is recorded as not measured, and not passed."""
    import openvino

    from model.runtimes import openvino_runtime as ovr

    model_dir = Path(model_dir)
    info = read_model_info(model_dir, ONNX)
    if info.onnx_file is None:
        raise ValueError(f"{model_dir} has no model.onnx to gate")
    precisions = ovr.cpu_precisions() if precisions is None else precisions
    value_range = None if info.onnx_takes_uint8 else info.preprocess.value_range
    clips, what = gate_clips(info.preprocess, len(info.labels))
    common = {
        "onnx_sha256": hash_file(info.onnx_file),
        "reference": "OpenVINO f32",
        "clip_set": what,
        "cpu": ovr.cpu_name(),
        "openvino": openvino.__version__.split("-")[0],
    }
    runtimes = {"f32": ovr.OpenVinoRuntime(info.onnx_file, "f32", value_range)}
    record = {}
    for p in REDUCED:
        if p in precisions:
            runtimes[p] = ovr.OpenVinoRuntime(info.onnx_file, p, value_range)
        else:
            record[p] = common | {
                "measured": False,
                "passed": False,
                "reason": f"this CPU reports no {p.upper()} (OpenVINO's OPTIMIZATION_CAPABILITIES)",
            }
    logits, per_clip = forwards(runtimes, clips)
    for p in runtimes.keys() - {"f32"}:
        record[p] = (
            common
            | {"measured": True}
            | compare(logits["f32"], logits[p], len(info.labels), relative)
            | {
                "ms_per_clip": round(per_clip[p] * 1000, 2),
                "f32_ms_per_clip": round(per_clip["f32"] * 1000, 2),
                "speedup": round(per_clip["f32"] / per_clip[p], 3),
            }
        )
    if write:
        config = json.loads((model_dir / CONFIG).read_text())
        config["precision"] = record
        data = (json.dumps(config, indent=2) + "\n").encode()
        write_atomic(model_dir / CONFIG, data, durable=True)
    return record


def summary(record: dict) -> str:
    """One line per precision: what the gate found."""
    lines = []
    for p, r in record.items():
        if not r.get("measured"):
            lines.append(f"{p}: not measured ({r.get('reason')})")
            continue
        lines.append(
            f"{p}: {'passed' if r['passed'] else 'FAILED'}: top-1 agreement "
            f"{r['top1_agreement']:.3f}, max |logit diff| {r['max_abs_diff']:.3g} "
            f"(tolerance {r['tolerance']:.3g} = {r['relative_tolerance']:g} x logit scale "
            f"{r['logit_scale']:.3g}) on {r['clips']} clips; {r['speedup']:.2f}x f32's speed"
        )
    return "; ".join(lines)
