"""The cluster path: submit ``synthgen run`` as a Ray Job, follow it, and what the job runs on the cluster.

``synthgen run --address http://HEAD:8265`` (or ``RAY_ADDRESS=http://HEAD:8265``) comes here instead of
calling :func:`synthgen.generate.engine.run` in-process. :func:`submit_run` stages a small working_dir (this synthgen
package, ``jobs/generate.py``, ``job.json`` = the RunConfig, and a local checkpoint's two files;
:mod:`synthgen.cluster.staging`), submits ``python jobs/generate.py --config job.json`` through
:class:`ray.job_submission.JobSubmissionClient`, prints the job id and streams the job's logs until it
ends. A model given as a URI (``s3://...``) is read by the cluster itself, with the cluster's credentials.
``synthgen jobs list|status|logs|stop`` use the same client. On the cluster, ``jobs/generate.py`` calls
:func:`synthgen.cluster.jobrun.run_job_file`, which turns ``job.json`` back into a RunConfig and calls the engine
there (where ``RAY_ADDRESS`` points at the cluster).

This module is the client side of the cluster path; besides :mod:`synthgen.generate.engine` it is the only one that
imports ray, and only inside functions, so the CLI starts fast.

Token authentication: Ray 2.60 heads reject job-server requests without the cluster's token. The token is
found the way Ray's own clients find it: ``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; it is sent as ``Authorization: Bearer ...``. Nothing
here ever turns a cluster's authentication off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, TextIO

from synthgen import __version__
from synthgen.cluster import staging
from synthgen.errors import SynthgenError
from synthgen.generate.config import RunConfig

DEFAULT_TOKEN_PATH = "~/.ray/auth_token"
JOB_ENV = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5"}  # prompt logs, a progress line every 5 s
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_WAIT_S = 60.0
NO_AGENT = "No available agent to submit job"  # Ray's job server, while the head's dashboard agent is not up
AGENT_WAIT_S, AGENT_RETRY_S = 60.0, 2.0


# --- addresses and authentication ------------------------------------------------------------------


def job_server(address: str | None) -> str | None:
    """The job server URL when ``address`` (or, without one, ``RAY_ADDRESS``) is http(s)://; else None."""
    candidate = address if address else os.environ.get("RAY_ADDRESS", "")
    if candidate.startswith(("http://", "https://")):
        return candidate.rstrip("/")
    return None


def require_job_server(address: str | None) -> str:
    url = job_server(address)
    if url is None:
        given = f"--address {address}" if address else "no --address and no http(s):// RAY_ADDRESS"
        raise SynthgenError(f"{given}: jobs live on a Ray job server; give --address http://HEAD:8265 "
                            "(the head's dashboard port) or set RAY_ADDRESS to it")
    return url


def find_token() -> tuple[str, str] | None:
    """The cluster token and where it came from, looked up in the order Ray's own clients use.

    ``RAY_AUTH_TOKEN``; else the file at ``RAY_AUTH_TOKEN_PATH`` (which must then be readable, as in Ray);
    else ``~/.ray/auth_token`` if it exists. None when there is no token anywhere.
    """
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return value, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise SynthgenError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read a token there "
                                f"({err.strerror or err})") from None
        except UnicodeDecodeError:  # e.g. UTF-16, as PowerShell's `>` writes
            raise SynthgenError(f"RAY_AUTH_TOKEN_PATH={path}: not a UTF-8 text file; write the token "
                                "there as plain text") from None
        if not value:
            raise SynthgenError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty")
        return value, f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path(DEFAULT_TOKEN_PATH).expanduser()
    with contextlib.suppress(OSError, UnicodeDecodeError):  # not text: absent, like a file it cannot open
        value = default.read_text().strip()
        if value:
            return value, DEFAULT_TOKEN_PATH
    return None


def _auth_message(address: str, token: tuple[str, str] | None) -> str:
    how = ("set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it, or put "
           "it in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")
    if token is None:
        return f"{address} requires a Ray auth token and none was found: {how}"
    return f"{address} refused the auth token from {token[1]}: {how}"


@contextlib.contextmanager
def _job_server_errors(address: str, token: tuple[str, str] | None, job_id: str | None = None) -> Iterator[None]:
    """Turn the job client's exceptions into one-line SynthgenErrors."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        raise SynthgenError(_auth_message(address, token)) from None
    except RuntimeError as err:
        text = _first_line(err)
        if job_id and "status code 404" in text:
            raise SynthgenError(f"no job {job_id} on {address} (`synthgen jobs list --address {address}` "
                                "shows its jobs)") from None
        raise SynthgenError(f"{address}: {text}") from None
    except (ConnectionError, OSError) as err:  # requests' errors are OSErrors too
        raise SynthgenError(f"cannot reach the Ray job server at {address} ({_first_line(err)}); is the "
                            "cluster up and its dashboard port reachable (`ray dashboard cluster.yaml` "
                            "forwards it to http://127.0.0.1:8265)?") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class JobServer:
    """A connected job client plus the address and token it uses, for messages."""

    def __init__(self, address: str | None):
        from ray.job_submission import JobSubmissionClient

        self.address = require_job_server(address)
        self.token = find_token()
        headers = {"Authorization": f"Bearer {self.token[0]}"} if self.token else {}
        _quiet_ray_client_logs()
        with self.errors():
            self.client = JobSubmissionClient(self.address, headers=headers)

    def errors(self, job_id: str | None = None):
        return _job_server_errors(self.address, self.token, job_id)

    def submit(self, job_id: str, runtime_env: dict, metadata: dict, err: TextIO,
               agent_wait_s: float = AGENT_WAIT_S) -> None:
        """Submit the job; while the head's job agent is not up yet (a cluster that has just started), retry
        for up to ``agent_wait_s``: the job server refuses such jobs without creating them."""
        deadline, told = time.monotonic() + agent_wait_s, False
        while True:
            try:
                with self.errors():
                    self.client.submit_job(entrypoint=staging.ENTRYPOINT, submission_id=job_id, runtime_env=runtime_env,
                                           metadata=metadata)
                return
            except SynthgenError as e:
                if NO_AGENT not in str(e) or time.monotonic() >= deadline:
                    raise
            if not told:
                err.write(f"{self.address} has no job agent up yet (a cluster just started?); retrying for up "
                          f"to {agent_wait_s:.0f} s\n")
                err.flush()
                told = True
            time.sleep(AGENT_RETRY_S)

    def info(self, job_id: str):
        with self.errors(job_id):
            return self.client.get_job_info(job_id)

    def list(self) -> list:
        with self.errors():
            jobs = self.client.list_jobs()
        return sorted(jobs, key=lambda j: j.start_time or 0)

    def logs(self, job_id: str) -> str:
        with self.errors(job_id):
            return self.client.get_job_logs(job_id)

    def stop(self, job_id: str, wait_s: float = STOP_WAIT_S) -> tuple[bool, str]:
        """Ask the job to stop; wait up to ``wait_s`` for it to end. Returns (was running, final status)."""
        with self.errors(job_id):
            was_running = self.client.stop_job(job_id)
        return was_running, self.wait(job_id, wait_s)

    def wait(self, job_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            status = str(self.info(job_id).status.value)
            if status in TERMINAL or time.monotonic() >= deadline:
                return status
            time.sleep(0.5)

    def follow(self, job_id: str, out: TextIO) -> str:
        """Copy the job's logs to ``out`` as they come, until it ends; returns its final status."""
        self.info(job_id)  # a job that does not exist: one line, not a websocket error
        printed = [0]
        try:
            self._tail(job_id, out, printed)
        except Exception:  # the log stream broke (aiohttp, a proxy without websockets): poll instead
            pass
        printed = printed[0]
        while (status := str(self.info(job_id).status.value)) not in TERMINAL:
            text = self.logs(job_id)
            out.write(text[printed:])
            out.flush()
            printed = len(text)
            time.sleep(2)
        text = self.logs(job_id)
        if len(text) > printed:
            out.write(text[printed:])
            out.flush()
        return status

    def _tail(self, job_id: str, out: TextIO, printed: list[int]) -> None:
        import asyncio

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()
                printed[0] += len(chunk)

        asyncio.run(tail())

    def failure(self, job_id: str) -> str:
        """Why a job failed, in one line: its last ``error:`` line, else the job server's message."""
        with contextlib.suppress(SynthgenError):
            for line in reversed(self.logs(job_id).splitlines()):
                if line.startswith("error: "):
                    return line.removeprefix("error: ").strip()
        message = self.info(job_id).message or "no message"
        return _first_line(Exception(message))


def _quiet_ray_client_logs() -> None:
    import logging

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- submission --------------------------------------------------------------------------------------


def submit_run(config: RunConfig, detach: bool = False, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """Submit ``config`` as a Ray Job to the job server at ``config.address`` (or RAY_ADDRESS).

    Prints the job id; unless ``detach``, streams the job's logs until it ends. Ctrl-C asks whether to stop
    the job (with no terminal to ask on, it leaves the job running and says how to stop it).

    Returns:
        The exit status for the CLI: 0 when the job succeeded (or was detached), 130 after Ctrl-C.

    Raises:
        SynthgenError: bad settings, an unreachable or refusing cluster, or a job that failed.
    """
    out, err = out or sys.stdout, err or sys.stderr
    staging.check_submittable(config)
    job_id = f"synthgen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="synthgen-job-") as tmp:
        try:
            staged = staging.stage_job(config, Path(tmp))  # checks the model before anything goes over the network
            server = JobServer(config.address)
        except KeyboardInterrupt:
            err.write("\ninterrupted before the job was submitted; nothing was started\n")
            return 130
        runtime_env = {"working_dir": tmp, "env_vars": dict(JOB_ENV)}
        metadata = {"synthgen_version": __version__, "count": str(config.count), "out": config.out,
                    "model": config.model or "(bundled default)"}
        try:
            server.submit(job_id, runtime_env, metadata, err)
        except KeyboardInterrupt:
            err.write(f"\ninterrupted while submitting; job {job_id} may have started: "
                      f"{_hints(server.address, job_id)}\n")
            return 130
    out.write(f"job {job_id}\n")
    out.flush()
    err.write(f"submitted job {job_id} to {server.address}: {staged.count} images -> {staged.out}\n")
    if detach:
        err.write(f"{_hints(server.address, job_id)}\n")
        return 0
    err.write("following its logs (Ctrl-C to stop following)\n")
    err.flush()
    try:
        status = server.follow(job_id, out)
    except KeyboardInterrupt:
        return _interrupted(server, job_id, err)
    if status == "SUCCEEDED":
        err.write(f"job {job_id} succeeded\n")
        return 0
    if status == "STOPPED":
        raise SynthgenError(f"job {job_id} was stopped; committed shards are kept in {config.out}: "
                            "run the same command again to resume")
    raise SynthgenError(f"job {job_id} failed: {server.failure(job_id)}")


def _hints(address: str, job_id: str) -> str:
    return (f"follow it with `synthgen jobs logs {job_id} --follow --address {address}`, "
            f"stop it with `synthgen jobs stop {job_id} --address {address}`")


def _interrupted(server: JobServer, job_id: str, err: TextIO) -> int:
    answer = ""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            answer = input(f"\nstop job {job_id} on the cluster? [y/N] ")
        except (KeyboardInterrupt, EOFError):
            answer = ""
    if answer.strip().lower() in ("y", "yes"):
        _, status = server.stop(job_id)
        err.write(f"job {job_id}: {status}\n")
        return 130
    err.write(f"\njob {job_id} is still running on {server.address}; {_hints(server.address, job_id)}\n")
    return 130
