"""absa as a Ray job (`absa train --submit`), and where a Ray user finds a run: on a head started by hand with its
dashboard and a Prometheus export port, inside a loopback-only sandbox (tests/ray_sandbox.py). The submission prints
the job id and how to follow, stop and resume; the job carries the run id; the run's figures appear in the cluster's
Prometheus export tagged with it; actors and their log prefixes name the run, rank and generation. Bad input to
--submit is one line before anything is sent."""

from __future__ import annotations

import os
import subprocess

import pytest
from typer.testing import CliRunner

from absa_cli.cli.app import app
from absa_cli.cluster.metrics import COUNTERS, EPOCH_GAUGES

from conftest import assert_user_error

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["train", "quickstart", "--submit"], "--submit needs the head's dashboard address"),
    (["train", "quickstart", "--submit", "--address", "10.0.0.1:6379"], "is not an http(s) URL"),
    (["train", "quickstart", "--submit", "--local", "--address", "http://127.0.0.1:1"], "drop one"),
    (["train", "quickstart", "--submit", "--address", "http://127.0.0.1:1"], "cannot reach the Ray dashboard"),
    (["train", "quickstart", "epochs=0", "--submit", "--address", "http://127.0.0.1:1"], "epochs must be > 0"),
    (["resume", "../elsewhere", "--submit", "--address", "http://127.0.0.1:1"], "is not a plain name"),
])
def test_bad_submissions_are_one_line_before_anything_is_sent(args, message, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert_user_error(runner.invoke(app, args), message)


def test_this_machines_token_is_not_handed_to_a_dashboard_that_does_not_ask_for_it(tmp_path):
    """The token in ~/.ray/auth_token guards this machine's own local clusters: an http server that is not a Ray
    dashboard (nor asks for a token) must never see it. It saw it in an Authorization header on every request."""
    import http.server
    import sys
    import threading

    seen: list[str | None] = []

    class NotADashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        do_POST = do_HEAD = do_GET

        def log_message(self, *args) -> None:
            pass

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("absa0test0token0secret")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotADashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
        done = subprocess.run([sys.executable, "-m", "absa_cli", "train", "quickstart", "--submit", "--address",
                               f"http://127.0.0.1:{server.server_port}"], capture_output=True, text=True,
                              env={**env, "HOME": str(tmp_path)}, timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 2 and done.stderr.startswith("error: the Ray Jobs API at"), done.stderr
    assert seen and not any(seen), seen  # asked, and never with the token


def test_a_run_id_given_twice_is_refused(tmp_path):
    from absa_cli import config as config_mod
    from absa_cli.errors import UserError
    from absa_cli.run.rundir import RunDir

    config = config_mod.load("quickstart", [])
    RunDir.create(tmp_path, config, run_id="quickstart-1")
    with pytest.raises(UserError, match="run quickstart-1 exists already"):
        RunDir.create(tmp_path, config, run_id="quickstart-1")


def test_a_job_on_a_head_without_absa_on_its_path_says_so_in_its_log(tmp_path):
    """Ray runs the entrypoint with the PATH `ray start` had: a head started from a virtualenv without activating
    it has no `absa` there, and the job's log said only `/bin/sh: 1: absa: not found`."""
    from absa_cli.cluster.jobs import job_entrypoint

    entrypoint = job_entrypoint(["train", "quickstart", "--run-id", "quickstart-1"], str(tmp_path / "runs"))
    done = subprocess.run(["sh", "-c", entrypoint], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 127 and done.stderr.startswith("error: absa is not on the PATH this head runs Ray "
                                                            "jobs with (the PATH `ray start` had); install"), done
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def job(request):
    pytest.importorskip("ray.job_submission", reason="needs ray[default] (absa's cluster extra)")
    return request.getfixturevalue("sandboxes").result("submitted_job")[1]  # after the skip: nothing started


@pytest.mark.slow
@pytest.mark.sandbox("submitted_job")
def test_a_submitted_run_prints_how_to_reach_it_and_finishes_on_the_cluster(job):
    submit = job["submit"]
    assert submit["rc"] == 0 and submit["seconds"] < 20, submit
    out, job_id, run_id = submit["stdout"], job["job_id"], job["run_id"]
    assert job_id == f"absa-{run_id}" and run_id.startswith("quickstart-")
    # the head wants a token: absa sent this machine's, and Ray's CLI must be told to send it too (it did not)
    for hint in (f"RAY_AUTH_MODE=token ray job logs --follow {job_id} --address http://127.0.0.1:",
                 f"RAY_AUTH_MODE=token ray job stop {job_id}",
                 f"absa resume {run_id} --submit --address http://127.0.0.1:", f"absa runs show {run_id} --runs-dir"):
        assert hint in out, out
    assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
    assert job["metadata"]["absa_run_id"] == run_id and job["metadata"]["absa_preset"] == "quickstart"
    assert job["run_json"]["status"] == "finished" and f"run: {run_id}" in job["logs"]
    resume = job["resume"]  # `absa resume RUN --submit`: named after the run, with its preset (was Ray's random id)
    assert resume["job_id"].startswith(f"absa-{run_id}-resume-"), resume
    assert resume["metadata"]["absa_run_id"] == run_id and resume["metadata"]["absa_preset"] == "quickstart"


@pytest.mark.slow
@pytest.mark.sandbox("submitted_job")
def test_a_submission_without_the_heads_token_is_one_line_saying_so(job):
    refused = job["no_token"]
    assert refused["rc"] == 2 and refused["stdout"] == "", refused
    assert refused["stderr"].count("\n") == 1 and "requires token authentication and this machine has no token; " \
        "copy the head's ~/.ray/auth_token" in refused["stderr"], refused["stderr"]


@pytest.mark.slow
@pytest.mark.sandbox("submitted_job")
def test_the_runs_figures_are_in_the_clusters_prometheus_export(job):
    wanted = {f"ray_{name}" for name in (*EPOCH_GAUGES, "absa_samples_per_second")}
    assert wanted <= set(job["families"]), sorted(wanted - set(job["families"]))
    assert not {f"ray_{name}" for name in COUNTERS} & set(job["families"])  # no resize, failure or restart: no count


@pytest.mark.slow
@pytest.mark.sandbox("submitted_job")
def test_actors_and_their_log_prefixes_name_the_run_rank_and_generation(job):
    run_id = job["run_id"]
    workers = [name for name in job["actors"] if name and name.startswith(f"absa-{run_id}-worker")]
    assert len(workers) >= 2, job["actors"]
    assert f":actor_name:absa-{run_id}-worker1 rank=0 gen=1" in job["prefixes"], job["prefixes"]
    assert any(prefix.endswith("rank=1 gen=1") for prefix in job["prefixes"]), job["prefixes"]
