"""Object storage: a dataset on a real S3-compatible server (moto, on 127.0.0.1) behaves as on local disk.

Generate with the model read from S3, SIGKILL the run (driver and its local Ray) mid-way, resume, verify,
and compare the bytes with the same job on local disk. Bad buckets and refused credentials: one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import boto3
import processes
import psutil
import pyarrow.parquet as pq
import pytest
from gated_arch import ARCH, gated_checkpoint, gated_factory, wait_until_held
from processes import S3_CREDENTIALS, pythonpath_with_tests
from typer.testing import CliRunner

from synthgen import models, storage
from synthgen.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from synthgen.cli import app
from synthgen.dataset.verify import verify_dataset
from synthgen.generate.config import RunConfig
from synthgen.generate.engine import run

BUCKET = "synthgen-test"
runner = CliRunner()


def endpoint_query(endpoint: str) -> str:
    return f"endpoint_override={endpoint.removeprefix('http://')}&scheme=http"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Endpoint URL of a moto S3 server that accepts any credentials; stopped after the module."""
    with processes.s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_server_refusing(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Endpoint URL of a moto S3 server that checks credentials, and knows none: every request is refused."""
    with processes.s3_server(tmp_path_factory.mktemp("s3auth") / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="0") as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch, s3_server) -> dict:
    """Credentials in this process (for in-process checks) and a full environment for subprocesses."""
    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_server, "RAY_USAGE_STATS_ENABLED": "0"}


def s3_client(s3_server: str):
    return boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


@pytest.fixture(scope="module")
def bucket_with_model(s3_server, tiny_checkpoint) -> str:
    """Create the bucket and upload the tiny checkpoint; returns the model's URI (endpoint in the query)."""
    s3_client(s3_server).create_bucket(Bucket=BUCKET)
    return upload_checkpoint(s3_server, tiny_checkpoint, "models/tiny")


def upload_checkpoint(s3_server: str, model: str, key: str) -> str:
    """Upload a checkpoint directory under ``key``; returns its URI (endpoint in the query)."""
    client = s3_client(s3_server)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(os.path.join(model, name), "rb") as f:
            client.put_object(Bucket=BUCKET, Key=f"{key}/{name}", Body=f.read())
    return f"s3://{BUCKET}/{key}?{endpoint_query(s3_server)}"


def keys(s3_server: str, prefix: str) -> list[str]:
    client = s3_client(s3_server)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def committed_shards(uri: str) -> int:
    loc = storage.locate(uri)
    path = loc.join("manifest.json")
    try:
        return len(json.loads(storage.read_bytes(loc, path))["shards"]) if storage.exists(loc, path) else 0
    except (OSError, ValueError):
        return 0


COUNT, SHARD = 3000, 500


def test_generate_sigkill_resume_verify_on_s3(s3_server, bucket_with_model, aws_env, tiny_checkpoint, tmp_path,
                                              ray_local, monkeypatch):
    out = f"s3://{BUCKET}/datasets/ds"  # the endpoint comes from AWS_ENDPOINT_URL_S3, as for any AWS tool
    query_out = f"{out}?{endpoint_query(s3_server)}"  # the same place, for this process
    # the tiny model, gated (tests/gated_arch.py): an actor holds its 8th forward pass until the run is killed,
    # so the kill lands mid-run, a shard unfinished, however fast the host
    gated, gate = gated_checkpoint(tiny_checkpoint, tmp_path, stop_at=8)
    model = upload_checkpoint(s3_server, str(gated), "models/gated")
    (gate / "armed").touch()
    args = ["run", "--count", str(COUNT), "--shard-size", str(SHARD), "--batch-size", "50", "--seed", "3",
            "--model", model, "--allow-custom-arch", "--out", out, "--gpus", "0", "--workers", "1", "--no-progress"]
    env = {**aws_env, "PYTHONPATH": pythonpath_with_tests(aws_env.get("PYTHONPATH"))}  # for the run's own Ray
    driver = subprocess.Popen([sys.executable, "-m", "synthgen", *args], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_held(gate, lambda: driver.poll() is None, timeout_s=180)
        while committed_shards(query_out) < 1:  # the first shard's commit saves the manifest at once
            assert driver.poll() is None, driver.communicate()[1].decode()[-3000:]
            time.sleep(0.1)
        tree = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
        for proc in psutil.wait_procs(tree, timeout=15)[1]:
            proc.kill()
    finally:
        (gate / "release").touch()

    report = verify_dataset(query_out)
    assert not report.ok and 0 < report.rows < COUNT and "incomplete" in report.problems[0]
    loc = storage.locate(query_out)
    names = [key.rsplit("/", 1)[-1] for key in keys(s3_server, "datasets/ds/data/")]
    whole = [name for name in names if name and not name.startswith(storage.TMP_PREFIX)]  # no marker, no temporary
    assert whole  # whatever has a final name is a whole shard
    for name in whole:
        with loc.fs.open_input_file(loc.join("data", name)) as f:
            assert pq.read_metadata(f).num_rows == SHARD, name

    s3_client(s3_server).put_object(
        Bucket=BUCKET, Key=f"datasets/ds/data/{storage.TMP_PREFIX}0123456789ab-shard-{COUNT // SHARD - 1:05d}.parquet",
        Body=b"half")
    again = subprocess.run([sys.executable, "-m", "synthgen", *args], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    made = int(re.search(rf"done: (\d+) new images \({COUNT} in the dataset\)", again.stdout).group(1))
    assert made == COUNT - report.rows
    verified = subprocess.run([sys.executable, "-m", "synthgen", "verify", out], env=aws_env, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and f"{COUNT} rows in {COUNT // SHARD} shards" in verified.stdout, \
        verified.stderr
    assert not [k for k in keys(s3_server, "datasets/ds/") if f"/{storage.TMP_PREFIX}" in k]  # cleaned up

    # The same job on local disk gives the same bytes, shard by shard.
    local = tmp_path / "local"
    run(RunConfig(count=COUNT, out=str(local), model=str(gated), shard_size=SHARD, batch_size=50, seed=3,
                  gpus=0, workers=1, progress=False, allow_import=True))
    on_s3 = json.loads(storage.read_bytes(loc, loc.join("manifest.json")))
    on_disk = json.loads((local / "manifest.json").read_text())
    assert [s["sha256"] for s in on_s3["shards"]] == [s["sha256"] for s in on_disk["shards"]]
    assert on_s3["model"]["fingerprint"] == on_disk["model"]["fingerprint"]
    assert on_s3["model"]["source"] == model

    monkeypatch.setitem(models._FACTORIES, ARCH, gated_factory)  # registered: show has no --allow-custom-arch
    shown = runner.invoke(app, ["show", query_out, "--index", "2345"])
    assert shown.exit_code == 0 and "identical PNG bytes" in shown.output, shown.output


def test_a_failed_write_leaves_nothing_under_the_final_name(bucket_with_model, aws_env, s3_server):
    loc = storage.locate(f"s3://{BUCKET}/atomic?{endpoint_query(s3_server)}")
    with pytest.raises(RuntimeError):
        with storage.open_atomic(loc, loc.join("data", "shard.parquet")) as out:
            out.write(b"half a shard")
            raise RuntimeError("the actor died")
    assert keys(s3_server, "atomic/") in ([], ["atomic/data/"])  # at most an empty directory marker
    storage.write_bytes_atomic(loc, loc.join("data", "whole.bin"), b"all of it")
    assert storage.read_bytes(loc, loc.join("data", "whole.bin")) == b"all of it"


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_bucket_and_refused_credentials_are_one_line(s3_server, s3_server_refusing, aws_env,
                                                             bucket_with_model, tiny_checkpoint):
    base = ["run", "--count", "10", "--gpus", "0", "--workers", "1", "--no-progress"]
    missing = f"s3://no-such-bucket/ds?{endpoint_query(s3_server)}"
    line = one_line_error(runner.invoke(app, [*base, "--model", tiny_checkpoint, "--out", missing]))
    assert line.startswith(f"error: --out {missing}: cannot write there") and "bucket does not exist" in line

    refusing = endpoint_query(s3_server_refusing)
    line = one_line_error(runner.invoke(app, [*base, "--model", tiny_checkpoint,
                                              "--out", f"s3://{BUCKET}/ds?{refusing}"]))
    assert "cannot use it" in line and "ACCESS_DENIED" in line
    line = one_line_error(runner.invoke(app, ["verify", f"s3://{BUCKET}/ds?{refusing}"]))
    assert "cannot read it" in line and "ACCESS_DENIED" in line
    line = one_line_error(runner.invoke(app, [*base, "--model", f"s3://{BUCKET}/models/tiny?{refusing}",
                                              "--out", f"s3://{BUCKET}/ds2?{endpoint_query(s3_server)}"]))
    assert "config.json: cannot read" in line and "ACCESS_DENIED" in line
    assert not keys(s3_server, "ds")  # nothing was written anywhere


def test_fsspec_filesystems_work_through_pyarrow_and_unknown_schemes_are_one_line():
    pytest.importorskip("fsspec")
    from synthgen.errors import SynthgenError

    loc = storage.locate("memory://synthgen-test/ds")  # not a pyarrow filesystem: fsspec's, wrapped
    with pytest.raises(RuntimeError):
        with storage.open_atomic(loc, loc.join("data", "a.bin")) as out:
            out.write(b"half")
            raise RuntimeError("failed midway")
    assert storage.list_files(loc, loc.root, recursive=True) == []
    with storage.open_atomic(loc, loc.join("data", "b.bin")) as out:
        out.write(b"whole")
    assert storage.read_bytes(loc, loc.join("data", "b.bin")) == b"whole"
    assert [p.rsplit("/", 1)[-1] for p in storage.list_files(loc, loc.join("data"))] == ["b.bin"]
    with pytest.raises(SynthgenError, match="nosuchscheme://x/y: "):
        storage.locate("nosuchscheme://x/y")
