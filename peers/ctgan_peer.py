"""CTGAN, the peer of the table studies, trained and scored exactly as this project's runs are.

    python peers/ctgan_peer.py --like results/table-penguins.json [--budget] [--out FILE]

For each seed of a project re-evaluation (``--like``: the reeval results file of a study's
winner), the same table, the same held-out split (drawn from the seed), the same metrics at the
same sample count: the project's own Evaluator scores CTGAN's rows, encoded by the same
TableTransformer. CTGAN runs with its defaults (300 epochs, its residual G, packed D, WGAN-GP and
mode-specific normalisation), or with ``--budget`` for as many epochs as fit in the wall time
the project's winner took per seed (timed from its first epochs). One thread, as each of the
project's seeds trains with. Writes a results file in reeval's format (results/ctgan*.json).

ctgan is a development dependency (installed after the pinned CPU torch): this file lives
beside the package, not in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config_load import config_from_dict
from pipeline.metrics.registry import VAL_PREFIX
from pipeline.prepare import cached_dataset, cached_evaluator
from pipeline.reeval import mean, stderr

# Two short CTGAN fits size a budget run: a fit costs a fixed part (its transformer fits a
# Bayesian mixture per numeric column: seconds) plus a constant cost per epoch.
TIMING_EPOCHS = (5, 25)
MAX_BUDGET_EPOCHS = 3000


def ctgan_seed(config: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    """Fit CTGAN on the seed's training split and score its rows; metrics keyed like reeval's."""
    from ctgan import CTGAN

    cfg = config_from_dict({**config, "train": {**config["train"], "seed": seed}})
    dataset = cached_dataset(cfg.data, seed)
    evaluator = cached_evaluator(cfg.data, cfg.eval, seed, "cpu")
    table = dataset.table
    assert table is not None, "the config's data is not a table"
    start = time.perf_counter()
    model = CTGAN(epochs=epochs, enable_gpu=False)
    model.set_random_state(seed)
    model.fit(table.train_frame, discrete_columns=list(table.transformer.categorical))
    rows = model.sample(cfg.eval.n_samples)
    fit_seconds = time.perf_counter() - start
    fake = torch.from_numpy(table.transformer.transform(rows[list(table.transformer.columns)]))
    metrics = evaluator.evaluate(fake)
    return {"metrics": metrics, "floor": evaluator.floor(), "seconds": fit_seconds}


def budget_epochs(config: dict[str, Any], seed: int, seconds: float) -> int:
    """CTGAN epochs that fit in ``seconds``, from the fixed and per-epoch costs of two fits."""
    short, long = TIMING_EPOCHS
    t_short = float(ctgan_seed(config, seed, short)["seconds"])
    t_long = float(ctgan_seed(config, seed, long)["seconds"])
    # timing noise can make the difference tiny: an epoch costs at least a tenth of the long
    # fit's average, and a budget run at most 10x CTGAN's default epochs
    per_epoch = max((t_long - t_short) / (long - short), t_long / long / 10)
    fixed = max(t_short - short * per_epoch, 0.0)
    return max(1, min(MAX_BUDGET_EPOCHS, int((seconds - fixed) / per_epoch)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", required=True,
                        help="a reeval results file of a table study's winner: its table, "
                             "split, metrics, seeds and wall time")
    parser.add_argument("--budget", action="store_true",
                        help="CTGAN epochs sized to the winner's wall time per seed")
    parser.add_argument("--out", help="results file (default results/ctgan[-budget]-<table>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    like = json.loads(Path(args.like).read_text())
    config = like["config"]
    config.setdefault("tracking", {})
    seeds: list[int] = like["seeds"]
    winner_seconds = float(like.get("seconds_per_seed") or like["seconds"] / len(seeds))
    epochs = 300  # CTGAN's default
    if args.budget:
        epochs = budget_epochs(config, seeds[0], winner_seconds)
    start = time.time()
    results = []
    for seed in seeds:
        result = ctgan_seed(config, seed, epochs)
        results.append(result)
        print(f"seed {seed}: {result['seconds']:.1f} s, quality "
              f"{result['metrics'].get('quality', float('nan')):.3f}", file=sys.stderr)
    per_seed = [{k.removeprefix(VAL_PREFIX): v for k, v in r["metrics"].items()} for r in results]
    floors = [r["floor"] for r in results]
    table_name = Path(config["data"]["path"]).stem
    name = f"ctgan{'-budget' if args.budget else ''}-{table_name}"
    report = {
        "study": name,
        "config": {"ctgan": {"epochs": epochs, "defaults": "ctgan.CTGAN() otherwise",
                             "threads": 1},
                   "data": config["data"], "eval": config["eval"]},
        "seeds": seeds,
        "per_seed": per_seed,
        "mean": {k: mean([p[k] for p in per_seed]) for k in per_seed[0]},
        "stderr": {k: stderr([p[k] for p in per_seed]) for k in per_seed[0]},
        "floor": {k: mean([f[k] for f in floors]) for k in floors[0]},
        "seconds": round(time.time() - start, 1),
        "seconds_per_seed": round(float(np.mean([r["seconds"] for r in results])), 1),
        "command": " ".join(["python peers/ctgan_peer.py", *(argv or sys.argv[1:])]),
    }
    out = Path(args.out) if args.out else Path("results") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
