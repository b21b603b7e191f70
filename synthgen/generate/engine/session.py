"""The engine's Ray session: which cluster a run joins or starts, refused at once when it is not there, and
SIGTERM turned into a stop request for as long as the session lasts."""

from __future__ import annotations

import logging
import os
import signal
import socket

import ray

from synthgen.errors import SynthgenError, restore_handlers, stop_on_signals

GCS_CONNECT_TIMEOUT_S = 10.0
PROBE_WAIT_S = 2.0  # for a server's first bytes: a GCS sends its HTTP/2 settings at once


class ray_session:
    """Join the cluster at ``address`` (or RAY_ADDRESS), reuse this process's Ray, or start a local cluster
    (and stop it).

    Without an address, a bare ``ray.init()`` joins the cluster that ``/tmp/ray/ray_current_cluster`` names
    (the last ``ray start`` here). That file outlives a cluster that was killed, and Ray then waits for the dead
    cluster without end; so that cluster is joined only when it answers, and otherwise a new local one starts.
    ``--address local`` always starts a new one.
    """

    def __init__(self, address: str | None):
        self.address, self.started = address, False

    def __enter__(self) -> None:
        if ray.is_initialized():
            return
        env = os.environ.get("RAY_ADDRESS")
        if self.address or env:
            address = self.address or env
            where = f"--address {self.address}" if self.address else f"RAY_ADDRESS={env}"
            _check_reachable(address, where)
        else:
            last = _resolved(None)  # RAY_ADDRESS is unset here: the file of the last `ray start`
            running = last if last and not _unreachable(last) else None
            address = "auto" if running else "local"
            where = f"the Ray cluster `ray start` runs here ({running})" if running else "a local Ray cluster"
        if address != "local":
            _use_cluster_token()
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as err:
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                    "(or copy the head's ~/.ray/auth_token here)" if address != "local" else "")
            raise SynthgenError(f"cannot start or reach {where}: {str(err).splitlines()[0]}{hint}") from None
        self.started = True
        # ray.init put its own handler on SIGTERM: it exits on the spot, after Ray's crash handler printed a
        # stack dump, so the run would neither save its last shards in the manifest nor say how to resume
        self.handlers = stop_on_signals((signal.SIGTERM,))

    def __exit__(self, *exc) -> None:
        if self.started:
            restore_handlers(self.handlers)
            ray.shutdown()


def _resolved(address: str | None) -> str | None:
    """``address`` as ``ray.init`` would resolve it: "auto" or None to the last ``ray start`` cluster's
    address (None when there is none), 127.0.0.1 to this node's IP. Unchanged when Ray cannot parse it (or
    its private API moved): ``ray.init`` then judges it itself."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address)
    except ConnectionError:
        return None
    except Exception:
        return address


def _unreachable(address: str) -> str | None:
    """Why nothing accepts a connection at ``address`` (host:port), or None when something does."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=GCS_CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        return getattr(err, "strerror", None) or str(err) or type(err).__name__
    return None


def _check_reachable(address: str, where: str) -> None:
    """Refuse at once when nothing listens where ``ray.init`` would connect: Ray retries an unreachable GCS
    without end, printing a warning every few seconds."""
    if address == "local" or address.startswith("ray://"):
        return
    resolved = _resolved(address)
    if not resolved:
        return  # "auto" with no cluster: ray.init says so itself
    # as typed too: Ray turns 127.0.0.1 into this node's IP, where a dashboard on loopback does not answer
    for probed in dict.fromkeys((address, resolved)):
        other = _what_answers(probed)
        if other:  # ray.init would retry it for minutes, printing gRPC warnings to the terminal
            raise SynthgenError(f"{where}: {other} answers at {probed}, not a Ray GCS; to submit the run as a "
                                f"Ray job use http://{address}, or give the cluster's GCS port (6379 unless "
                                "`ray start --port` chose another) to join it from here") from None
    reason = _unreachable(resolved)
    if reason:
        raise SynthgenError(f"cannot reach {where}: nothing answers at {resolved} ({reason}); is the cluster's "
                            "head running (`ray start --head`, `ray up`)?") from None


def _what_answers(address: str) -> str | None:
    """What listens at ``address`` (host:port) when it is surely not a Ray GCS, e.g. "an HTTP server"; None
    for a GCS, or anything this cannot tell (such as a TLS port): ``ray.init`` then judges it."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=GCS_CONNECT_TIMEOUT_S) as conn:
            first = _first_bytes(conn)
            if len(first) >= 4 and first[3] == 0x04:  # an HTTP/2 SETTINGS frame: the gRPC server's preface
                return None
            if first:
                return f"a server that is not Ray's (its first bytes: {first[:32]!r})"
            conn.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            reply = _first_bytes(conn)
    except (OSError, ValueError):
        return None
    status = reply.split(b"\r\n", 1)[0].decode("latin-1")
    return f"an HTTP server ({status})" if status.startswith("HTTP/") else None


def _first_bytes(conn: socket.socket) -> bytes:
    """What the peer sends within PROBE_WAIT_S (at most 64 bytes); b"" when it sends nothing or closes."""
    conn.settimeout(PROBE_WAIT_S)
    try:
        return conn.recv(64)
    except (socket.timeout, ConnectionError):
        return b""


def _use_cluster_token() -> None:
    """Send the auth token when one is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

    Ray 2.60's heads enable token authentication by default, but ``ray.init(address=HOST:PORT)`` only looks
    for a token when the address is "auto"; this applies Ray's own lookup for explicit addresses too. A
    RAY_AUTH_MODE the user set is respected, and authentication is never turned off.
    """
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    # it logs a warning that authentication is on, on every run: nothing for the user to act on
    log = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)
