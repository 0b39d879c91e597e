"""`make demo-matrix`: the demo recipe trained and evaluated for several seeds and thread counts.

Floating-point sums differ with the thread count and the CPU, so a recipe that passes for one
seed on one machine proves little. This converts the bundled dataset once, then for every
(seed, threads) trains with params.yaml's demo recipe (only `train.seed` changes) and evaluates
the way `dvc repro` does, each run in its own process with its own thread count. It prints one
row per run and exits 1 unless every run passes the gate (test top-1 >= evaluate.min_top1) and
transcribes at least MIN_SENTENCE of the sentence strings. A benchmark, not a test: 10 runs take
about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MIN_SENTENCE = 0.8  # fraction of sentence strings transcribed fully right, per run


def _set(params: dict, assignments: list[str]) -> dict:
    """`section.key=value` overrides (value parsed as YAML), for trying a variant of the recipe."""
    import yaml

    from components.params import overrides

    values = {}
    for a in assignments:
        key, sep, value = a.partition("=")
        if not sep:
            raise ValueError(f"--set wants section.key=value, got {a!r}")
        values[key] = yaml.safe_load(value)
    return overrides(params, values, "--set")


def run_one(params: dict, data: Path, shards: Path, out: Path, seed: int, threads: int) -> dict:
    """One run, in this process: train with `seed` on `threads` threads, then evaluate."""
    import torch

    torch.set_num_threads(threads)
    from components import steps
    from components.params import Params, overrides
    from components.training.train import HISTORY

    t0 = time.perf_counter()
    run = Params(overrides(params, {"train.seed": seed}, "--one"))
    steps.train(run, shards, out / "train")
    t_train = time.perf_counter() - t0
    metrics, _ = steps.evaluate(run, out / "train" / "model", data, None, out / "eval")
    history = json.loads((out / "train" / HISTORY).read_text())
    test, sentence = metrics["test"], metrics.get("sentence") or {}
    return {
        "seed": seed,
        "threads": threads,
        "val_top1_above_half_at": next(
            (r["epoch"] for r in history if r.get("val_top1", 0) > 0.5), None
        ),
        "test_top1": test["top1"],
        "reversed_pairs": test.get("reversed_pairs"),
        "sentence_correct": sentence.get("correct"),
        "train_s": round(t_train, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def passes(row: dict, min_top1: float) -> bool:
    sentence = row["sentence_correct"]
    return row["test_top1"] >= min_top1 and sentence is not None and sentence >= MIN_SENTENCE


def table(rows: list[dict], min_top1: float) -> str:
    head = (
        "seed",
        "threads",
        "val>0.5 at epoch",
        "test top-1",
        "reversed pairs",
        "sentences",
        "wall s",
        "pass",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (
            r["seed"],
            r["threads"],
            r["val_top1_above_half_at"],
            r["test_top1"],
            r["reversed_pairs"],
            r["sentence_correct"],
            r["wall_s"],
            "yes" if passes(r, min_top1) else "NO",
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="the bundled dataset (make data)")
    ap.add_argument("--out", default="artifacts/matrix")
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="runs overlap while their threads fit in this many cores",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="try a variant of the recipe",
    )
    ap.add_argument("--one", nargs=2, type=int, metavar=("SEED", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    from components.params import load_params

    try:
        params = _set(load_params(a.params), a.set)
    except (OSError, ValueError) as e:
        print(f"demo-matrix: {e}", file=sys.stderr)
        return 2
    data, out = Path(a.data), Path(a.out)
    shards = out / "shards"
    if a.one:  # a child: one run, its result as the last line
        seed, threads = a.one
        row = run_one(params, data, shards, out / f"seed{seed}-t{threads}", seed, threads)
        print(json.dumps(row))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    if not (shards / "manifest.json").is_file():
        from components import steps
        from components.params import Params

        steps.convert(Params(params), data, None, shards)
    # Widest runs first, so that narrower ones can share the cores at the end.
    runs = sorted(((s, t) for s in _ints(a.seeds) for t in _ints(a.threads)), key=lambda r: -r[1])
    sets = [x for s in a.set for x in ("--set", s)]
    child = [
        sys.executable,
        "-m",
        "tools.demo_matrix",
        "--params",
        a.params,
        "--data",
        a.data,
        "--out",
        a.out,
        *sets,
    ]

    def start(seed: int, threads: int) -> tuple[subprocess.Popen, int]:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        log = open(out / f"seed{seed}-t{threads}.log", "w")  # noqa: SIM115 (closed with the run)
        proc = subprocess.Popen(
            [*child, "--one", str(seed), str(threads)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        return proc, threads

    rows, pending, running = [], list(runs), []
    while pending or running:
        busy = sum(t for _, t in running)
        if pending and (not running or busy + pending[0][1] <= a.cores):
            running.append(start(*pending.pop(0)))
            continue
        done = next((r for r in running if r[0].poll() is not None), None)
        if done is None:
            time.sleep(1)
            continue
        running.remove(done)
        proc = done[0]
        stdout = proc.stdout.read()
        if proc.returncode != 0:
            print(
                f"a run failed (exit {proc.returncode}): {proc.args[-2:]}, see {out}/*.log",
                file=sys.stderr,
            )
            return 1
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    min_top1 = float(params["evaluate"]["min_top1"])
    rows.sort(key=lambda r: (r["seed"], r["threads"]))
    print(table(rows, min_top1))
    (out / "matrix.json").write_text(json.dumps(rows, indent=2) + "\n")
    ok = sum(passes(r, min_top1) for r in rows)
    print(f"{ok} of {len(rows)} runs pass (test top-1 >= {min_top1}, sentences >= {MIN_SENTENCE})")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
