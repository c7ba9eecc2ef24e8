"""Exact resume, in-process (fast): a damaged newest checkpoint falls back to the previous one, the epochs after
it are re-run, and the run ends bit-identical to the uninterrupted one with one epoch record per epoch.

The distributed cases (a SIGKILLed driver, SIGINT mid-epoch, another worker count, the lock) are in
test_resume_cluster.py.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from absa_cli import config as config_mod
from absa_cli.cli.app import app
from absa_cli.driver.controller import Controller
from absa_cli.driver.local_group import LocalGroup
from absa_cli.run.metrics import Console
from absa_cli.run.rundir import RunDir

from conftest import TINY, assert_user_error, untimed



def _config(*extra: str) -> config_mod.RunConfig:
    # policy.duration=1: the batch grows every epoch, so a resume must take it from the policy state
    return config_mod.load("quickstart", [*TINY, "epochs=3", "checkpoint.keep_last=3", "policy.duration=1",
                                          "cluster.max_workers=1", *extra])


def _controller(config, run) -> tuple[Controller, io.StringIO]:
    out = io.StringIO()
    return Controller(config, run, LocalGroup(config), Console(stream=out, force_plain=True)), out


def epoch_records(run: RunDir) -> list[dict]:
    return [untimed(r) for r in run.records("epoch")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """An uninterrupted 3-epoch run: its final model and its epoch records."""
    config = _config()
    run = RunDir.create(tmp_path_factory.mktemp("runs"), config)
    controller, _ = _controller(config, run)
    controller.run_all()
    run.finish("finished")
    return run, controller.group.state_dict()["model"], epoch_records(run)


def _copy_run(source: RunDir, root) -> RunDir:
    import shutil

    target = root / f"{source.id}-copy"
    shutil.copytree(source.path, target)
    return RunDir(target)


@pytest.mark.parametrize("how", ["corrupted", "truncated", "missing"])
def test_resume_falls_back_past_a_damaged_checkpoint_and_ends_bit_identical(finished, tmp_path, how, one_thread):
    source, final_model, records = finished
    run = _copy_run(source, tmp_path)
    newest = run.checkpoints_dir / "epoch-0003.pt"
    if how == "corrupted":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif how == "truncated":
        newest.write_bytes(newest.read_bytes()[:1000])
    else:
        newest.unlink()
    controller, out = _controller(_config(), run)
    assert controller.resume() == "epoch-0002.pt"
    controller.run_all()
    lines = [line for line in out.getvalue().splitlines() if "epoch-0003.pt is" in line]
    assert len(lines) == 1 and how in lines[0] and "falling back" in lines[0]
    for name, value in controller.group.state_dict()["model"].items():
        assert torch.equal(value, final_model[name]), name  # same process, same order of every reduction
    assert epoch_records(run) == records  # one record per epoch: epoch 3's first record was superseded
    superseded = [json.loads(line) for line in run.superseded_path.read_text().splitlines()]
    assert [r["epoch"] for r in superseded if r["kind"] == "epoch"] == [3]
    resume = run.records("resume")
    assert len(resume) == 1 and resume[0]["checkpoint"] == "epoch-0002.pt" and resume[0]["epoch"] == 3


def test_a_resume_may_change_what_is_outside_the_recipe_and_keeps_it(finished, tmp_path, one_thread):
    """`absa resume RUN KEY=VALUE`: a key outside the recipe (here whether a collapse stops the run, and how many
    checkpoints to keep) is kept in config.yaml, and the run still continues exactly; a key of the recipe, or the
    length, is one line and changes nothing."""
    source, _, records = finished
    run = _copy_run(source, tmp_path)
    newest = run.checkpoints_dir / "epoch-0003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # resume from epoch 2: epoch 3 trains again
    run.write_info(status="interrupted")
    where = ["--local", "--runs-dir", str(run.path.parent)]
    for refused, says in (("optim.lr=0.2", f"optim.lr is part of run {run.id}'s recipe (its checkpoints carry it)"),
                          ("epochs=5", "epochs cannot change on resume"),
                          ("data.test_size=64", "data.test_size cannot change on resume"),  # was taken (review)
                          # a misspelt key is named as one, not called a recipe change to start a new run with
                          ("optim.lrr=0.2", "unknown config key 'optim.lrr' (from the command line) (did you mean 'optim.lr'?)")):
        before = (run.config_path.read_bytes(), run.info_path.read_bytes())
        assert_user_error(runner.invoke(app, ["resume", run.id, refused, *where]), says)
        assert (run.config_path.read_bytes(), run.info_path.read_bytes()) == before
    result = runner.invoke(app, ["resume", run.id, "policy.stop_on_collapse=false", "checkpoint.keep_last=5",
                                 *where])
    assert result.exit_code == 0, result.output
    kept = config_mod.from_yaml(run.config_path.read_text())
    assert kept.policy.stop_on_collapse is False and kept.checkpoint.keep_last == 5
    assert epoch_records(run) == records


@pytest.mark.parametrize("edit, says", [
    (("lr_ramp_epochs: 0.0", "lr_ramp_steps: 5"), "saved by an earlier version of absa with policy.lr_ramp_steps"),
    (("  stop_on_collapse: true", "  stop_on_collapse: true\n  newer_key: 3"), "unknown config key 'policy.newer_key'"),
])
def test_a_run_written_by_another_version_is_not_called_damaged(finished, tmp_path, edit, says):
    """Its config.yaml is as that version wrote it: "damaged ... restore the file from a copy" sent users looking
    for a copy of a good file (review)."""
    run = _copy_run(finished[0], tmp_path)
    run.write_info(status="interrupted")
    run.config_path.write_text(run.config_path.read_text().replace(*edit))
    result = runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)])
    assert_user_error(result, f"run {run.id} cannot continue with this version of absa: {run.config_path} was "
                              f"written by another version of absa (", says, "use the absa version that made it")
    assert "damaged" not in result.stderr
    listed = runner.invoke(app, ["runs", "list", "--runs-dir", str(run.path.parent)]).stdout
    assert "other absa version" in listed and "damaged" not in listed


def test_a_typo_of_a_hand_edit_in_config_yaml_is_damage(finished, tmp_path):
    run = _copy_run(finished[0], tmp_path)
    run.write_info(status="interrupted")
    run.config_path.write_text(run.config_path.read_text().replace("  lr: ", "  lrr: ", 1))
    assert_user_error(runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)]),
                      f"run {run.id} is damaged: {run.config_path} is not a valid config (unknown config key "
                      f"'optim.lrr'", "did you mean 'optim.lr'?", "restore the file from a copy")


def test_resume_with_no_checkpoint_yet_starts_over(finished, tmp_path, one_thread):
    source, final_model, records = finished
    run = _copy_run(source, tmp_path)
    for path in run.checkpoints_dir.iterdir():
        path.unlink()
    controller, out = _controller(_config(), run)
    assert controller.resume() is None
    assert "no checkpoint was written yet; starting over from epoch 1" in out.getvalue()
    controller.run_all()
    for name, value in controller.group.state_dict()["model"].items():
        assert torch.equal(value, final_model[name]), name
    assert epoch_records(run) == records


def test_the_reference_probe_fresh_samples_and_cold_starts_resumes_exactly(finished, tmp_path, one_thread):
    """probe.data=fresh and probe.warm_start=false draw new samples and a new start vector at every probe, from
    (probe.seed, epoch): a run resumed from epoch 1's checkpoint probes epochs 2 and 3 exactly as the uninterrupted
    run did (the records hold λ_max), and differently from the fixed, warm-started default."""
    # 4 epochs at one batch (abs, no fallback within them): epochs 1-3 are probed (the last one never is)
    config = _config("probe.data=fresh", "probe.warm_start=false", "epochs=4", "policy.name=abs",
                     "policy.duration=10", "policy.eig_ratio=1000", "checkpoint.keep_last=4")
    straight = RunDir.create(tmp_path / "straight", config)
    controller, _ = _controller(config, straight)
    controller.run_all()
    records = epoch_records(straight)
    run = _copy_run(straight, tmp_path)
    for name in ("epoch-0002.pt", "epoch-0003.pt", "epoch-0004.pt"):
        (run.checkpoints_dir / name).unlink()
    resumed, _ = _controller(config, run)
    assert resumed.resume() == "epoch-0001.pt"
    resumed.run_all()
    assert epoch_records(run) == records
    assert [r["eigenvalue"] is not None for r in records] == [True, True, True, False]  # two probed after the resume
    assert [r["eigenvalue"] for r in records[:2]] != [r["eigenvalue"] for r in finished[2][:2]]


runner = CliRunner()


def test_runs_list_and_show(finished):
    run = finished[0]
    listing = runner.invoke(app, ["runs", "list", "--runs-dir", str(run.path.parent)])
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if line.startswith(run.id))
    last = finished[2][-1]
    assert row.split()[1:] == ["quickstart", "finished", "3/3", str(last["global_batch_size"]), "1",
                               f"{max(r['test_acc'] for r in finished[2]):.4f}"]
    shown = runner.invoke(app, ["runs", "show", run.id, "--runs-dir", str(run.path.parent)])
    assert shown.exit_code == 0, shown.output
    for expected in (f"run {run.id}", "status finished", "policy absa", "geometry", "last epoch 3",
                     "epoch-0003.pt", "ok (sha256)"):
        assert expected in shown.output, expected
    assert shown.output.count("geometry") >= 3  # 64 → 128 → 256: one geometry row per change


def test_resume_refuses_a_finished_run_and_ids_that_are_not_plain_names(finished):
    run = finished[0]
    result = runner.invoke(app, ["resume", run.id, "--runs-dir", str(run.path.parent)])
    assert result.exit_code == 2 and "already finished" in result.output and "Traceback" not in result.output
    for bad in ("../x", "/etc", "..", "a/b", ".x", "r" * 129):
        result = runner.invoke(app, ["resume", bad, "--runs-dir", str(run.path.parent)])
        assert result.exit_code == 2 and "not a plain name (1 to 128 letters" in result.output, bad
    assert "…(129 characters)" in result.output  # a long one is cut in the line, with its length
    result = runner.invoke(app, ["resume", "no-such-run", "--runs-dir", str(run.path.parent)])
    assert result.exit_code == 2 and f"no run 'no-such-run' in {run.path.parent}; list runs" in result.output
    typo = run.path.parent.parent / "typo"  # a --runs-dir that is not there is named as such, not searched
    result = runner.invoke(app, ["resume", run.id, "--runs-dir", str(typo)])
    assert_user_error(result, f"no run {run.id!r}: the runs directory {typo} does not exist; pass the folder runs are "
                              f"in with --runs-dir (or set ABSA_RUNS_DIR)")
    assert not typo.exists()


def test_resuming_a_run_whose_last_checkpoint_is_the_final_epoch_just_finishes(finished, tmp_path):
    """The driver died after the last checkpoint but before marking the run finished."""
    source = finished[0]
    run = _copy_run(source, tmp_path)
    run.write_info(status="running")
    result = runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)])
    assert result.exit_code == 0, result.output
    assert "summary: 3 epochs" in result.output and run.info()["status"] == "finished"
    assert re.search(r" \d+\.\d s since the resume; run directory ", result.output)  # the time is this command's
    assert epoch_records(run) == finished[2]


def test_checkpoints_without_their_manifest_are_refused_not_restarted(finished, tmp_path):
    run = _copy_run(finished[0], tmp_path)
    (run.checkpoints_dir / "manifest.json").unlink()
    run.write_info(status="interrupted")
    result = runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)])
    assert result.exit_code == 2 and "no manifest.json to verify them against" in result.output
    assert epoch_records(run) == finished[2] and not run.superseded_path.exists()  # nothing was moved or lost
    shown = runner.invoke(app, ["runs", "show", run.id, "--runs-dir", str(run.path.parent)])
    assert shown.exit_code == 0 and "no manifest.json to verify" in " ".join(shown.output.split())  # cells wrap


def test_a_sample_log_a_resume_cannot_write_names_the_run_config_to_change(finished, tmp_path):
    run = _copy_run(finished[0], tmp_path)
    run.write_info(status="interrupted")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run.config_path.write_text(run.config_path.read_text().replace("sample_log_dir: ''",
                                                                   f"sample_log_dir: {blocker / 'audit'}"))
    result = runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)])
    assert_user_error(result, f"logging.sample_log_dir {blocker / 'audit'} is under {blocker}",
                      f"give another with `absa resume {run.id} logging.sample_log_dir=DIR`")
    assert run.info()["status"] == "interrupted" and not run.lock_path.exists()


def test_a_damaged_run_json_is_listed_not_a_traceback(finished, tmp_path):
    run = _copy_run(finished[0], tmp_path)
    run.info_path.write_text("{not json")
    listing = runner.invoke(app, ["runs", "list", "--runs-dir", str(run.path.parent)])
    assert listing.exit_code == 0 and "damaged" in listing.output


@pytest.mark.parametrize("field, value, says", [
    ("started_at", 5, "started_at is 5, not str"),
    ("best_test_acc", "high", "best_test_acc is 'high', not int or float"),
    ("last_epoch", True, "last_epoch is True, not int"),
    ("status", "paused", "status 'paused' is not one of running, finished"),
])
def test_a_run_json_with_a_field_of_another_type_is_that_run_damaged_not_a_traceback_for_all(
        finished, tmp_path, field, value, says):
    good = _copy_run(finished[0], tmp_path)
    bad = RunDir(tmp_path / "hand-edited")
    import shutil

    shutil.copytree(good.path, bad.path)
    bad.info_path.write_text(json.dumps({**json.loads(bad.info_path.read_text()), field: value}))
    listing = runner.invoke(app, ["runs", "list", "--runs-dir", str(tmp_path)])
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    (good_row,) = [line for line in listing.output.splitlines() if line.startswith(good.id)]
    (bad_row,) = [line for line in listing.output.splitlines() if line.startswith(bad.id)]
    assert "finished" in good_row and "damaged" in bad_row
    shown = runner.invoke(app, ["runs", "show", bad.id, "--runs-dir", str(tmp_path)])
    assert shown.exit_code == 0 and says in shown.output.replace("\n", " "), shown.output


def test_a_started_at_of_null_sorts_first_beside_runs_that_have_one(finished, tmp_path):
    import shutil

    dated = _copy_run(finished[0], tmp_path)
    shutil.copytree(dated.path, tmp_path / "undated")
    undated = RunDir(tmp_path / "undated")
    undated.info_path.write_text(json.dumps({**undated.info(), "started_at": None}))
    listing = runner.invoke(app, ["runs", "list", "--runs-dir", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    rows = [line.split()[0] for line in listing.output.splitlines()[1:] if line.strip()]
    assert rows == ["undated", dated.id]


def test_a_metrics_file_cut_inside_a_line_is_mended_before_the_next_record(tmp_path):
    """Writes lost to a crash can leave metrics.jsonl shorter than a checkpoint counted, ending inside a record:
    resuming moves that partial line aside, so the next record is a line of its own and every line reads back."""
    from absa_cli.run.metrics import JsonlSink

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    sink = JsonlSink(run.metrics_path)
    for epoch in (1, 2, 3):
        sink.write({"kind": "epoch", "epoch": epoch})
    counted = run.metrics_size()
    run.metrics_path.write_bytes(run.metrics_path.read_bytes()[:-10])  # the third record cut
    assert run.rewind_metrics(counted) == 1
    third = json.dumps({"kind": "epoch", "epoch": 3}) + "\n"
    assert run.superseded_path.read_text() == third[:-10] + "\n"
    sink.write({"kind": "resume"})
    assert [json.loads(line) for line in run.metrics_path.read_text().splitlines()] == [
        {"kind": "epoch", "epoch": 1}, {"kind": "epoch", "epoch": 2}, {"kind": "resume"}]
    assert run.rewind_metrics(run.metrics_size()) == 0  # a whole file: nothing moves
    # a size counted before the mend, no longer a line's end once the file grew again: cut at that line's start
    sink.write({"kind": "epoch", "epoch": 3})
    assert run.metrics_size() > counted
    assert run.rewind_metrics(counted) == 1
    assert run.metrics_path.read_bytes().endswith(b"\n")
    assert [json.loads(line)["kind"] for line in run.metrics_path.read_text().splitlines()] == ["epoch", "epoch",
                                                                                                "resume"]


def test_bytes_that_are_not_utf8_in_the_metrics_are_skipped_by_show_and_named_by_plot(finished, tmp_path):
    run = _copy_run(finished[0], tmp_path)
    with run.metrics_path.open("ab") as handle:
        handle.write(b"\xff\xfe x\n")
    shown = runner.invoke(app, ["runs", "show", run.id, "--runs-dir", str(tmp_path)])
    assert shown.exit_code == 0 and "last epoch 3" in shown.output, shown.output
    plotted = runner.invoke(app, ["plot", run.id, "--runs-dir", str(tmp_path)])
    assert plotted.exit_code == 0, plotted.output  # the last line, as a live run's half-written one, is skipped
    with run.metrics_path.open("ab") as handle:
        handle.write(b'{"kind": "resume"}\n')
    plotted = runner.invoke(app, ["plot", run.id, "--runs-dir", str(tmp_path)])
    assert plotted.exit_code == 2 and "metrics.jsonl:" in plotted.output and "is not a JSON record" in plotted.output


def _foreign(run: RunDir, name: str, **owner: str) -> None:
    """Rewrite checkpoint ``name`` (and its manifest entry) as if another run had written it: its weights, with
    ``owner`` in place of this run's name in it, as a checkpoints/ folder copied between runs would bring."""
    from absa_cli.run.checkpoint import CheckpointStore, load

    state = load(run.checkpoints_dir / name)
    state["run"] = {**state["run"], **owner}
    CheckpointStore(run.checkpoints_dir, keep_last=3).save(name, state)


def test_another_runs_checkpoint_is_refused_in_one_line_and_resume_falls_back(finished, tmp_path, one_thread):
    source, final_model, records = finished
    run = _copy_run(source, tmp_path)  # a renamed copy: same run (its uid in run.json), so its checkpoints are its own
    _foreign(run, "epoch-0003.pt", uid="0123456789abcdef", id="quickstart-other-seed")
    controller, out = _controller(_config(), run)
    assert controller.resume() == "epoch-0002.pt"
    controller.run_all()
    (line,) = [line for line in out.getvalue().splitlines() if "epoch-0003.pt belongs to" in line]
    assert "run 'quickstart-other-seed', not" in line and "falling back to the previous one" in line
    for name, value in controller.group.state_dict()["model"].items():
        assert torch.equal(value, final_model[name]), name
    assert epoch_records(run) == records


def test_checkpoints_that_are_all_foreign_or_of_another_config_stop_resume_in_one_line(finished, tmp_path):
    for damage in ("foreign", "config"):
        run = _copy_run(finished[0], tmp_path / damage)
        run.write_info(status="interrupted")
        info = run.info_path.read_bytes()
        if damage == "foreign":
            for name in ("epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"):
                _foreign(run, name, uid="0123456789abcdef", id="another-run")
        else:  # a config.yaml edited to another model width: the weights would not even fit
            run.config_path.write_text(run.config_path.read_text().replace("width: 0.5", "width: 2.0"))
        saved = run.config_path.read_bytes()
        result = runner.invoke(app, ["resume", run.id, "logging.tensorboard=false", "--local", "--runs-dir",
                                     str(run.path.parent)])
        assert result.exit_code == 2, result.output
        assert run.config_path.read_bytes() == saved  # the override, kept for a resume that runs, is put back
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no usable checkpoint" in errors[0] and "Traceback" not in result.output
        assert ("belongs to run 'another-run'" if damage == "foreign" else "model.width=0.5 (this run: 2.0)") \
            in errors[0]
        assert "size mismatch" not in result.output
        assert epoch_records(run) == finished[2] and not run.superseded_path.exists()  # nothing moved or lost
        assert run.info_path.read_bytes() == info  # left as it was: not marked failed, no resume counted
        again = runner.invoke(app, ["resume", run.id, "--local", "--runs-dir", str(run.path.parent)])
        assert again.exit_code == 2 and "no usable checkpoint" in again.stderr and "Traceback" not in again.output
        assert run.info_path.read_bytes() == info


def test_a_resume_on_the_geometry_it_stopped_with_still_says_it(tmp_path, one_thread):
    """A fresh run prints its geometry line; a resume on the same geometry printed none (the restored history has
    the record, so nothing changed), leaving the reader without the worker layout or its reason."""
    config = _config("policy.name=fixed", "epochs=1")
    run = RunDir.create(tmp_path, config)
    controller, out = _controller(config, run)
    controller.run_all()
    geometry = [line for line in out.getvalue().splitlines() if line.split(" ", 1)[1].startswith("geometry: ")]
    assert len(geometry) == 1 and "as at the checkpoint" not in geometry[0], out.getvalue()
    controller, out = _controller(_config("policy.name=fixed", "epochs=2"), run)
    assert controller.resume() == "epoch-0001.pt"
    controller.run_all()
    again = [line for line in out.getvalue().splitlines() if line.split(" ", 1)[1].startswith("geometry: ")]
    assert [line.split(" ", 1)[1] for line in again] == [
        geometry[0].split(" ", 1)[1].removesuffix(")") + "; as at the checkpoint)"], out.getvalue()
    assert len(run.records("geometry")) == 1  # the line only: the history already holds the record
