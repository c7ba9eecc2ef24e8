"""Training curves of one or more runs in one PNG (run/: reads run directories; matplotlib only inside functions).

The x axis defaults to cumulative SGD updates because that is what ABSA saves: overlaid on the same axis, an absa
run reaches the fixed baseline's accuracy in a fraction of its updates.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absa_cli import config as config_mod
from absa_cli.errors import UserError, missing_folder
from absa_cli.run.rundir import check_writable

PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "tif", "tiff", "eps", "ps")
MATPLOTLIB = "{} needs matplotlib; install it with `pip install 'absa-train[plot]'`"
X_AXES = {"updates": "SGD updates (cumulative)", "epoch": "epoch", "time": "wall time (s)"}
EVENT_STYLES = {"resize": ":", "failure": "-.", "restart": (0, (6, 2, 1, 2, 1, 2))}


@dataclass
class RunCurves:
    """One run's epoch records, the last per epoch (a restart re-runs epochs), and its resize/failure/restart events."""

    run_id: str
    label: str
    epochs: list[dict[str, Any]]
    events: list[dict[str, Any]]

    def x(self, axis: str) -> list[float]:
        """Each epoch's x at its end: ``updates`` is already cumulative; time sums ``epoch_s``."""
        if axis == "updates":
            return [float(r["updates"]) for r in self.epochs]
        if axis == "epoch":
            return [float(r["epoch"]) for r in self.epochs]
        total, xs = 0.0, []
        for record in self.epochs:
            total += record.get("epoch_s") or 0.0
            xs.append(total)
        return xs

    def series(self, field: str, axis: str, positive: bool = False) -> tuple[list[float], list[float]]:
        """(x, y) of one field, leaving out nulls (unprobed λ_max, a diverged loss) and, for log axes, values <= 0."""
        points = [(x, r[field]) for x, r in zip(self.x(axis), self.epochs)
                  if r.get(field) is not None and (not positive or r[field] > 0)]
        return [x for x, _ in points], [y for _, y in points]

    def event_x(self, event: dict[str, Any], axis: str) -> float:
        """Where an event falls: its epoch's start, plus the share of the epoch already done (a failure's
        ``samples_seen``); a resize or restart applies from the start of its epoch."""
        ends = dict(zip((r["epoch"] for r in self.epochs), self.x(axis)))
        start = max((x for epoch, x in ends.items() if epoch < event["epoch"]), default=0.0)
        record = next((r for r in self.epochs if r["epoch"] == event["epoch"]), None)
        if record is None or not record.get("samples_seen"):
            return start
        return start + (ends[event["epoch"]] - start) * event.get("samples_seen", 0) / record["samples_seen"]

    def summary(self) -> str:
        last = self.epochs[-1]
        test_acc = f"{last['test_acc']:.3f}" if last.get("test_acc") is not None else "n/a"
        return f"{self.label}: {last['updates']:,} updates, test acc {test_acc} after epoch {last['epoch']}"


def load_run(run_dir: Path) -> RunCurves:
    """Read ``metrics.jsonl`` (and the policy from ``config.yaml``, for the label); ``UserError`` if nothing to plot."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"run {run_dir.name} has no completed epoch yet (no {metrics}); plot it after its first "
                        f"epoch")
    by_epoch: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for record in _records(metrics):
        if record.get("kind") == "epoch":
            by_epoch[record["epoch"]] = record  # later lines win: a restart re-runs the epochs after its checkpoint
        elif record.get("kind") in EVENT_STYLES:
            events.append(record)
    if not by_epoch:
        raise UserError(f"run {run_dir.name} has no completed epoch yet in {metrics}; plot it after its first epoch")
    return RunCurves(run_dir.name, _label(run_dir), [by_epoch[e] for e in sorted(by_epoch)], events)


PLOTTED = ("epoch_s", "samples_seen", "global_batch_size", "num_workers", "lr", "eigenvalue", "test_acc",
           "train_acc")  # besides the epoch and the updates: numbers, or null where unmeasured


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            if number == len(lines):  # a live run's record half-written at this instant: skip it
                continue
            raise UserError(f"{path}:{number} is not a JSON record; the metrics file is damaged") from None
        problem = _not_plottable(record)
        if problem:
            raise UserError(f"{path}:{number} is not a record absa writes ({problem}); the metrics file is damaged: "
                            f"restore it from a copy")
        records.append(record)
    return records


def _not_plottable(record: Any) -> str | None:
    """What keeps a record from being plotted, or None (records of kinds the plot does not read are not looked at)."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if record.get("kind") not in ("epoch", *EVENT_STYLES):
        return None
    if not isinstance(record.get("epoch"), int) or isinstance(record.get("epoch"), bool):
        return f"its epoch is {record.get('epoch')!r}, not a whole number"
    if record["kind"] == "epoch" and not number(record.get("updates")):
        return f"its updates are {record.get('updates')!r}, not a number"
    wrong = next((key for key in PLOTTED if record.get(key) is not None and not number(record[key])), None)
    return f"its {wrong} is {record[wrong]!r}, not a number" if wrong else None


def _label(run_dir: Path) -> str:
    """``<run-id> (<policy>)``; a missing or unreadable config only costs the policy in the label."""
    try:
        policy = config_mod.from_yaml((run_dir / "config.yaml").read_text()).policy.name
    except (OSError, UserError):
        return run_dir.name
    return f"{run_dir.name} ({policy})"


def render(runs: list[RunCurves], axis: str, path: Path) -> None:
    """Four panels sharing the x axis: batch and workers, LR, λ_max, accuracy; one colour per run."""
    plt, _ = _pyplot()
    figure = draw(runs, axis)
    figure.savefig(path)
    plt.close(figure)


def draw(runs: list[RunCurves], axis: str):
    """``render``'s figure, not yet saved."""
    plt, ticker = _pyplot()
    figure, panels = plt.subplots(2, 2, figsize=(13, 8), dpi=110, sharex=True, layout="constrained")
    (batch_ax, lr_ax), (eig_ax, acc_ax) = panels
    workers_ax = batch_ax.twinx()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        colour = colours[index % len(colours)]
        _step(batch_ax, run.series("global_batch_size", axis, positive=True), colour, "-", 2.0, run.summary())
        _step(workers_ax, run.series("num_workers", axis), colour, "--", 1.2, None)
        lr_ax.plot(*run.series("lr", axis, positive=True), color=colour, marker=".")
        eig_ax.plot(*run.series("eigenvalue", axis, positive=True), color=colour, marker="o", markersize=3)
        acc_ax.plot(*run.series("test_acc", axis), color=colour, marker=".")
        acc_ax.plot(*run.series("train_acc", axis), color=colour, ls="--", alpha=0.6)
        for event in run.events:
            batch_ax.axvline(run.event_x(event, axis), color=colour, ls=EVENT_STYLES[event["kind"]], lw=1, alpha=0.8)
    _style(batch_ax, "global batch (solid, log₂)", "log", base=2)
    batch_ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    workers_ax.set_ylabel("workers (dashed)")
    workers_ax.set_ylim(0, max(1.0, workers_ax.dataLim.ymax) * 1.15)  # the top line clear of the frame
    workers_ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _legend_events(batch_ax, runs)
    _style(lr_ax, "learning rate", "log")
    _plain_log_labels(lr_ax, ticker)
    probed = any(run.series("eigenvalue", axis, positive=True)[0] for run in runs)
    _style(eig_ax, "λ_max (log)", "log" if probed else "linear")
    _plain_log_labels(eig_ax, ticker)
    if not probed:  # a fixed-batch policy never probes: say so rather than leave an empty panel
        eig_ax.text(0.5, 0.5, "no curvature probe in these runs", ha="center", va="center",
                    transform=eig_ax.transAxes, color="gray")
    _style(acc_ax, "accuracy (test solid, train dashed)", "linear")
    for ax in (eig_ax, acc_ax):
        ax.set_xlabel(X_AXES[axis])
    if axis == "epoch":  # epochs are whole: no tick at 2.5 (the panels share the axis, so one locator sets all)
        acc_ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    figure.suptitle(f"Training curves by {X_AXES[axis]}", fontsize=13)
    figure.legend(loc="outside lower center", ncol=1 if len(runs) > 2 else len(runs), frameon=False)
    return figure


def check_output(path: Path, option: str, needs: str) -> None:
    """Refuse a plot path that cannot be written (``option``: the flag that names it), before the work that draws
    it: one line for a directory, a name matplotlib cannot write, a missing or unwritable folder (none is created),
    or no matplotlib (``needs``: what needs it)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name, e.g. {path / 'plot.png'}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        kind = f"the extension .{suffix} is not an image format" if suffix else "the name has no extension"
        raise UserError(f"{option} {path}: {kind}; end the name with one of .{', .'.join(PLOT_FORMATS[:4])}")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: {missing_folder(path.parent)} or choose another path")
    check_writable(path.parent, what=f"{option} {path}: the folder", fix=f"choose another path with {option}")
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(MATPLOTLIB.format(needs))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a cluster head node; the file is the product
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        raise UserError(MATPLOTLIB.format("absa plot")) from None
    return plt, ticker


def _step(ax, series: tuple[list[float], list[float]], colour: str, style: str, width: float, label: str | None):
    """A value that holds over the epoch it ends: drawn as steps from the previous epoch's end (0 at the start)."""
    xs, ys = series
    if xs:
        ax.plot([0.0, *xs], [ys[0], *ys], drawstyle="steps-pre", color=colour, ls=style, lw=width, label=label)


def _style(ax, ylabel: str, scale: str, **scale_kwargs: Any) -> None:
    ax.set_ylabel(ylabel)
    ax.set_yscale(scale, **scale_kwargs)
    ax.grid(alpha=0.3, which="major")


def _plain_log_labels(ax, ticker) -> None:
    """"0.2" reads faster than "2×10⁻¹"; matplotlib still chooses which ticks get a label."""
    if ax.get_yscale() != "log":
        return

    class Plain(ticker.LogFormatterSciNotation):
        def __call__(self, value, pos=None):
            return f"{value:g}" if super().__call__(value, pos) else ""

    ax.yaxis.set_major_formatter(Plain())
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _legend_events(ax, runs: list[RunCurves]) -> None:
    """A key for the event lines, only for kinds that occur, in gray: each line itself has its run's colour."""
    kinds = sorted({event["kind"] for run in runs for event in run.events})
    if kinds:
        handles = [ax.plot([], [], color="gray", ls=EVENT_STYLES[kind], lw=1)[0] for kind in kinds]
        ax.legend(handles, kinds, loc="upper left", fontsize="small", title="events", title_fontsize="small")
