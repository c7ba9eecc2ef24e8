"""SGD updates to accuracy: absa against small-batch SGD, large-batch SGD with warm-up, and abs, same epochs.

The paper's claim under test (PAPER.md): ABSA needs at least 5× fewer SGD updates than small-batch SGD at equal or
better accuracy. Contenders (``policy.name``, docs/policy.md), everything else the preset's:

- **absa**: the paper's method: the batch grows as the curvature drops, FGSM on a fraction of each micro-batch.
- **fixed**: small-batch SGD at ``batch.global_batch_size`` throughout: the paper's baseline.
- **fixed-large**: ``policy.max_global_batch`` from the start, linear LR scaling and Goyal et al.'s warm-up.
- **abs**: absa without the adversarial examples.
- **absa[LABEL]** (``--variant 'LABEL: KEY=VALUE ...'``, repeatable): absa with extra overrides, e.g. another probe
  option or LR ramp, measured in the same interleaved loop against the same ``fixed`` runs.

Each (policy, seed) pair is one whole run, in this process: ``Controller`` + ``LocalGroup``, the loop `absa train
--local` runs, with ``threads`` torch threads. The worker count is left out: W workers and one worker with W×
gradient accumulation compute the same updates on the same samples (engine.py), up to floating-point summation
order, so one worker measures what a cluster would (the order can still move a growth whose λ_max lies near the
threshold). ``seed=S`` varies model init, sample order and augmentation; ``data.seed`` (the procedural dataset's
content) and ``probe.seed`` (the probe set) stay the preset's, so every run sees the same dataset. The runs are
interleaved (seed by seed, every policy in turn) so that machine load hits the policies alike. Updates and accuracy
are deterministic for a given thread count (the same seed gives the same epoch records in another process); wall
time is not.

Reported per contender: final test accuracy (after the last epoch), SGD updates, final global batch (the batch the
last epoch trained at), the growths by cause (curvature earlier than the ``policy.duration`` fallback would have
grown, curvature on the fallback's own epoch, fallback), wall time (``Controller.run_all``: training, evaluation,
probes, checkpoints; not building the data and model); mean ± sample std over seeds. The accuracy difference to
``fixed`` is paired by seed (same init, same order), with the standard error the test set's size alone puts on it:
each run's last checkpoint classifies the test set once more (checked against its recorded accuracy), and the
samples two paired runs classify differently give that error (``paired_error``; 1,000 test samples resolve a few
tenths of a point, not less). For absa and abs the envelope ``absa plan`` computes is printed too: the fewest and
the most updates the ABS rule allows on this config (growth at every probe vs growth only by the
``policy.duration`` fallback), which bounds the update ratio whatever the curvature does.

CIFAR-10: with ``--data-root DIR`` holding ``cifar-10-batches-py/`` the same comparison also runs on
``--cifar-preset`` (default ``c1-cifar10``, the paper's C1 recipe) with ``data.root=DIR``; without it, or when the
files are missing, it is skipped with a message. ``--epochs`` and the overrides apply to every preset run.

    .venv/bin/python benchmarks/iterations.py [KEY=VALUE ...] [--preset quickstart] [--policies absa fixed ...]
        [--variant 'LABEL: KEY=VALUE ...' ...] [--seeds 0 1 2] [--epochs N] [--threads 1] [--data-root DIR]
        [--out results.json [--resume]]
    .venv/bin/python benchmarks/iterations.py --tables-from results.json [more.json ...]   # or .json.gz

Arguments of the form ``key.path=value`` are config overrides, wherever they stand on the command line. ``--out``
is rewritten after every run, so a benchmark that is stopped keeps its finished runs; the same command with
``--resume`` keeps those (same preset, same config, same variant overrides) and runs the rest. Invocations run side
by side (one per seed or policy, each with its own ``--out``) make one table with ``--tables-from A.json B.json ...``:
runs of the same preset and config are merged; a (policy, seed) pair found in two files is an error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from absa_cli.decide.policy import ADAPTIVE_POLICIES  # noqa: E402 - after the path; pure Python, no torch

POLICIES = ("absa", "fixed", "fixed-large", "abs")
BASELINE = "fixed"
CLAIMED_RATIO = 5.0  # PAPER.md: "ABSA cuts SGD iterations up to 5×"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if OVERRIDE.match(a)]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="KEY=VALUE arguments anywhere are config overrides for every run.")
    p.add_argument("--preset", default="quickstart", help="the preset every policy trains (default: quickstart)")
    p.add_argument("--policies", nargs="*", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--variant", action="append", default=[], metavar="'LABEL: KEY=VALUE ...'",
                   help="also run absa with these overrides, labelled absa[LABEL] (repeatable)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (config key `seed`)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: the preset's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (config key `threads`)")
    p.add_argument("--data-root", type=Path, help="a folder holding cifar-10-batches-py/: also run --cifar-preset")
    p.add_argument("--cifar-preset", default="c1-cifar10", help="the CIFAR-10 preset --data-root runs")
    p.add_argument("--runs-dir", type=Path, help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="write every number measured here (JSON)")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of the --out file a stopped "
                   "benchmark left (same preset, config and variant overrides) and run only the rest")
    p.add_argument("--tables-from", type=Path, nargs="+", metavar="JSON",
                   help="only print the tables of saved --out files; several files (e.g. from invocations run side "
                   "by side) are merged, run by run, into one table per configuration; gzipped files (.json.gz) too")
    args = p.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides
    args.contenders = [(policy, [f"policy.name={policy}"]) for policy in args.policies]
    for variant in args.variant:
        label, colon, extra = variant.partition(":")
        if not colon or not label.strip():
            p.error(f"--variant {variant!r}: write 'LABEL: KEY=VALUE ...'")
        args.contenders.append((f"absa[{label.strip()}]", ["policy.name=absa", *extra.split()]))
    return args


def is_adaptive(label: str) -> bool:
    """absa, abs and the absa[...] variants: the contenders whose batch follows the curvature."""
    return label.split("[")[0] in ADAPTIVE_POLICIES


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_avg_1min_start": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d")}


def missing_data(config: Any) -> str | None:
    """Why the config's dataset cannot be read here, or None (procedural sets are always there)."""
    from absa_cli.catalog import dataset_spec

    spec = dataset_spec(config.data.name)
    if spec.procedural:
        return None
    folder = config.data.resolved_root() / spec.folder
    expected = [folder / name for name in CIFAR10_FILES] if spec.name == "cifar10" else [folder]
    absent = [path for path in expected if not path.exists()]
    return f"{absent[0]} is missing (layout: {spec.layout})" if absent else None


def update_envelope(config: Any) -> dict[str, int]:
    """The fewest and most updates the ABS rule allows on this config, and the fixed baseline's (`absa plan`)."""
    import dataclasses

    from absa_cli.cli.plan import build_plan

    adaptive = dataclasses.replace(config, policy=dataclasses.replace(config.policy, name="absa"))
    plan = build_plan(adaptive, max_workers=1)
    return {"fastest": plan["updates"]["fastest"], "slowest": plan["updates"]["slowest"],
            "fixed": plan["fixed_updates"]}


def run_one(config: Any, runs_root: Path) -> dict[str, Any]:
    """One whole in-process run; its summary figures and epoch records."""
    from absa_cli.driver.controller import Controller
    from absa_cli.driver.local_group import LocalGroup
    from absa_cli.driver.outcome import Collapsed, Diverged
    from absa_cli.run.metrics import Console
    from absa_cli.run.rundir import RunDir

    started = time.perf_counter()
    group = LocalGroup(config)
    run = RunDir.create(runs_root, config)
    stopped = stop_kind = None
    with (run.path / "console.log").open("w") as log:
        controller = Controller(config, run, group, Console(stream=log, force_plain=True))
        training = time.perf_counter()
        try:
            summary = controller.run_all()
        except Diverged as error:  # a result, not a crash: recorded, and the other runs go on
            stopped = " ".join(str(error).split())
            stop_kind = "collapsed" if isinstance(error, Collapsed) else "diverged"
        finally:
            controller.close()
            group.close()
    epochs = run.records("epoch")
    batches = [r["global_batch_size"] for r in epochs]
    if stopped is None:
        run.finish("finished", last_epoch=summary["epochs"], updates=summary["updates"],
                   final_test_acc=summary["final_test_acc"], best_test_acc=summary["best_test_acc"])
    else:
        run.finish("diverged", last_epoch=len(epochs), error=stopped)
        batches.append(controller.decision.global_batch_size)  # the epoch that stopped trained at it: no record
        summary = {"updates": epochs[-1]["updates"] if epochs else 0, "wall_s": time.perf_counter() - training,
                   "best_test_acc": max((r["test_acc"] for r in epochs), default=0.0)}
    return {"policy": config.policy.name, "seed": config.seed,
            "final_test_acc": epochs[-1]["test_acc"] if epochs else 0.0, "best_test_acc": summary["best_test_acc"],
            "updates": summary["updates"], "final_global_batch": batches[-1], "batches": batches,
            "wall_s": summary["wall_s"], "setup_and_run_s": time.perf_counter() - started,
            "probe_s": sum(r["probe_s"] for r in epochs), "run_id": run.id, "epochs": epochs, "stopped": stopped,
            "stop_kind": stop_kind,
            "test_correct": None if stopped else test_correct(config, run, epochs[-1]["test_acc"])}


def test_correct(config: Any, run: Any, recorded_acc: float) -> str:
    """Which test samples the run's final weights classify correctly, one character per sample ('1': correct), from
    its last checkpoint, checked against the accuracy the run recorded. Two runs' strings give the samples they
    classify differently, and with them the test sample's own error of their accuracy difference
    (``paired_error``)."""
    import torch

    from absa_cli.data import open_split
    from absa_cli.run.checkpoint import CheckpointStore
    from absa_cli.worker.hessian import rebuild_model

    found = CheckpointStore(run.checkpoints_dir).latest(report=print)
    if found is None or found[0].epoch != config.epochs:
        raise RuntimeError(f"run {run.id} left no checkpoint of its last epoch ({config.epochs})")
    model = rebuild_model(config, found[1]).eval()
    test_set = open_split(config.data, "test")
    hits = []
    with torch.no_grad():
        for batch in torch.split(torch.arange(len(test_set)), config.eval.batch_size):
            inputs, labels = test_set.get_batch(batch, None)
            hits.append(model(inputs).argmax(dim=1) == labels)
    correct = torch.cat(hits)
    if round(correct.sum().item()) != round(recorded_acc * len(correct)):
        raise RuntimeError(f"run {run.id}: its last checkpoint classifies {correct.sum().item()} of {len(correct)} "
                           f"test samples correctly, where its last epoch recorded {recorded_acc:.4f}")
    return "".join("1" if hit else "0" for hit in correct.tolist())


def paired_error(mine: list[str], theirs: list[str]) -> tuple[float, list[tuple[int, int]]]:
    """The standard error, over the test sample, of the mean paired accuracy difference of two policies' runs
    (``test_correct`` strings, one per seed, in the same order), and each pair's counts (samples only the first
    classifies correctly, samples only the second does). For one pair with b and c such samples of n, the difference
    is (b − c) / n and its variance ((b + c) / n − ((b − c) / n)²) / n (the paired, McNemar, form); the pairs are
    independent test-set draws of the same n samples only in this approximation, which treats the trained weights
    as given: it measures how much of a difference the test set's size can resolve, not the seeds' spread."""
    counts, variance = [], 0.0
    for a, b in zip(mine, theirs):
        if len(a) != len(b):
            raise ValueError(f"paired runs were tested on {len(a)} and {len(b)} samples")
        only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
        only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
        n = len(a)
        variance += ((only_a + only_b) / n - ((only_a - only_b) / n) ** 2) / n
        counts.append((only_a, only_b))
    return variance ** 0.5 / len(counts), counts


# ---------------------------------------------------------------------------------------------- summary

def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], policies: list[str]) -> list[dict[str, Any]]:
    """Per policy: mean and sample std over seeds, and the comparison with the fixed baseline, paired by seed. A run
    that stopped (diverged or collapsed) is counted as such, and left out of the means: its updates are a part."""
    baseline = {r["seed"]: r for r in runs if r["policy"] == BASELINE and not r.get("stopped")}
    rows = []
    for policy in policies:
        stopped = [r["seed"] for r in runs if r["policy"] == policy and r.get("stopped")]
        mine = [r for r in runs if r["policy"] == policy and not r.get("stopped")]
        if not mine:
            if stopped:
                rows.append({"policy": policy, "seeds": [], "stopped": stopped})
            continue
        accs, updates, walls = ([r[k] for r in mine] for k in ("final_test_acc", "updates", "wall_s"))
        row: dict[str, Any] = {
            "policy": policy, "seeds": [r["seed"] for r in mine], "stopped": stopped,
            "final_test_acc_mean": statistics.mean(accs), "final_test_acc_std": _std(accs),
            "updates_mean": statistics.mean(updates), "updates_std": _std(updates),
            "final_global_batch": sorted({r["final_global_batch"] for r in mine}),
            "wall_s_mean": statistics.mean(walls), "wall_s_std": _std(walls),
        }
        if is_adaptive(policy):
            early, on_fallback_epoch, fallback = (sum(c) for c in zip(*(growth_causes(r["epochs"]) for r in mine)))
            row["growths"] = {"curvature_early": early, "curvature_on_fallback_epoch": on_fallback_epoch,
                              "fallback": fallback}
        paired = [r for r in mine if r["seed"] in baseline]
        if paired:
            deltas = [r["final_test_acc"] - baseline[r["seed"]]["final_test_acc"] for r in paired]
            row["acc_delta_vs_fixed_mean"], row["acc_delta_vs_fixed_std"] = statistics.mean(deltas), _std(deltas)
            row["updates_ratio_vs_fixed"] = (statistics.mean(baseline[r["seed"]]["updates"] for r in paired)
                                             / statistics.mean(r["updates"] for r in paired))
            if all(r.get("test_correct") and baseline[r["seed"]].get("test_correct") for r in paired):
                row["acc_delta_test_se"], row["discordant"] = paired_error(
                    [r["test_correct"] for r in paired], [baseline[r["seed"]]["test_correct"] for r in paired])
        rows.append(row)
    return rows


def schedule(batches: list[int]) -> str:
    """[128, 128, 256] → '128×2, 256'."""
    parts: list[list[int]] = []
    for batch in batches:
        if parts and parts[-1][0] == batch:
            parts[-1][1] += 1
        else:
            parts.append([batch, 1])
    return ", ".join(f"{b}×{n}" if n > 1 else f"{b}" for b, n in parts)


def _pm(mean: float, std: float, digits: int, scale: float = 1.0) -> str:
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| policy | seeds | final test acc % (mean ± std) | Δ acc vs fixed, paired (pp) | SGD updates "
             "(mean ± std) | fixed ÷ this (updates) | final global batch | growths: curvature early / curvature "
             "on the fallback's epoch / fallback | wall time s (mean ± std) | test-sample SE of Δ (pp) | test "
             "samples right only here / only in fixed, per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = f"{len(r['seeds'])}" + (f" (+{len(r['stopped'])} stopped)" if r.get("stopped") else "")
        if not r["seeds"]:
            lines.append(f"| {r['policy']} | {seeds} | — | — | — | — | — | — | — | — | — |")
            continue
        delta = _pm(r["acc_delta_vs_fixed_mean"], r["acc_delta_vs_fixed_std"], 2, 100) \
            if "acc_delta_vs_fixed_mean" in r and r["policy"] != BASELINE else "—"
        ratio = f"{r['updates_ratio_vs_fixed']:.2f}×" if "updates_ratio_vs_fixed" in r else "—"
        acc = _pm(r["final_test_acc_mean"], r["final_test_acc_std"], 2, 100)
        growths = " / ".join(str(n) for n in r["growths"].values()) if "growths" in r else "—"
        lines.append(f"| {r['policy']} | {seeds} | {acc} | {delta} "
                     f"| {_pm(r['updates_mean'], r['updates_std'], 0)} | {ratio} "
                     f"| {', '.join(str(b) for b in r['final_global_batch'])} | {growths} "
                     f"| {_pm(r['wall_s_mean'], r['wall_s_std'], 0)} | {_test_sample(r)} |")
    return "\n".join(lines)


def _test_sample(row: dict[str, Any]) -> str:
    """The two test-sample columns: '—' for the baseline, and for runs saved without ``test_correct``."""
    if "acc_delta_test_se" not in row or row["policy"] == BASELINE:
        return "— | —"
    return f"{100 * row['acc_delta_test_se']:.2f} | {', '.join(f'{a} / {b}' for a, b in row['discordant'])}"


def growth_causes(epochs: list[dict[str, Any]], stopped: bool = False) -> tuple[int, int, int]:
    """(curvature growths earlier than the policy.duration fallback would have grown, curvature growths on the
    fallback's own epoch, fallback growths), from the epoch records' ``growth`` and ``growth_epochs_early``. The last
    epoch's decision is left out: no epoch trains at it (absa no longer grows there; runs saved before it did),
    unless the run ``stopped`` in the epoch after it (which trained at that batch)."""
    trained = epochs if stopped else epochs[:-1]
    if any("growth" not in r for r in trained):
        raise ValueError("these epoch records carry no `growth` field: they were saved before absa recorded why "
                         "each growth happened; rerun the benchmark")
    curvature = [r for r in trained if r["growth"] == "curvature"]
    early = sum(r["growth_epochs_early"] > 0 for r in curvature)
    return early, len(curvature) - early, sum(r["growth"] == "fallback" for r in trained)


def _loss(value: float | None) -> str:
    return "nan (diverged)" if value is None or value != value or value == float("inf") else f"{value:.3g}"


def seeds_table(runs: list[dict[str, Any]], policies: list[str]) -> str:
    lines = ["| policy | seed | final test acc % | best test acc % | final train loss | SGD updates | final global "
             "batch | batch per epoch | growths: curvature early / on the fallback's epoch / fallback | wall "
             "time s | probe s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for policy in policies:
        for r in sorted((r for r in runs if r["policy"] == policy), key=lambda r: r["seed"]):
            causes = " / ".join(map(str, growth_causes(r["epochs"], bool(r.get("stopped"))))) \
                if is_adaptive(policy) else "—"
            final, done = f"{100 * r['final_test_acc']:.2f}", len(r["epochs"])
            if r.get("stopped"):
                final = f"{stop_word(r)} in epoch {done + 1}" + (f" ({final} after {done})" if done else "")
            loss = _loss(r["epochs"][-1]["train_loss"]) if done else "—"
            lines.append(f"| {policy} | {r['seed']} | {final} | {100 * r['best_test_acc']:.2f} "
                         f"| {loss} | {r['updates']} | {r['final_global_batch']} "
                         f"| {schedule(r['batches'])} | {causes} | {r['wall_s']:.0f} | {r['probe_s']:.1f} |")
    return "\n".join(lines)


def stop_word(run: dict[str, Any]) -> str:
    """How a stopped run stopped, as recorded; a file written before runs recorded it keeps its message's word."""
    return run.get("stop_kind") or ("collapsed" if "collapsed" in run["stopped"].split(":")[0] else "diverged")


def claim_lines(rows: list[dict[str, Any]], envelope: dict[str, int]) -> list[str]:
    """The paper's claim against the measurement, for each adaptive policy measured beside the baseline."""
    out = []
    for r in rows:
        policy = r["policy"]
        if is_adaptive(policy) and r.get("stopped"):
            seeds = ("seed " if len(r["stopped"]) == 1 else "seeds ") + ", ".join(map(str, r["stopped"]))
            out.append(f"- {policy}: {seeds} stopped (diverged or collapsed): "
                       f"below the claim, which asks for equal accuracy")
        if not is_adaptive(policy) or "updates_ratio_vs_fixed" not in r:
            continue
        ratio = r["updates_ratio_vs_fixed"]
        verdict = "meets" if ratio >= CLAIMED_RATIO else "below"  # the stopped seeds fail the claim on their line
        finished = f" on the {len(r['seeds'])} seed{'' if len(r['seeds']) == 1 else 's'} that finished" if r.get("stopped") else ""
        delta = _pm(r["acc_delta_vs_fixed_mean"], r["acc_delta_vs_fixed_std"], 2, 100)
        fixed, fewest, most = envelope["fixed"], envelope["fastest"], envelope["slowest"]
        growths = r["growths"]
        total = sum(growths.values())
        out.append(f"- {policy}: {ratio:.2f}× fewer updates than fixed{finished} ({verdict} the claimed "
                   f"≥ {CLAIMED_RATIO:g}×), "
                   f"final test accuracy {delta} pp vs fixed (paired by seed); the ABS rule allows {fewest}–{most} "
                   f"updates here ({fixed / most:.1f}×–{fixed / fewest:.1f}× fewer than fixed's {fixed}); "
                   f"{growths['curvature_early']} of {total} growths curvature-triggered earlier than the fallback")
    return out


# ---------------------------------------------------------------------------------------------- main

def compare(preset: str, overrides: list[str], args: argparse.Namespace, runs_root: Path,
            save: Callable[[dict[str, Any]], None], prior: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every (seed, policy) run of one preset, interleaved; ``save`` gets the runs so far after each; the tables
    printed; everything returned. ``prior``: finished runs by config (``--resume``), kept instead of rerun."""
    from absa_cli import config as config_mod

    common = [*overrides, f"threads={args.threads}", "cluster.max_workers=1"]
    if args.epochs is not None:
        common.append(f"epochs={args.epochs}")
    probe = config_mod.load(preset, common)  # fails in one line on a bad override, before anything runs
    envelope = update_envelope(probe)
    header = (f"## {preset}: {probe.data.name}, {probe.model.name} ×{probe.model.width:g}, {probe.epochs} epochs, "
              f"batch {probe.batch.global_batch_size} → cap {probe.policy.max_global_batch}; "
              f"overrides: {' '.join(overrides) or 'none'}")
    print(f"\n{header}", flush=True)
    measured = {"preset": preset, "header": header, "overrides": overrides, "config": config_mod.to_yaml(probe),
                "envelope": envelope, "policies": [label for label, _ in args.contenders],
                "variants": dict(args.contenders), "runs": []}
    runs = measured["runs"]
    total = len(args.seeds) * len(args.contenders)
    for seed in args.seeds:
        for policy, extra in args.contenders:
            done = [r for r in prior.get(measured["config"], [])
                    if (r["policy"], r["seed"], r.get("extra")) == (policy, seed, extra)]
            if done:
                result = {**done[0], "reused": True}
            else:
                config = config_mod.load(preset, [*common, f"seed={seed}", *extra])
                result = {**run_one(config, runs_root), "policy": policy, "extra": extra}
            runs.append(result)
            kept = " (kept from --out)" if done else ""
            if result.get("stopped"):
                print(f"[{len(runs)}/{total}] {policy} seed {seed}{kept}: {result['stopped']}", flush=True)
                save(measured)
                continue
            print(f"[{len(runs)}/{total}] {policy} seed {seed}{kept}: final test acc "
                  f"{100 * result['final_test_acc']:.2f}%, {result['updates']} updates, "
                  f"batches {schedule(result['batches'])}, {result['wall_s']:.0f} s", flush=True)
            save(measured)
    measured["summary"] = summarize(runs, measured["policies"])
    print(f"\n{report(measured)}")
    return measured


def report(measured: dict[str, Any]) -> str:
    """The tables and the claim check of one preset's comparison (also from a saved JSON: --tables-from)."""
    policies = measured.get("policies") or list(dict.fromkeys(r["policy"] for r in measured["runs"]))
    rows = summarize(measured["runs"], policies)
    text = f"{summary_table(rows)}\n\nPer seed:\n\n{seeds_table(measured['runs'], policies)}\n"
    claims = claim_lines(rows, measured["envelope"])
    if claims:
        text += ("\nClaim (PAPER.md): ABSA needs ≥ 5× fewer SGD updates than small-batch SGD at equal or better "
                 "accuracy.\n" + "\n".join(claims) + "\n")
    return text


def merge_saved(paths: list[Path]) -> dict[str, Any]:
    """Saved --out files as one: the runs of results with the same config (preset, overrides, epochs) are joined in
    file order, each machine kept; ValueError if two files hold the same (policy, seed, overrides) run."""
    merged: dict[str, Any] = {"machines": [], "complete": True, "results": [], "skipped": []}
    by_config: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            saved = json.loads(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_text())
            merged["machines"].append(saved["machine"])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error) as error:  # the last two: a cut .gz
            raise ValueError(f"{path}: not an iterations.py --out file ({error}); pass the files --out wrote") from None
        merged["complete"] = merged["complete"] and saved.get("complete", True)
        merged["skipped"] += [s for s in saved["skipped"] if s not in merged["skipped"]]
        for measured in saved["results"]:
            into = by_config.get(measured["config"])
            if into is None:
                into = by_config[measured["config"]] = {**measured, "runs": [], "policies": []}
                merged["results"].append(into)
            seen = {(r["policy"], r["seed"], str(r.get("extra"))) for r in into["runs"]}
            for run in measured["runs"]:
                key = (run["policy"], run["seed"], str(run.get("extra")))
                if key in seen:
                    raise ValueError(f"{run['policy']} seed {run['seed']} of {measured['preset']} is in more than "
                                     f"one file; pass each run once")
                into["runs"].append(run)
                seen.add(key)
            policies = measured.get("policies") or [r["policy"] for r in measured["runs"]]
            into["policies"] += [p for p in policies if p not in into["policies"]]
            into.setdefault("variants", {}).update(measured.get("variants", {}))
    return merged


def print_saved(paths: list[Path]) -> int:
    saved = merge_saved(paths)
    for machine_info in saved["machines"]:
        print(json.dumps(machine_info))
    if not saved["complete"]:
        print("incomplete: a benchmark stopped before its last run; these are the runs it finished")
    for measured in saved["results"]:
        print(f"\n{measured.get('header', '## ' + measured['preset'])}\n\n{report(measured)}")
    for skipped in saved["skipped"]:
        print(f"{skipped['preset']}: skipped: {skipped['reason']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from absa_cli.config import ConfigError

    args = parse_args(argv)
    if args.tables_from:
        try:
            return print_saved(args.tables_from)
        except ValueError as error:  # an unreadable file, records from an older absa, or one run in two files
            print(f"error: {error}", file=sys.stderr)
            return 2
    prior: dict[str, list[dict[str, Any]]] = {}
    if args.resume:
        if args.out is None or not args.out.exists():
            print("error: --resume continues the file --out names, and there is none", file=sys.stderr)
            return 2
        prior = {m["config"]: m["runs"] for m in json.loads(args.out.read_text())["results"]}
    about = {"machine": machine(), "argv": sys.argv if argv is None else argv}
    print(json.dumps(about["machine"]), flush=True)
    targets = [args.preset]
    overrides = list(args.overrides)
    if args.data_root is None:
        print(f"CIFAR-10 ({args.cifar_preset}): skipped: no --data-root (a folder holding cifar-10-batches-py/)")
    else:
        overrides.append(f"data.root={args.data_root}")
        if args.cifar_preset != args.preset:
            targets.append(args.cifar_preset)
    results, skipped = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="absa-iterations-") as tmp:
        runs_root = args.runs_dir or Path(tmp)
        for preset in targets:
            try:
                from absa_cli import config as config_mod

                missing = missing_data(config_mod.load(preset, overrides))
                if missing:
                    print(f"{preset}: skipped: {missing}")
                    skipped.append({"preset": preset, "reason": missing})
                    continue
                results.append(compare(preset, overrides, args, runs_root,
                                       lambda partial: write_json(args.out, about, [*results, partial], skipped,
                                                                  complete=False), prior))
            except ConfigError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
    about["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    about["total_s"] = time.perf_counter() - started
    print(f"\ntotal {about['total_s']:.0f} s; load average {about['machine']['load_avg_1min_start']} at the start, "
          f"{about['machine']['load_avg_1min_end']} at the end")
    if args.out:
        write_json(args.out, about, results, skipped, complete=True)
        print(f"raw results: {args.out}")
    return 0


def write_json(path: Path | None, about: dict[str, Any], results: list[dict[str, Any]],
               skipped: list[dict[str, Any]], complete: bool) -> None:
    """All runs so far (after each run, so that a killed benchmark keeps its finished runs), atomically."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**about, "complete": complete, "results": results, "skipped": skipped}, indent=1)
                   + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
