"""``synthgen jobs list|status|logs|stop``: the Ray jobs that ``synthgen run --address http://...`` submitted."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from synthgen.cli.common import app, user_errors

jobs_app = typer.Typer(name="jobs", no_args_is_help=True, help=(
    "Jobs on a Ray cluster's job server (--address http://HEAD:8265, or RAY_ADDRESS): list them, show one's "
    "status or logs, stop one."))
app.add_typer(jobs_app)

Address = Annotated[Optional[str], typer.Option(
    help="The cluster's job server, http(s)://HEAD:8265 (default: RAY_ADDRESS).")]
JobId = Annotated[str, typer.Argument(help="The job id that synthgen run printed (synthgen-...).")]


def _when(seconds_ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds_ms / 1000)) if seconds_ms else "-"


def _job_id(job) -> str:
    return job.submission_id or job.job_id or "?"


@jobs_app.command("list")
def list_jobs(address: Address = None) -> None:
    """Every job the cluster knows, oldest first: id, status, start time, output."""
    from synthgen.cluster.client import JobServer

    with user_errors():
        jobs = JobServer(address).list()
    if not jobs:
        typer.echo("no jobs")
        return
    for job in jobs:
        meta = job.metadata or {}
        what = f"{meta['count']} images -> {meta['out']}" if "out" in meta and "count" in meta else job.entrypoint
        typer.echo(f"{_job_id(job)}  {job.status.value:<9}  {_when(job.start_time)}  {what}")


@jobs_app.command()
def status(job_id: JobId, address: Address = None) -> None:
    """A job's status, times and message; exits 1 when it failed or was stopped."""
    from synthgen.cluster.client import JobServer

    with user_errors():
        job = JobServer(address).info(job_id)
    meta = job.metadata or {}
    typer.echo(f"{_job_id(job)}: {job.status.value}")
    typer.echo(f"  started {_when(job.start_time)}, ended {_when(job.end_time)}")
    if "out" in meta:
        typer.echo(f"  {meta.get('count', '?')} images -> {meta['out']} (model {meta.get('model', '?')})")
    if job.message and job.message.strip():
        typer.echo(f"  {job.message.strip().splitlines()[0]}")
    if job.status.value in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@jobs_app.command()
def logs(
    job_id: JobId,
    address: Address = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's logs (with --follow, as they come until it ends; Ctrl-C stops following, not the job)."""
    from synthgen.cluster.client import JobServer

    with user_errors():
        server = JobServer(address)
        if not follow:
            typer.echo(server.logs(job_id), nl=False)
            return
        try:
            final = server.follow(job_id, sys.stdout)
        except KeyboardInterrupt:
            typer.echo(f"\nstopped following; job {job_id} keeps running", err=True)
            raise typer.Exit(130) from None
    typer.echo(f"job {job_id}: {final}", err=True)
    if final != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command()
def stop(job_id: JobId, address: Address = None) -> None:
    """Stop a running job and wait for it to end; committed shards stay, and a re-run resumes them."""
    from synthgen.cluster.client import STOP_WAIT_S, JobServer

    with user_errors():
        was_running, final = JobServer(address).stop(job_id)
    if not was_running:
        typer.echo(f"job {job_id} was not running ({final})")
    elif final in ("STOPPED", "FAILED", "SUCCEEDED"):
        typer.echo(f"stopped job {job_id} ({final})")
    else:
        typer.echo(f"asked job {job_id} to stop; still {final} after {STOP_WAIT_S:.0f} s", err=True)
        raise typer.Exit(1)
