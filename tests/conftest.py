"""Shared fixtures: the real data files and a tiny (untrained) checkpoint made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthgen.checkpoint import CheckpointConfig, save_checkpoint
from synthgen.models import DCGANConfig, DCGANGenerator, config_to_dict

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def breast_npz() -> str:
    """Path to the real BreastMNIST file (546 train images, 28x28 grayscale, 0=malignant 1=normal)."""
    path = DATA_DIR / "breastmnist.npz"
    assert path.is_file(), f"missing test data {path}"
    return str(path)


@pytest.fixture(scope="session")
def breast(breast_npz):
    """BreastMNIST's training split as an ImageSet (images, labels, class names); do not modify it."""
    from synthgen.readers import load_images

    return load_images(breast_npz)


@pytest.fixture(scope="session")
def retina_npz() -> str:
    """Path to the real RetinaMNIST file (1080 train images, 28x28 RGB, 5 grades)."""
    path = DATA_DIR / "retinamnist.npz"
    assert path.is_file(), f"missing test data {path}"
    return str(path)


def make_tiny_checkpoint(out_dir: Path, seed: int = 0) -> str:
    """Save a randomly initialised conditional DCGAN (width 32, malignant/normal, 28x28); return its fingerprint."""
    torch.manual_seed(seed)
    model_config = DCGANConfig(latent_dim=16, image_size=28, channels=1, num_classes=2, width=32, embed_dim=8)
    generator = DCGANGenerator(model_config).eval()
    config = CheckpointConfig(
        arch="dcgan", model_config=config_to_dict(model_config), image_shape=[1, 28, 28],
        latent_dim=model_config.latent_dim, class_names=["malignant", "normal"],
        training={"note": "random init, made by tests/conftest.py"},
    )
    return save_checkpoint(str(out_dir), generator, config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a small conditional DCGAN checkpoint (random weights); do not modify it."""
    out = tmp_path_factory.mktemp("tiny-checkpoint")
    make_tiny_checkpoint(out)
    return str(out)


@pytest.fixture(scope="session")
def overflowing_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny checkpoint with class 1's label embedding scaled by 1e6: its activations stay finite in fp32 and
    bf16 but pass fp16's 65504, so its class-1 images come out inf/NaN in fp16 only; do not modify it."""
    from synthgen.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("overflowing-checkpoint")
    make_tiny_checkpoint(out)
    ckpt = load_checkpoint(str(out))
    with torch.no_grad():
        ckpt.model.label_embed.weight[1] *= 1e6
    save_checkpoint(str(out), ckpt.model, ckpt.config)
    return str(out)


# --- Ray: one in-process instance per test session, and a real `ray start --head` cluster for the
# cluster path (with declared GPUs, so GPU scheduling is exercised on a CPU machine).

@pytest.fixture(scope="session")
def ray_local():
    """This process's Ray (2 CPUs), shared by every engine test; the engine reuses it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A real head node on 127.0.0.1 with 2 CPUs and 2 declared GPUs; yields its GCS address.

    A `ray start --head --block` in its own process group on free ports (GCS, dashboard agent, metrics), with
    Ray's default authentication; stopping it stops exactly the processes it started.
    """
    import os
    import shutil
    import socket
    import tempfile
    import time

    gcs, agent, metrics, client = _free_ports(4)
    root = tmp_path_factory.mktemp("rayhead")
    ray_temp = tempfile.mkdtemp(prefix="sghead-")  # short: Ray's unix socket paths must fit in 107 bytes
    head = RayNode(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2", "--num-gpus=2",
                    "--include-dashboard=false", f"--dashboard-agent-listen-port={agent}",
                    f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
                    f"--temp-dir={ray_temp}"], dict(os.environ), root / "head.log")
    try:
        deadline = time.time() + 90
        while True:
            head.check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", gcs)) == 0:
                    break
            assert time.time() < deadline, "the head did not come up"
            time.sleep(0.5)
        time.sleep(3)  # the GCS port opens before the raylet has registered the node
        yield f"127.0.0.1:{gcs}"
    finally:
        head.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


# --- A real two-node Ray cluster with a job server (dashboard), token authentication on, for the cluster
# path (tests/test_cluster.py). Every node is a `ray start --block` in its own process group; teardown stops
# exactly those processes and whatever they spawned (job drivers run in sessions of their own).

def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class RayNode:
    """One `ray start --block` process (a head or a joining node) and the process tree it grows."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        import os
        import subprocess
        import sys

        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM `ray start` (it stops its processes in order: a few seconds, where SIGTERM to the whole
        group leaves the GCS and raylet shutting down for ~30 s), then kill whatever of its tree outlived it."""
        import contextlib
        import os
        import signal
        import subprocess

        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.log.close()


class RayCluster:
    """What tests need to reach the cluster: its job server URL and a client environment holding its token."""

    def __init__(self, url: str, gcs: str, env: dict, token: str, nodes: list[RayNode]):
        self.url, self.gcs, self.env, self.token, self.nodes = url, gcs, env, token, nodes

    def nodes_alive(self) -> int:
        import requests

        r = requests.get(f"{self.url}/api/v0/nodes", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=10)
        if r.status_code != 200:
            return 0
        return sum(1 for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head (1 CPU, job server on its own port) and a second node (2 CPUs) on 127.0.0.1, token auth on.

    The head starts with Ray's defaults for authentication: it finds a token (RAY_AUTH_TOKEN_PATH, a file
    made here) and turns token authentication on; the joining node gets RAY_AUTH_MODE=token as Ray requires.
    ``env`` is a client environment that finds the token the same way, via RAY_AUTH_TOKEN_PATH.
    """
    import os
    import secrets
    import shutil
    import sys
    import tempfile

    root = tmp_path_factory.mktemp("raycluster")
    token = secrets.token_hex(32)
    (root / "auth_token").write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update(RAY_AUTH_TOKEN_PATH=str(root / "auth_token"), RAY_USAGE_STATS_ENABLED="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    # Free ports are picked before Ray binds them, so another process (the session's local Ray, its workers)
    # can take one in between; a cluster whose job agent never comes up is started again on new ports.
    for attempt in (1, 2):
        ray_temp = tempfile.mkdtemp(prefix="sgray-")  # short: Ray's unix socket paths must fit in 107 bytes
        nodes: list[RayNode] = []
        try:
            cluster = _start_ray_cluster(root / f"try{attempt}", ray_temp, env, token, nodes, last=attempt == 2)
            if cluster is not None:
                yield cluster
                return
        finally:
            for node in reversed(nodes):
                node.stop()
            # the agent's logs outlive the cluster, for a job server that refused to take jobs
            for log in Path(ray_temp).glob("session_*/logs/dashboard_agent*"):
                shutil.copy(log, root / f"try{attempt}-{log.name}")
            shutil.rmtree(ray_temp, ignore_errors=True)


def _start_ray_cluster(root: Path, ray_temp: str, env: dict, token: str, nodes: list, last: bool):
    """Start the head and the second node (appended to ``nodes`` as they start) and wait until the head's
    job server and job agent answer and both nodes are alive; None when the agent does not come up in time
    and this is not the ``last`` try."""
    import time

    import requests

    root.mkdir()
    gcs, dash, agent, metrics, client, agent2, metrics2 = _free_ports(7)
    common = ["--node-ip-address=127.0.0.1", "--num-gpus=0", "--object-store-memory=100000000",
              "--min-worker-port=0", "--max-worker-port=0"]
    head = RayNode(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                    f"--ray-client-server-port={client}", f"--temp-dir={ray_temp}", "--num-cpus=1", *common],
                   env, root / "head.log")
    nodes.append(head)
    cluster = RayCluster(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", env, token, nodes)
    deadline = time.time() + 120
    # the job server takes jobs only once the head's dashboard agent (which runs them) answers too
    for url, what in ((f"{cluster.url}/api/version", "job server"), (f"http://127.0.0.1:{agent}/api/healthz",
                                                                     "job agent")):
        while True:
            head.check_alive()
            try:
                if requests.get(url, timeout=5).status_code in (200, 401):
                    break
            except requests.ConnectionError:
                pass
            if time.time() >= deadline:
                assert not last, f"the head's {what} did not come up in 120 s"
                return None
            time.sleep(0.5)
    worker = RayNode([f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={agent2}",
                      f"--metrics-export-port={metrics2}", "--num-cpus=2", *common],
                     {**env, "RAY_AUTH_MODE": "token"}, root / "worker.log")
    nodes.append(worker)
    while cluster.nodes_alive() < 2:
        worker.check_alive()
        assert time.time() < deadline, "the second node did not join"
        time.sleep(0.5)
    return cluster


# --- A real S3-compatible server on 127.0.0.1 (moto's standalone server), for object storage tests.

def start_s3_server(log_path: Path, **env: str):
    """Start ``python -m moto.server`` on a free port in its own process group; returns (process, endpoint)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    port = _free_ports(1)[0]
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        assert time.time() < deadline, "moto server did not start"
        time.sleep(0.2)


def stop_s3_server(proc) -> None:
    import os
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "synthgen-test", "AWS_SECRET_ACCESS_KEY": "synthgen-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """Endpoint URL of a moto S3 server that accepts any credentials; stopped after the module."""
    proc, endpoint = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield endpoint
    finally:
        stop_s3_server(proc)


@pytest.fixture(scope="module")
def s3_server_refusing(tmp_path_factory: pytest.TempPathFactory):
    """Endpoint URL of a moto S3 server that checks credentials, and knows none: every request is refused."""
    proc, endpoint = start_s3_server(tmp_path_factory.mktemp("s3auth") / "moto.log",
                                     INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        yield endpoint
    finally:
        stop_s3_server(proc)
