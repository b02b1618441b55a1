"""Run untrusted generated Python in a separate, limited process.

    r = run_python(program, timeout_s=5.0, memory_mb=1024)
    r.status        "passed" | "failed" | "timeout" | "exited" (left before the end)
    r.passed        True only when the whole program ran to its last line

Each program runs in its own `python -I` process and session (so its whole process group can
be killed) in a fresh temporary directory with an empty environment, under RLIMIT_AS
(address space), RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_CORE (set by the program's first lines,
before any generated code), and a wall-clock timeout after which the process group is
SIGKILLed; leftover children are killed when the program ends too.
A prelude disables the obvious ways to reach outside (sockets, subprocesses, fork, kill,
file removal, os.system). Success is judged by a one-time token that the harness prints after
the program's last line (the token is read from stdin and never written into the program),
so a program that calls sys.exit(0) or os._exit(0) early does not pass.
This keeps honest-but-wrong model code from harming the evaluation; it is not a security
boundary against a deliberate attacker (use a container or a VM for that).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Limits are set by the program's first lines, before any generated code runs (not with
# Popen's preexec_fn, which can deadlock a child forked from a multi-threaded process).
_LIMITS = r'''
import sys as _sys
def _limit(mem, cpu):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_limit({mem}, {cpu})
del _limit
_token = _sys.stdin.readline().strip()
'''

_GUARD = r'''
def _guard():
    import builtins, os, shutil, socket, subprocess
    def _blocked(*a, **k):
        raise PermissionError("blocked in the llmforge eval sandbox")
    class _NoSocket(socket.socket):
        def __init__(self, *a, **k):
            _blocked()
    socket.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd"):
        setattr(socket, name, _blocked)
    import posix
    for mod in (os, posix):
        for name in ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp", "execvpe",
                     "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle",
                     "posix_spawn", "posix_spawnp", "popen", "remove", "unlink", "rmdir", "removedirs",
                     "rename", "renames", "replace", "truncate", "ftruncate", "setuid", "putenv", "chmod",
                     "chown", "chroot", "fchdir", "setsid", "setpgid"):
            if hasattr(mod, name):
                setattr(mod, name, _blocked)
    subprocess.Popen = _blocked
    subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = _blocked
    shutil.rmtree = shutil.move = shutil.chown = _blocked
    builtins.help = _blocked
    _sys.modules["resource"] = None
_guard()
del _guard
'''

_EPILOGUE = "\nprint('\\n' + _token, flush=True)\n"


@dataclass
class SandboxResult:
    status: str                # passed | failed | timeout | exited
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(f, n: int = 4000) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(program: str, timeout_s: float = 5.0, memory_mb: int = 1024, guard: bool = True) -> SandboxResult:
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    if memory_mb < 64:
        raise ValueError("memory_mb must be at least 64 (the interpreter itself needs ~20 MB)")
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="llmforge-sandbox-") as d:
        path = os.path.join(d, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            limits = _LIMITS.format(mem=memory_mb * 1024 * 1024, cpu=max(1, int(timeout_s) + 1))
            f.write(limits + (_GUARD if guard else "") + "\n" + program + "\n" + _EPILOGUE)
        env = {"PATH": "/usr/bin:/bin", "HOME": d, "TMPDIR": d, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        # output goes to files (capped by RLIMIT_FSIZE), not pipes: a program printing in a loop
        # cannot fill this process's memory, and a leftover child holding a pipe cannot stall us
        with open(os.path.join(d, "stdout"), "w+b") as fo, open(os.path.join(d, "stderr"), "w+b") as fe:
            p = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=d, env=env, stdin=subprocess.PIPE,
                                 stdout=fo, stderr=fe, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                try:
                    p.stdin.write((token + "\n").encode())
                    p.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(p.pid)
                p.wait()
            finally:
                _kill_group(p.pid)           # children it left behind go with it
            out, err = _tail(fo), _tail(fe)
    if timed_out:
        status = "timeout"
    elif p.returncode == 0 and out.rstrip().endswith(token):
        status = "passed"
        out = out.rstrip()[:-len(token)]
    elif p.returncode == 0:
        status = "exited"
    else:
        status = "failed"
    if p.returncode is not None and p.returncode < 0 and p.returncode == -signal.SIGXCPU:
        status = "timeout"
    return SandboxResult(status, p.returncode, out[-2000:], err[-2000:])
