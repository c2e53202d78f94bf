"""Run untrusted generated Python in an isolated subprocess.

Each program runs in a fresh temporary directory (deleted afterwards) as `python -I -B`, in its own session
(so the whole process group can be killed), with:
  * wall-time limit: killed with SIGKILL after `timeout_s` (plus RLIMIT_CPU as a backstop);
  * memory limit:    resource.setrlimit(RLIMIT_AS, memory_mb) -> allocations past it raise MemoryError;
  * output limit:    stdout/stderr go to files capped by RLIMIT_FSIZE;
  * no network:      `unshare -n` (an empty network namespace: no interface but a down loopback) when the
                     kernel allows it, AND always an audit hook (sys.addaudithook, which the program cannot
                     remove) that refuses every `socket.*` event, process spawning (subprocess, os.system,
                     os.exec*, fork, posix_spawn), signalling other processes, and writes/deletes outside
                     the temp directory.
`network_isolation()` says which network guard is active ("unshare-n+audit-hook" or "audit-hook").
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Runs before the program, in the child. Kept as plain text: it is the child's first code.
_GUARD = r'''
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_SPAWN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
          "os.kill", "os.killpg", "pty.spawn"}
_FS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate", "os.chmod", "os.chown"}
def _inside(p):
    try:
        return os.path.realpath(os.fsdecode(p)).startswith(_ROOT)
    except Exception:
        return False
def _hook(event, args):
    if event.startswith("socket."):
        raise PermissionError("sandbox: network blocked (" + event + ")")
    if event in _SPAWN:
        raise PermissionError("sandbox: process creation blocked (" + event + ")")
    if event in _FS and args and not _inside(args[0]):
        raise PermissionError("sandbox: filesystem change outside the sandbox blocked (" + event + ")")
    if event == "open" and len(args) > 1 and isinstance(args[0], (str, bytes)):
        mode = args[1] if isinstance(args[1], str) else ""
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = any(c in mode for c in "wax+") or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and not _inside(args[0]):
            raise PermissionError("sandbox: write outside the sandbox blocked")
_src = open("program.py").read()
sys.addaudithook(_hook)
del _hook
exec(compile(_src, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass
class ExecResult:
    status: str          # passed | failed | timeout | memory | blocked
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def _unshare_cmd() -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in (("-n",), ("-r", "-n")):  # as root; else as an unprivileged user namespace
        try:
            if subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                return (exe, *flags)
        except (OSError, subprocess.SubprocessError):
            pass
    return ()


def network_isolation() -> str:
    return "unshare-n+audit-hook" if _unshare_cmd() else "audit-hook"


def _limits(memory_mb: int, cpu_s: int, fsize_mb: int):
    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb << 20, fsize_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_program(program: str, timeout_s: float = 5.0, memory_mb: int = 1024, fsize_mb: int = 16,
                python: str = sys.executable) -> ExecResult:
    """Execute `program` (Python source) under the limits above; never raises for the program's sake."""
    with tempfile.TemporaryDirectory(prefix="tbf-sandbox-") as tmp:
        d = Path(tmp)
        (d / "program.py").write_text(program)
        (d / "guard.py").write_text(_GUARD)
        out, err = open(d / "stdout", "wb"), open(d / "stderr", "wb")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0",
               "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        cmd = [*_unshare_cmd(), python, "-I", "-B", "guard.py"]
        timed_out = False
        try:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True,
                                    preexec_fn=_limits(memory_mb, int(timeout_s) + 1, fsize_mb))
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children too
                except ProcessLookupError:
                    pass
                rc = proc.wait()
        finally:
            out.close()
            err.close()
        so = (d / "stdout").read_bytes()[-4000:].decode(errors="replace")
        se = (d / "stderr").read_bytes()[-4000:].decode(errors="replace")
    if timed_out or rc == -signal.SIGXCPU:
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif "MemoryError" in se:
        status = "memory"
    elif "sandbox:" in se:
        status = "blocked"
    else:
        status = "failed"
    return ExecResult(status=status, returncode=None if timed_out else rc, stdout=so, stderr=se)
