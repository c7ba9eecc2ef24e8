"""What moves λ_max between two probes: the batch, or the SGD temperature η/B? Read from `iterations.py` results.

Issue 13 found that the ABS rule's curvature rarely halves between LR decays. This script tests one explanation
on the epoch records `benchmarks/iterations.py` saves: that the probe's λ_max follows the noise scale of SGD, the
learning rate divided by the batch (η/B), which linear LR scaling keeps constant across a growth, rather than the
batch itself. For every adaptive run (absa and its variants) and every pair of consecutive probed epochs (e, e+1)
it takes the ratio λ(e+1) / λ(e), where λ(e) is probed after epoch e, and groups the pairs by what changed between
the two epochs: the batch (×1 or ×2) and η/B (the epoch records' ``lr`` and ``global_batch_size``). The pair of
epochs 1 and 2 is its own group: there the network leaves its starting point whatever the schedule does.

Per group: the number of pairs, the geometric mean and the range of λ(e+1) / λ(e), and how many of them halved
(≤ 0.5: what the rule asks of a curvature growth at policy.eig_ratio=2), and beside it the geometric mean of the
test loss's ratio over the same pairs, to see whether λ_max moves with how fast the fit improves. If λ_max followed
the batch, a growth under linear scaling would lower it; if it followed η/B, it would stay put there and fall where
η/B falls (an LR decay, or a growth whose LR is not scaled linearly: `optim.lr_scaling=sqrt` or `none`).

    .venv/bin/python benchmarks/curvature_vs_temperature.py RESULTS.json [MORE.json ...] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iterations import is_adaptive  # noqa: E402 - the same rule for which contenders follow the curvature

HALVED = 0.5  # the rule's drop at policy.eig_ratio=2
FIRST = "epochs 1 → 2 (leaving the start)"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def change_label(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What changed between two consecutive epochs: the batch factor and the η/B factor, rounded for grouping."""
    if before["epoch"] == 1:
        return FIRST
    batch = after["global_batch_size"] / before["global_batch_size"]
    temperature = (after["lr"] / after["global_batch_size"]) / (before["lr"] / before["global_batch_size"])
    return f"batch ×{batch:g}, η/B ×{float(f'{temperature:.2g}'):g}"


def pairs(epochs: list[dict[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(what changed, λ(e+1) / λ(e), test loss(e+1) / test loss(e)) for every two consecutive epochs that were
    both probed (the loss ratio None where a loss is missing or not finite)."""
    out = []
    for before, after in zip(epochs, epochs[1:]):
        if after["epoch"] == before["epoch"] + 1 and _finite(before["eigenvalue"]) and _finite(after["eigenvalue"]):
            losses = before.get("test_loss"), after.get("test_loss")
            loss_ratio = losses[1] / losses[0] if all(_finite(v) for v in losses) else None
            out.append((change_label(before, after), after["eigenvalue"] / before["eigenvalue"], loss_ratio))
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def adaptive_runs(saved: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for measured in saved["results"] for run in measured["runs"] if is_adaptive(run["policy"])]


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per kind of change, ordered by the η/B factor (largest first), the first epochs' group first."""
    grouped: dict[str, list[float]] = defaultdict(list)
    losses: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for label, ratio, loss_ratio in pairs(run["epochs"]):
            grouped[label].append(ratio)
            if loss_ratio is not None:
                losses[label].append(loss_ratio)
    rows = []
    for label, ratios in grouped.items():
        rows.append({"change": label, "pairs": len(ratios), "geomean": _geomean(ratios), "min": min(ratios),
                     "max": max(ratios), "halved": sum(r <= HALVED for r in ratios),
                     "test_loss_geomean": _geomean(losses[label]) if losses[label] else None})

    def order(row: dict[str, Any]) -> tuple[int, float, float]:
        if row["change"] == FIRST:
            return (0, 0.0, 0.0)
        batch, temperature = (float(part.split("×")[1]) for part in row["change"].split(", "))
        return (1, -temperature, batch)

    return sorted(rows, key=order)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| between two probed epochs | pairs | λ(e+1) / λ(e), geometric mean | range | halved (≤ 0.5) "
             "| test loss(e+1) / test loss(e), geometric mean |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        loss = "—" if r["test_loss_geomean"] is None else f"{r['test_loss_geomean']:.2f}"
        lines.append(f"| {r['change']} | {r['pairs']} | {r['geomean']:.2f} | {r['min']:.2f}–{r['max']:.2f} "
                     f"| {r['halved']} of {r['pairs']} | {loss} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="--out files of benchmarks/iterations.py")
    p.add_argument("--policies", nargs="*", help="only these contenders (e.g. absa 'absa[noscale]'); default: all "
                                                 "adaptive ones")
    p.add_argument("--out", type=Path, help="write the rows here (JSON)")
    args = p.parse_args(argv)
    runs = []
    for path in args.results:
        try:
            runs += adaptive_runs(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as error:
            print(f"error: {path} is not a results file of benchmarks/iterations.py ({error})", file=sys.stderr)
            return 2
    if args.policies:
        runs = [r for r in runs if r["policy"] in args.policies]
    if not runs:
        print("error: no absa or abs run in these results; run benchmarks/iterations.py with --policies absa",
              file=sys.stderr)
        return 2
    rows = table(runs)
    print(f"{len(runs)} runs: {', '.join(sorted({r['policy'] for r in runs}))}\n\n{markdown(rows)}")
    if args.out:
        args.out.write_text(json.dumps({"runs": [(r["policy"], r["seed"]) for r in runs], "rows": rows}, indent=1)
                            + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
