"""Run an untrusted Python program (model-written code and its tests) and report its exit status.

:class:`Sandbox` runs it inside bubblewrap (``bwrap``) under resource limits (``prlimit``):

* namespaces: new pid, network, IPC, UTS and cgroup namespaces (``--unshare-pid --unshare-net
  --unshare-ipc --unshare-uts --unshare-cgroup-try``), so the program reaches no network (the
  host's loopback included), no process outside the sandbox (it cannot signal the caller) and no
  socket of the host; ``--new-session`` detaches it from the caller's terminal and
  ``--die-with-parent`` kills it when the runner dies;
* file system: a fresh root holding only ``/usr`` (with the ``/bin``, ``/lib*`` links), the dynamic
  linker cache and the interpreter's prefixes, all read-only; a private ``/proc`` and minimal
  ``/dev``; ``/tmp``, ``/dev/shm`` and the working folder ``/sandbox`` (holding the program) are
  size-capped tmpfs, the only writable places, gone when the run ends. The rest of ``/etc``,
  ``/root``, ``/home``, ``/var``, ``/run`` and the caller's folders are not there;
* environment: emptied (``--clearenv``), then only ``PATH``, ``HOME``, ``LANG`` and ``TMPDIR``;
* identity: the program runs as an unprivileged user. When the caller is root, bwrap runs
  privileged and ``setpriv`` drops the program to :data:`SANDBOX_UID` with no capabilities and
  ``no_new_privs`` (a user namespace it creates gives it no way past the limits below); otherwise
  bwrap runs unprivileged in a new user namespace as the caller's uid, and nested user namespaces
  are disabled;
* limits (``prlimit``, inherited by every process of the run): CPU seconds (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), open files, no core dumps, and
  processes (``RLIMIT_NPROC``). The kernel counts ``RLIMIT_NPROC`` over all processes of the user,
  so the limit is set to that user's current task count plus ``max_processes``; concurrent runs
  share the sandbox user and thus that margin. Memory is capped per process, so a run may hold up
  to ``max_processes`` times ``memory_mb``, plus its three tmpfs;
* wall clock: past ``timeout_s`` the runner kills bwrap's process group; the pid namespace dies
  with it, taking every process the program started.

:class:`Unsandboxed` is the explicit opt-out for machines without bubblewrap: ``python -I`` in an
empty temporary folder with the same wall-clock limit, and no other protection.
:meth:`Sandbox.open` checks that a sandbox really starts and raises :class:`SandboxError` saying why
when it does not.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

SANDBOX_UID = 65534   # the conventional "nobody"; the program's uid when the caller is root
SCRIPT = "solution_test.py"
WORKDIR = "/sandbox"
_STDERR_TAIL = 2000   # bytes of the program's stderr kept for the log
_PREFIXES = "import sys; print(sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, sep='\\n')"


class SandboxError(RuntimeError):
    """No sandbox could be set up or started (the message says why and how to fix it)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. ``timeout_s`` is wall-clock seconds (fractions allowed); CPU time
    is capped at the same number of seconds, rounded up; sizes are MiB."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_mb: int = 16
    tmpfs_mb: int = 64


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``exit_code`` is the program's status (128 + N when signal N killed it),
    None when it was killed at the wall-clock limit; ``stderr`` is the tail of its error output."""

    exit_code: int | None
    stderr: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


class Runner(Protocol):
    def run(self, source: str) -> RunResult: ...


def _program_file(source: str) -> int:
    """An anonymous in-memory file holding ``source``, read position at its start."""
    fd = os.memfd_create("nr-program", 0)
    os.write(fd, source.encode("utf-8"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _wait(cmd: list[str], timeout_s: float, stderr: IO[bytes], *, cwd: str | None = None,
          pass_fds: tuple[int, ...] = (), home: str = "/") -> int | None:
    """Run ``cmd`` in a new session with a minimal environment and wait; its exit status (128 + N
    for signal N), or None when ``timeout_s`` passed. Unless it exited by itself (a timeout, an
    interrupt), its whole process group is killed before this returns. The ``pass_fds`` are closed
    here. SandboxError when ``cmd`` cannot be started."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, pass_fds=pass_fds, start_new_session=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"})
    except OSError as e:
        raise SandboxError(f"cannot start {cmd[0]}: {e}") from None
    finally:
        for fd in pass_fds:
            os.close(fd)
    try:
        rc = proc.wait(timeout=timeout_s)
        return 128 - rc if rc < 0 else rc
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _tail(f: IO[bytes]) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - _STDERR_TAIL))
    return f.read().decode("utf-8", errors="replace")


def _task_count(uid: int) -> int:
    """Threads (what ``RLIMIT_NPROC`` counts) of all processes owned by ``uid`` now."""
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:   # the process ended while we looked
                pass
    return n


def interpreter_prefixes(python: str) -> tuple[str, ...]:
    """``python``'s ``sys.prefix``, then the folders it needs (its prefixes and, for a virtual
    environment, its base's) that are not under ``/usr``. Asks the interpreter itself, outside any
    sandbox: it is the operator's configured interpreter, not untrusted code. SandboxError when it
    does not run."""
    try:
        out = subprocess.run([python, "-I", "-c", _PREFIXES], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"the interpreter {python} does not run: {e}") from None
    if out.returncode != 0:
        raise SandboxError(f"the interpreter {python} does not run (exit {out.returncode}): "
                           f"{out.stderr.strip()[-500:]}")
    lines = [p for p in out.stdout.split("\n") if p.strip()]
    found = {os.path.realpath(p) for p in lines}
    kept = sorted(p for p in found if p != "/" and not (p + "/").startswith("/usr/"))
    return (lines[0], *(p for p in kept if not any(p.startswith(q + "/") for q in kept)))


@dataclass(frozen=True)
class Sandbox:
    """Runs programs with ``python`` inside bubblewrap under ``limits`` (see the module docstring).
    Build it with :meth:`open`, which checks that it works."""

    python: str
    limits: Limits
    prefixes: tuple[str, ...]
    tools: dict[str, str]      # "bwrap", "prlimit" and, when run as root, "setpriv": their paths
    as_root: bool

    @classmethod
    def open(cls, python: str, limits: Limits) -> Sandbox:
        """A working sandbox for ``python`` (an absolute path); SandboxError naming what is missing
        or failing: bwrap/prlimit/setpriv not installed, user namespaces refused, the interpreter
        not starting inside."""
        as_root = os.geteuid() == 0
        needed = ("bwrap", "prlimit", "setpriv") if as_root else ("bwrap", "prlimit")
        tools = {name: shutil.which(name, path="/usr/bin:/bin") for name in needed}
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            raise SandboxError(f"{', '.join(missing)} not found in /usr/bin or /bin")
        prefix, *binds = interpreter_prefixes(python)
        sandbox = cls(os.path.abspath(python), limits, tuple(binds),
                      {k: str(v) for k, v in tools.items()}, as_root)
        result = sandbox.run(f"import sys\nassert sys.prefix == {prefix!r}, sys.prefix\n")
        if not result.passed:
            raise SandboxError(f"{python} does not start in bubblewrap as it does outside (exit "
                               f"{result.exit_code}): {result.stderr.strip()[-500:]}")
        return sandbox

    def run(self, source: str) -> RunResult:
        """Run ``source`` as ``/sandbox/solution_test.py``; SandboxError when the sandbox itself
        could not be set up (the program never started)."""
        status_r, status_w = os.pipe()
        program = _program_file(source)
        try:
            with tempfile.TemporaryFile(prefix="nr-sandbox-err-") as err:
                rc = _wait(self.command(status_w, program), self.limits.timeout_s, err,
                           pass_fds=(status_w, program))
                os.set_blocking(status_r, False)
                try:
                    status = os.read(status_r, 65536).decode(errors="replace")
                except BlockingIOError:
                    status = ""
                if rc is not None and '"exit-code"' not in status:
                    raise SandboxError(f"bubblewrap failed to start the program: {_tail(err).strip()}")
                return RunResult(rc, _tail(err))
        finally:
            os.close(status_r)

    def command(self, status_fd: int, program_fd: int) -> list[str]:
        """The full command line: prlimit, then bwrap, then (as root) setpriv, then the interpreter."""
        lim = self.limits
        cpu = max(1, math.ceil(lim.timeout_s))
        uid = SANDBOX_UID if self.as_root else os.getuid()
        nproc = _task_count(uid) + lim.max_processes
        cmd = [self.tools["prlimit"], f"--cpu={cpu}:{cpu + 1}", f"--as={lim.memory_mb << 20}",
               f"--fsize={lim.max_file_mb << 20}", f"--nproc={nproc}", "--nofile=256", "--core=0",
               "--", self.tools["bwrap"], *self._namespaces(), *self._file_system()]
        cmd += ["--perms", "0644", "--file", str(program_fd), f"{WORKDIR}/{SCRIPT}", "--chdir", WORKDIR,
                "--json-status-fd", str(status_fd), "--"]
        if self.as_root:
            cmd += [self.tools["setpriv"], f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                    "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        return cmd + [self.python, "-I", SCRIPT]

    def _namespaces(self) -> list[str]:
        flags = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
                 "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR,
                 "--setenv", "LANG", "C.UTF-8", "--setenv", "TMPDIR", "/tmp"]
        if self.as_root:   # privileged bwrap: only setpriv's uid/gid change is allowed
            return flags + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return flags + ["--unshare-user", "--disable-userns"]

    def _file_system(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/") / name
            if top.is_symlink():
                args += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                args += ["--ro-bind", str(top), str(top)]
        args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        made: set[str] = set()
        for prefix in self.prefixes:   # parents readable by the sandbox user, then the prefix
            for parent in reversed(Path(prefix).parents[:-1]):
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            args += ["--ro-bind", prefix, prefix]
        size = str(self.limits.tmpfs_mb << 20)
        args += ["--proc", "/proc", "--dev", "/dev"]
        for writable in ("/dev/shm", "/tmp", WORKDIR):   # /dev/shm: multiprocessing's semaphores
            args += ["--perms", "1777", "--size", size, "--tmpfs", writable]
        return args


@dataclass(frozen=True)
class Unsandboxed:
    """Runs programs with ``python -I`` in an empty temporary folder, with the wall-clock limit of
    ``limits`` and an environment of ``PATH``, ``HOME`` and ``LANG`` only: no protection against a
    hostile program. Only for callers that opted out of the sandbox explicitly."""

    python: str
    limits: Limits

    def run(self, source: str) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="nr-code-") as tmp:
            (Path(tmp) / SCRIPT).write_text(source, encoding="utf-8")
            with open(Path(tmp) / "stderr.txt", "w+b") as err:
                rc = _wait([self.python, "-I", SCRIPT], self.limits.timeout_s, err, cwd=tmp, home=tmp)
                return RunResult(rc, _tail(err))
