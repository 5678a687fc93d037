"""Where a submission's worker runs: a bubblewrap sandbox, or (with --trusted, or for a learner's
own `progress`) a plain child process.

The sandbox: user, PID, IPC, UTS, cgroup and network namespaces of its own (no way out to any
network, the host's loopback included); a root file system holding only the system's Python and
libraries, the virtual environment read-only, and a read-only view of the workbook without
`solutions/`, `source/`, `notebooks/`, the real checks (`tests/` is a stand-in), the rest of the
tooling (of `tooling/`, only the worker and the modules it imports) and the reference
implementation of the part being graded (only the earlier parts' modules its notebook imports are
there); a private, size-limited /tmp and HOME; an unprivileged user (nobody, when the grader runs
as root); limits on memory, processes, file size, open files and CPU time. The whole process
tree is killed when the submission ends: the sandbox's PID namespace dies with its first process.
"""

import ast
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tooling.grading.catalogue import ROOT
from tooling.grading.seccomp import filter_fd

NOBODY = 65534
MEMORY = 6 * 2**30
FILE_SIZE = 64 * 2**20
OPEN_FILES = 1024
PROCESSES = 256
"""Processes and threads the sandbox's user may have."""
TMP_SIZE = 256 * 2**20
WORKER = "tooling.grading.worker"
"""The module the sandbox runs: it executes the cells and serves the grader's calls."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot make a sandbox on this machine."""


def sandbox_problem() -> str | None:
    """Why no sandbox can be made here (None when one can)."""
    if sys.platform != "linux":
        return f"sandboxed grading needs Linux (bubblewrap and user namespaces); this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap)"
    probe = subprocess.run(
        ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here ({probe.stderr.strip()[:200] or probe.returncode})"
    return None


def _limit(cpu_seconds: int) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE, FILE_SIZE))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Counted per user namespace (Linux 5.14+), so it binds the sandbox's user, which has no capabilities.
    resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))


def own_reference_module(part: str) -> str:
    return f"part{int(part[:2])}_{part[3:]}"


def allowed_reference_modules(part: str, imported: set[str]) -> set[str]:
    """The reference modules a part's sandbox holds: those its exercise notebook imports and what they
    import in turn, never the part's own."""
    folder = ROOT / "part_utils" / "reference"
    allowed, pending = set(), [name.rpartition(".")[2] for name in imported if name.startswith("part_utils.reference.")]
    while pending:
        name = pending.pop()
        if name in allowed or not (folder / f"{name}.py").is_file():
            continue
        allowed.add(name)
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("part_utils.reference."):
                pending.append(node.module.rpartition(".")[2])
    return allowed - {own_reference_module(part)}


def _module_file(name: str) -> Path | None:
    """The workbook's file of module `name` (a package's `__init__.py`), if it has one."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def worker_files() -> set[Path]:
    """The files of `tooling/` the sandboxed worker runs: its module, the `tooling` modules it imports in
    turn and their packages' `__init__.py`. The rest of the grader (catalogue, sessions, similarity) stays out."""
    files, pending = set(), [WORKER]
    while pending:
        name = pending.pop()
        path = _module_file(name)
        if path is None or path in files:
            continue
        files.add(path)
        parts = name.split(".")
        pending += [".".join(parts[:depth]) for depth in range(1, len(parts))]  # its packages, which run first
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tooling."):
                pending += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names if alias.name.startswith("tooling.")]
    return files


@dataclass
class Worker:
    process: subprocess.Popen
    to_worker: int
    from_worker: int

    def kill(self) -> None:
        for fd in (self.to_worker, self.from_worker):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait()


def stand_in_checks(folder: Path) -> Path:
    """A `tests` package whose modules have the real ones' names and no checks: the notebook's
    `import tests.partN_... as checks` works, and nothing in it knows an answer."""
    stand_in = folder / "tests"
    stand_in.mkdir()
    for path in (folder, stand_in):
        path.chmod(0o755)  # readable by the sandbox's unprivileged user
    docstring = '"""Checks run outside the sandbox while grading."""\n'
    (stand_in / "__init__.py").write_text(docstring)
    body = docstring + "\n\ndef __getattr__(name):\n    return lambda *args, **kwargs: None\n"
    modules = [path.stem for path in (ROOT / "tests").glob("*.py") if path.name != "__init__.py"]
    packages = [path.parent.name for path in (ROOT / "tests").glob("part*/__init__.py")]
    for name in modules + packages:  # a part's checks are a package: its stand-in is one module all the same
        (stand_in / f"{name}.py").write_text(body)
    return stand_in


def _system_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(name)
        if path.is_symlink():
            binds += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            binds += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        if Path(name).exists():
            binds += ["--ro-bind", name, name]
    import site

    python_homes = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    for home in sorted(python_homes):
        inside_another = any(home != other and home.startswith(other + "/") for other in python_homes)
        if Path(home).is_dir() and not home.startswith("/usr/") and not inside_another:
            binds += ["--ro-bind", home, home]
    return binds


def sandbox_command(part: str, imported: set[str], scratch: Path, worker_fds: tuple[int, int]) -> list[str]:
    root, reference = str(ROOT), ROOT / "part_utils" / "reference"
    command = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--hostname",
        "sandbox",
        # The private /tmp first: the workbook or its environment may live under /tmp, and their binds must land on top.
        "--size",
        str(TMP_SIZE),
        "--tmpfs",
        "/tmp",
        "--size",
        str(TMP_SIZE),
        "--tmpfs",
        "/home/learner",
        *_system_binds(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind",
        str(ROOT / "part_utils"),
        f"{root}/part_utils",
        "--tmpfs",
        str(reference),
        "--ro-bind",
        str(reference / "__init__.py"),
        str(reference / "__init__.py"),
    ]
    for name in sorted(allowed_reference_modules(part, imported)):
        command += ["--ro-bind", str(reference / f"{name}.py"), str(reference / f"{name}.py")]
    for path in sorted(worker_files()):
        command += ["--ro-bind", str(path), str(path)]
    if (ROOT / "section_data").is_dir():
        command += ["--ro-bind", str(ROOT / "section_data"), f"{root}/section_data"]
    command += [
        "--ro-bind",
        str(stand_in_checks(scratch)),
        f"{root}/tests",
        "--chdir",
        "/home/learner",
        "--clearenv",
        "--setenv",
        "HOME",
        "/home/learner",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
    ]
    return command


def start_worker(part: str, imported: set[str], *, sandboxed: bool, cpu_seconds: int, scratch: Path) -> Worker:
    """Start the worker, in the sandbox unless `sandboxed` is False; its stdout and stderr are discarded."""
    to_worker_read, to_worker = os.pipe()
    from_worker, from_worker_write = os.pipe()
    environment = {
        "WORKBOOK_FAST": "1",
        "TQDM_DISABLE": "1",
        "WORKBOOK_ROOT": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "PLOTLY_RENDERER": "json",
        "OMP_WAIT_POLICY": "PASSIVE",
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    program = [sys.executable, "-m", WORKER, str(to_worker_read), str(from_worker_write)]
    extra_fds: tuple[int, ...] = ()
    if sandboxed:
        command = sandbox_command(part, imported, scratch, (to_worker_read, from_worker_write))
        seccomp = filter_fd()
        if seccomp is not None:
            command += ["--seccomp", str(seccomp)]
            extra_fds = (seccomp,)
        for name, value in environment.items():
            command += ["--setenv", name, value]
        command += ["--", *program]
        preexec = lambda: _limit(cpu_seconds)  # noqa: E731
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    else:
        command, env = program, {**os.environ, **environment}
        preexec = os.setsid
    process = subprocess.Popen(
        command,
        pass_fds=(to_worker_read, from_worker_write, *extra_fds),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=preexec,
        cwd=tempfile.gettempdir() if sandboxed else str(scratch),
    )
    for fd in (to_worker_read, from_worker_write, *extra_fds):
        os.close(fd)
    return Worker(process, to_worker, from_worker)
