"""The processes tests start beside themselves: real Ray nodes (`ray start --block`) and a real S3-compatible
server (moto's), each in its own process group on 127.0.0.1 and free ports, stopped with exactly what it grew.

Fixtures in conftest.py and in the test modules wrap these context managers; nothing here is a fixture.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import requests

TESTS_DIR = Path(__file__).resolve().parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "synthgen-test", "AWS_SECRET_ACCESS_KEY": "synthgen-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def pythonpath_with_tests(current: str | None) -> str:
    """A PYTHONPATH with this directory first: Ray workers started with it import test modules (``gated_arch``)
    as the test process does."""
    return os.pathsep.join(filter(None, [str(TESTS_DIR), current]))


def env_with_tests() -> dict[str, str]:
    """This process's environment, with :func:`pythonpath_with_tests`: for a process that starts Ray workers."""
    return {**os.environ, "PYTHONPATH": pythonpath_with_tests(os.environ.get("PYTHONPATH"))}


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on right now (another process may still take one before use)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ray_temp_dir(prefix: str) -> str:
    """A new directory for Ray's sessions, short because Ray's unix socket paths must fit in 107 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class RayNode:
    """One `ray start --block` process (a head or a joining node) and the process tree it grows."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
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
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.log.close()


@contextlib.contextmanager
def ray_head(root: Path, env: dict | None = None) -> Iterator[str]:
    """A head node on 127.0.0.1 with 2 CPUs and 2 declared GPUs (so GPU scheduling runs on a CPU machine),
    Ray's default authentication, no dashboard; yields its GCS address ``127.0.0.1:PORT``."""
    gcs, agent, metrics, client = free_ports(4)
    ray_temp = ray_temp_dir("sghead-")
    head = RayNode(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2", "--num-gpus=2",
                    "--include-dashboard=false", f"--dashboard-agent-listen-port={agent}",
                    f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
                    f"--temp-dir={ray_temp}"], dict(os.environ if env is None else env), root / "head.log")
    try:
        deadline = time.time() + 90
        while not _port_open(gcs):
            head.check_alive()
            assert time.time() < deadline, "the head did not come up"
            time.sleep(0.5)
        time.sleep(3)  # the GCS port opens before the raylet has registered the node
        yield f"127.0.0.1:{gcs}"
    finally:
        head.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


class RayCluster:
    """What tests need to reach the cluster: its job server URL and a client environment holding its token."""

    def __init__(self, url: str, gcs: str, env: dict, token: str, nodes: list[RayNode]):
        self.url, self.gcs, self.env, self.token, self.nodes = url, gcs, env, token, nodes

    def nodes_alive(self) -> int:
        r = requests.get(f"{self.url}/api/v0/nodes", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=10)
        if r.status_code != 200:
            return 0
        return sum(1 for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE")


@contextlib.contextmanager
def ray_cluster(root: Path) -> Iterator[RayCluster]:
    """A head (1 CPU, job server on its own port) and a second node (2 CPUs) on 127.0.0.1, token auth on.

    The head starts with Ray's defaults for authentication: it finds a token (RAY_AUTH_TOKEN_PATH, a file
    made here) and turns token authentication on; the joining node gets RAY_AUTH_MODE=token as Ray requires.
    The cluster's ``env`` is a client environment that finds the token the same way, via RAY_AUTH_TOKEN_PATH.
    """
    token = secrets.token_hex(32)
    (root / "auth_token").write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update(RAY_AUTH_TOKEN_PATH=str(root / "auth_token"), RAY_USAGE_STATS_ENABLED="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    # Free ports are picked before Ray binds them, so another process (the session's local Ray, its workers)
    # can take one in between; a cluster whose job agent never comes up is started again on new ports.
    for attempt in (1, 2):
        ray_temp = ray_temp_dir("sgray-")
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
    root.mkdir()
    gcs, dash, agent, metrics, client, agent2, metrics2 = free_ports(7)
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


@contextlib.contextmanager
def s3_server(log_path: Path, **env: str) -> Iterator[str]:
    """``python -m moto.server`` on a free port in its own process group; yields its endpoint URL.

    By default it accepts any credentials; ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` makes it check them (and, knowing
    none, refuse every request).
    """
    port = free_ports(1)[0]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 60
        while not _port_open(port):
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
            assert time.time() < deadline, "moto server did not start"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it if it is still there after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
