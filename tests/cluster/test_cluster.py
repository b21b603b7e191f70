"""The cluster path: job submission to a real two-node Ray cluster with token auth, jobs commands, staging.

The cluster tests drive ``synthgen`` in subprocesses, as a user would, against the ``ray_cluster`` fixture
(a head with its job server and a second node on 127.0.0.1). The staging and token tests need no cluster;
where actors go (placement, autoscaler waits) is tested in tests/generate/test_placement.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import processes
import pytest
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.cluster import client as submit
from synthgen.cluster import jobrun, staging
from synthgen.dataset.verify import verify_dataset
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def one_line_error(result) -> str:
    """The single ``error:`` line a failed command printed (and no traceback)."""
    text = result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    return errors[0]


def job_id_of(stdout: str) -> str:
    match = re.search(r"^job (synthgen-\S+)$", stdout, re.M)
    assert match, stdout
    return match.group(1)


def run_args(cluster, checkpoint: str, out: Path, count: int, shard: int, *extra: str) -> list[str]:
    return ["run", "--count", str(count), "--shard-size", str(shard), "--batch-size", "100", "--model", checkpoint,
            "--out", str(out), "--gpus", "0", "--address", cluster.url, *extra]


def job_client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.url, headers={"Authorization": f"Bearer {cluster.token}"})


def generator_nodes(cluster, job_id: str) -> set[str]:
    """Ids of the nodes that ran this job's generation actors."""
    import requests

    driver_job = job_client(cluster).get_job_info(job_id).job_id
    r = requests.get(f"{cluster.url}/api/v0/actors", params={"limit": 10000, "detail": "true"},
                     headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30)
    actors = r.json()["data"]["result"]["result"]
    return {a["node_id"] for a in actors if "_RayShardGenerator" in a["class_name"] and a["job_id"] == driver_job}


def generator_nodes_alive(cluster, job_id: str) -> bool:
    import requests

    driver_job = job_client(cluster).get_job_info(job_id).job_id
    deadline = time.time() + 30
    while time.time() < deadline:
        r = requests.get(f"{cluster.url}/api/v0/actors", params={"limit": 10000, "detail": "true"},
                         headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30)
        actors = r.json()["data"]["result"]["result"]
        if not any(a["job_id"] == driver_job and a["state"] == "ALIVE" for a in actors):
            return False
        time.sleep(1)
    return True


# --- on a real cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> processes.RayCluster:
    """A head with its job server and a second node on 127.0.0.1, token auth on (``processes.ray_cluster``)."""
    with processes.ray_cluster(tmp_path_factory.mktemp("raycluster")) as cluster:
        yield cluster


@pytest.mark.slow
def test_submit_follow_verify_and_jobs_commands(ray_cluster, tiny_checkpoint, tmp_path):
    out = tmp_path / "ds"
    done = cli(*run_args(ray_cluster, tiny_checkpoint, out, 400, 100), env=ray_cluster.env)
    assert done.returncode == 0, done.stderr
    job_id = job_id_of(done.stdout)
    assert "done: 400 images (400 in the dataset)" in done.stdout  # the job's own log, streamed
    assert f"job {job_id} succeeded" in done.stderr
    report = verify_dataset(str(out))
    assert report.ok and report.rows == 400
    # one actor per node, each as wide as its node: a 1-CPU actor on the 2-CPU node would leave no room
    assert len(generator_nodes(ray_cluster, job_id)) == 2
    assert re.search(r"^ran 2 actor\(s\) with (1\+2|2\+1) lanes on cpu$", done.stdout, re.M), done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] and manifest["status"] == "complete"

    listed = cli("jobs", "list", "--address", ray_cluster.url, env=ray_cluster.env)
    assert listed.returncode == 0 and re.search(rf"{job_id}\s+SUCCEEDED\s.*400 images -> {out}", listed.stdout)
    status = cli("jobs", "status", job_id, "--address", ray_cluster.url, env=ray_cluster.env)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.url}
    logs = cli("jobs", "logs", job_id, env=env)
    assert logs.returncode == 0 and "done: 400 images" in logs.stdout

    # A damaged shard, then the same command through RAY_ADDRESS with --detach, followed by jobs logs:
    # the job resumes the dataset and redoes only that shard.
    (out / "data" / "shard-00002.parquet").write_bytes(b"truncated")
    args = [a for a in run_args(ray_cluster, tiny_checkpoint, out, 400, 100) if a not in ("--address", ray_cluster.url)]
    detached = cli(*args, "--detach", env=env)
    assert detached.returncode == 0, detached.stderr
    again = job_id_of(detached.stdout)
    assert f"synthgen jobs logs {again} --follow" in detached.stderr
    followed = cli("jobs", "logs", again, "--follow", env=env)
    assert followed.returncode == 0, followed.stderr
    assert "done: 100 new images (400 in the dataset)" in followed.stdout
    assert f"job {again}: SUCCEEDED" in followed.stderr
    assert verify_dataset(str(out)).ok


@pytest.mark.slow
def test_ctrl_c_leaves_the_job_running_and_jobs_stop_stops_it(ray_cluster, tiny_checkpoint, tmp_path):
    out = tmp_path / "long"
    args = run_args(ray_cluster, tiny_checkpoint, out, 2_000_000, 1000, "--no-progress")  # hours: stopped below
    client = subprocess.Popen([sys.executable, "-m", "synthgen", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=ray_cluster.env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 180
    while not (out / "manifest.json").exists() or not json.loads((out / "manifest.json").read_text())["shards"]:
        assert client.poll() is None and time.time() < deadline, "the job did not start writing shards"
        time.sleep(0.2)
    client.send_signal(signal.SIGINT)  # Ctrl-C, with no terminal to ask on
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 130, stderr
    job_id = job_id_of(stdout)
    assert f"job {job_id} is still running" in stderr and f"synthgen jobs stop {job_id}" in stderr
    assert "Traceback" not in stderr
    assert job_client(ray_cluster).get_job_status(job_id).value == "RUNNING"

    stopped = cli("jobs", "stop", job_id, "--address", ray_cluster.url, env=ray_cluster.env)
    assert stopped.returncode == 0 and f"stopped job {job_id} (STOPPED)" in stopped.stdout, stopped.stderr
    status = cli("jobs", "status", job_id, "--address", ray_cluster.url, env=ray_cluster.env)
    assert status.returncode == 1 and f"{job_id}: STOPPED" in status.stdout
    assert not generator_nodes_alive(ray_cluster, job_id)  # its actors went with it
    report = verify_dataset(str(out))
    assert not report.ok and report.rows > 0  # the manifest kept what was committed; a re-run resumes


@pytest.mark.slow
def test_a_job_that_fails_on_the_cluster_is_one_error_line(ray_cluster, tiny_checkpoint, tmp_path):
    failed = cli(*run_args(ray_cluster, tiny_checkpoint, tmp_path / "gpu", 100, 100), "--gpus", "4",
                 env=ray_cluster.env)
    assert failed.returncode == 1
    line = one_line_error(failed)
    assert re.match(r"error: job synthgen-\S+ failed: --gpus 4: the cluster has 0 GPU\(s\) and 3 CPU\(s\)", line)
    job_id = job_id_of(failed.stdout)
    assert job_client(ray_cluster).get_job_status(job_id).value == "FAILED"  # nothing left running


@pytest.mark.slow
def test_ray_job_submit_by_hand(ray_cluster, tiny_checkpoint, tmp_path):
    """`ray job submit -- python jobs/generate.py --config job.json` with a hand-written job.json."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "generate.py", work / "jobs" / "generate.py")
    out = tmp_path / "byhand"
    (work / "job.json").write_text(json.dumps({"count": 200, "shard_size": 100, "out": str(out),
                                               "model": tiny_checkpoint, "gpus": 0, "workers": 1}))
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**ray_cluster.env, "RAY_AUTH_MODE": "token"}  # Ray's own CLI sends the token only in token mode
    done = subprocess.run([ray_bin, "job", "submit", "--address", ray_cluster.url, "--working-dir", str(work),
                           "--", "python", "jobs/generate.py", "--config", "job.json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 200 images" in done.stdout
    assert verify_dataset(str(out)).ok


@pytest.mark.slow
def test_bad_addresses_job_ids_and_tokens_are_one_error_line(ray_cluster, tiny_checkpoint, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_cluster.env["RAY_AUTH_TOKEN_PATH"])
    jobs_before = len(job_client(ray_cluster).list_jobs())

    def fails(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 1, result.output
        return one_line_error(result)

    run = ["run", "--count", "10", "--model", tiny_checkpoint, "--out", str(tmp_path / "x")]
    assert f"cannot reach the Ray job server at {nobody}" in fails(*run, "--address", nobody)
    assert f"cannot reach the Ray job server at {nobody}" in fails("jobs", "list", "--address", nobody)
    for command in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        line = fails("jobs", command[0], "no-such-job", *command[1:], "--address", ray_cluster.url)
        assert line.startswith(f"error: no job no-such-job on {ray_cluster.url}"), line

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    for args in (run + ["--address", ray_cluster.url], ["jobs", "list", "--address", ray_cluster.url]):
        assert "refused the auth token from RAY_AUTH_TOKEN: set RAY_AUTH_TOKEN" in fails(*args)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    line = fails("jobs", "list", "--address", ray_cluster.url)
    assert f"{ray_cluster.url} requires a Ray auth token and none was found" in line
    assert "`ray get-auth-token` on the head prints it" in line
    assert len(job_client(ray_cluster).list_jobs()) == jobs_before  # nothing was submitted


# --- without a cluster --------------------------------------------------------------------------------


def test_job_server_comes_from_address_or_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert submit.job_server("http://head:8265/") == "http://head:8265"
    assert submit.job_server("127.0.0.1:6379") is None and submit.job_server(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "https://head:8265")
    assert submit.job_server(None) == "https://head:8265"
    assert submit.job_server("head:6379") is None  # an explicit GCS address wins over RAY_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what Ray sets inside a job: join, not submit
    assert submit.job_server(None) is None


def test_token_is_found_as_ray_finds_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert submit.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert submit.find_token() == ("home-token", "~/.ray/auth_token")
    (tmp_path / "tok").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert submit.find_token() == ("path-token", f"RAY_AUTH_TOKEN_PATH={tmp_path / 'tok'}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert submit.find_token() == ("env-token", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(SynthgenError, match="RAY_AUTH_TOKEN_PATH=.*cannot read a token there"):
        submit.find_token()  # as in Ray: a named token file that is not there is an error, not a fallback
    (tmp_path / "tok16").write_text("path-token", encoding="utf-16")  # what PowerShell's `>` writes
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok16"))
    with pytest.raises(SynthgenError, match="RAY_AUTH_TOKEN_PATH=.*not a UTF-8 text file"):
        submit.find_token()
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray" / "auth_token").write_text("home-token", encoding="utf-16")
    assert submit.find_token() is None


def test_ctrl_c_while_staging_is_one_line_and_starts_nothing(tiny_checkpoint, monkeypatch):
    import io

    def interrupted(config, dest):
        raise KeyboardInterrupt  # as if Ctrl-C landed while the checkpoint was being copied

    monkeypatch.setattr(staging, "stage_job", interrupted)
    err = io.StringIO()
    config = RunConfig(count=10, out="/shared/ds", model=tiny_checkpoint, address="http://127.0.0.1:1")
    assert submit.submit_run(config, out=io.StringIO(), err=err) == 130
    assert err.getvalue().strip() == "interrupted before the job was submitted; nothing was started"


def test_staged_working_dir_is_small_and_round_trips(tiny_checkpoint, tmp_path):
    Path(tiny_checkpoint, "training_state.safetensors").write_bytes(b"x" * 1000)  # must stay behind
    Path(tiny_checkpoint, "data_terms.json").write_text('{"license": "MIT"}')  # travels: the card states it
    try:
        config = RunConfig(count=500, out="s3://bucket/ds", model=tiny_checkpoint, shard_size=100, seed=7,
                           gpus=8, address="http://head:8265", format="nifti", spacing="0.5")
        staged = staging.stage_job(config, tmp_path)
    finally:
        Path(tiny_checkpoint, "training_state.safetensors").unlink()
        Path(tiny_checkpoint, "data_terms.json").unlink()
    shipped = tmp_path / "model" / Path(tiny_checkpoint).name
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "data_terms.json", "model.safetensors"]
    assert (tmp_path / "jobs" / "generate.py").read_text() == (REPO / "jobs" / "generate.py").read_text()
    assert (tmp_path / "synthgen" / "generate" / "engine" / "pool.py").is_file()
    assert not list(tmp_path.rglob("__pycache__")) and not list(tmp_path.rglob("*.pyc"))
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) < 20 * 2**20
    assert staged.model == f"model/{shipped.name}" and staged.address is None
    loaded = jobrun.load_job_file(str(tmp_path / "job.json"))
    assert loaded == staged and loaded.gpus == 8 and loaded.seed == 7 and loaded.spacing == "0.5"


def test_a_uri_model_is_not_uploaded_and_oversize_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    config = RunConfig(count=10, out="/shared/ds", model="s3://bucket/models/m")
    assert staging.stage_job(config, tmp_path / "a").model == "s3://bucket/models/m"
    assert not (tmp_path / "a" / "model").exists()
    monkeypatch.setattr(staging, "_working_dir_limit", lambda: 100_000)
    with pytest.raises(SynthgenError, match=r"over Ray's 0 MiB upload limit; put the checkpoint in object storage"):
        staging.stage_job(RunConfig(count=10, out="/shared/ds", model=tiny_checkpoint), tmp_path / "b")


class _StartingJobServer:
    """A job client whose server refuses the first ``refusals`` submissions as Ray's does while the head's
    dashboard agent is still starting (the exact text of ray 2.60's job head)."""

    def __init__(self, refusals: int, text: str = "No available agent to submit job, please try again later."):
        self.refusals, self.text, self.submitted = refusals, text, []

    def submit_job(self, *, submission_id: str, **_) -> str:
        self.submitted.append(submission_id)
        if len(self.submitted) <= self.refusals:
            raise RuntimeError(f"Request failed with status code 500: {self.text}.")
        return submission_id


def test_submit_waits_for_a_job_agent_that_is_starting(monkeypatch):
    monkeypatch.setattr(submit, "AGENT_RETRY_S", 0.01)
    server = submit.JobServer.__new__(submit.JobServer)  # connected to nothing: the client below stands in
    server.address, server.token, server.client = "http://127.0.0.1:8265", None, _StartingJobServer(2)
    err = io.StringIO()
    server.submit("synthgen-a", {}, {}, err)
    assert server.client.submitted == ["synthgen-a"] * 3
    assert err.getvalue().count("http://127.0.0.1:8265 has no job agent up yet") == 1

    server.client = _StartingJobServer(10**6)  # an agent that never comes: the refusal, once the wait is over
    with pytest.raises(SynthgenError, match=r"^http://127.0.0.1:8265: Request failed with status code 500: No "):
        server.submit("synthgen-b", {}, {}, io.StringIO(), agent_wait_s=0.05)
    server.client = _StartingJobServer(1, "Job with submission_id synthgen-c already exists")  # not retried
    with pytest.raises(SynthgenError, match="already exists"):
        server.submit("synthgen-c", {}, {}, io.StringIO())
    assert server.client.submitted == ["synthgen-c"]


def test_job_file_errors_are_one_line(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"count": 10, "colour": "blue"}')
    with pytest.raises(SynthgenError, match="unknown settings colour"):
        jobrun.load_job_file(str(path))
    path.write_text("{not json")
    with pytest.raises(SynthgenError, match="not valid JSON"):
        jobrun.load_job_file(str(path))
    path.write_text('{"out": "s3://b/x"}')
    with pytest.raises(SynthgenError, match='at least "count"'):
        jobrun.load_job_file(str(path))
    path.write_text('{"count": 10, "address": "http://elsewhere:8265"}')
    assert jobrun.load_job_file(str(path)).address is None  # inside the job, the engine joins via RAY_ADDRESS


def test_settings_that_cannot_work_remotely_are_refused_before_anything_is_sent(tiny_checkpoint, monkeypatch,
                                                                               tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = ["run", "--count", "10", "--model", tiny_checkpoint, "--address", "http://127.0.0.1:9"]
    relative = runner.invoke(app, [*base, "--out", "relative/ds"])
    assert relative.exit_code == 1 and "a relative path means nothing on the cluster" in one_line_error(relative)
    not_a_model = runner.invoke(app, [*base[:4], str(tmp_path), *base[5:], "--out", "/shared/ds"])
    assert not_a_model.exit_code == 1 and "no such file" in one_line_error(not_a_model)
    for flags, message in ((["--format", "png", "--encoding", "raw"], "--encoding must be png or raw"),
                           (["--encoding", "jpeg"], "--encoding must be png or raw"),
                           (["--workers", "0"], "--workers must be >= 1"),
                           (["--actors-per-gpu", "0"], "--actors-per-gpu must be >= 1")):
        refused = runner.invoke(app, [*base, "--out", "/shared/ds", *flags])  # nothing listens at :9
        assert refused.exit_code == 1 and message in one_line_error(refused), refused.output
    detach = runner.invoke(app, ["run", "--count", "10", "--detach"])
    assert detach.exit_code == 1 and "--detach needs a job server" in one_line_error(detach)
