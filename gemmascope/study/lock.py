"""One writer per workdir, or per job: lock files naming their holder, created atomically.

Synopsis:
    from gemmascope.study import lock
    with lock.hold(workdir):                      # the whole workdir (cache, eval, all)
        ...
    with lock.hold(workdir, jobs=["resid_post-L3-w16384-jumprelu"]):   # train, export
        ...
    lock.holders(workdir)       # {lock path: {"host", "pid", "started", "command", ...}}

Two runs must never write the same files. Modes that write what the whole study shares (the
activation cache, the metric table, imported SAEs: `cache`, `eval`, `all`), and train or export
of every job, lock the whole workdir, `workdir/locks/workdir.lock`. Train and export of the jobs
`--jobs` selects lock each of them, `workdir/locks/job-<name>.lock`, so the launchers' parallel
tasks (launch/: one `--mode=train --jobs=...` per task, on disjoint jobs) run side by side,
while a second run of the same job, or a cache or eval run during training, is refused. Each
run creates its own locks first and then looks for the other kind, so of two conflicting runs
at least one sees the other (both may refuse; rerun one).

A lock is a small JSON file: host, pid, the process's start time, when it was taken, the command
line. Creating one is atomic: on a local (or NFS) disk the JSON is written to a temporary file
and hard-linked to the lock's name, which fails if the name exists (O_CREAT | O_EXCL where hard
links are not supported); in a gs:// workdir it is a conditional write through tensorstore that
succeeds only if the object does not exist (GCS's `ifGenerationMatch=0`).

A lock left by a run that was killed (SIGKILL, a crashed host) is *stale*. On the host that took
it, a holder whose pid no longer runs (or now belongs to a process started at another time) is
taken over with a warning. A lock from another host is never taken over: the message names the
host, pid and command and how to delete the lock once that run is known to be gone. In
multi-process runs only process 0 takes the locks; the others learn whether it did. Locks are
deleted (if still ours) when the block exits, errors included.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import uuid

from gemmascope import files
from gemmascope.study.errors import WorkdirError

LOCKS_DIR = "locks"
WORKDIR_LOCK = "workdir.lock"


def workdir_lock_path(workdir: str) -> str:
    """`workdir/locks/workdir.lock`: held by runs that write what the whole study shares."""
    return files.join(workdir, LOCKS_DIR, WORKDIR_LOCK)


def job_lock_path(workdir: str, job: str) -> str:
    """`workdir/locks/job-<job>.lock`: held by a run that trains or exports that job."""
    return files.join(workdir, LOCKS_DIR, f"job-{job}.lock")


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of /proc/<pid>/stat, counting from the one after ")"
    except (OSError, IndexError):
        return None


def _running(pid: int, started: str | None) -> bool:
    """Whether process `pid` exists on this host and, when known, started at `started`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _process_start(pid)
    return started is None or now is None or now == started


class _LocalStore:
    """Lock files on a local (or NFS) file system."""

    def create(self, path: str, payload: bytes) -> bool:
        """Creates `path` holding `payload`; False if it already exists."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=folder)
        try:
            os.fchmod(fd, files.default_file_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system
                return self._create_exclusive(path, payload)
        finally:
            os.remove(tmp)

    @staticmethod
    def _create_exclusive(path: str, payload: bytes) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return True

    def read(self, path: str) -> tuple[bytes | None, object]:
        """(contents or None if absent, a token for delete)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        return data, data

    def delete(self, path: str, token) -> bool:
        """Deletes `path` if it still holds `token`'s contents; True if it did."""
        aside = f"{path}.{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)  # atomic: of two runs, one moves a given lock aside
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            data = f.read()
        if data != token:  # another run's fresh lock: put it back
            with contextlib.suppress(OSError):
                os.link(aside, path)
            os.remove(aside)
            return False
        os.remove(aside)
        return True


class _ObjectStore:
    """Lock objects (gs://), written and deleted with generation preconditions."""

    def __init__(self):
        self._stores: dict[str, object] = {}

    def _kv(self, path: str):
        import tensorstore as ts

        folder, _, key = path.rstrip("/").rpartition("/")
        if folder not in self._stores:
            self._stores[folder] = ts.KvStore.open(folder + "/").result()
        return self._stores[folder], key

    def create(self, path: str, payload: bytes) -> bool:
        kv, key = self._kv(path)
        missing = kv.read(key).result()
        if missing.state == "value":
            return False
        # Succeeds only while the object is still absent (ifGenerationMatch=0 on GCS).
        written = kv.write(key, payload, if_equal=missing.stamp.generation).result()
        return bool(written.generation)

    def read(self, path: str) -> tuple[bytes | None, object]:
        kv, key = self._kv(path)
        result = kv.read(key).result()
        if result.state != "value":
            return None, None
        return bytes(result.value), result.stamp.generation

    def delete(self, path: str, token) -> bool:
        kv, key = self._kv(path)
        return bool(kv.write(key, None, if_equal=token).result().generation)


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _remove_command(path: str) -> str:
    return f"gcloud storage rm {path}" if files.is_url(path) else f"rm {path}"


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock record"
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
        f"{holder.get('started', '?')}, command: {holder.get('command', '?')}"
    )


class _Locks:
    """The lock files one run holds in a workdir."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._store = _ObjectStore() if files.is_url(workdir) else _LocalStore()
        self._held: dict[str, bytes] = {}  # path -> our payload
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "token": uuid.uuid4().hex,
        }
        self._payload = (json.dumps(record, indent=2) + "\n").encode()

    def take(self, path: str, what: str) -> None:
        """Creates the lock `path`, taking over a stale one of this host with a warning.

        Raises:
            WorkdirError: A live run holds it (names the holder and what to do).
        """
        for _ in range(3):  # a lock deleted or taken over between our steps: look again
            if self._store.create(path, self._payload):
                self._held[path] = self._payload
                return
            if self._live_holder(path, what) is None:
                continue
            raise WorkdirError(self._held_message(path, what))
        raise WorkdirError(f"could not take the lock {path}: other runs keep taking it")

    def _live_holder(self, path: str, what: str) -> dict | None:
        """The holder of `path` if it runs (or may run: another host); deletes a stale one."""
        data, token = self._store.read(path)
        if data is None:
            return None
        holder = _parse(data)
        same_host = holder.get("host") == socket.gethostname()
        pid = holder.get("pid")
        if not (same_host and isinstance(pid, int)) or _running(pid, holder.get("process_start")):
            return holder
        print(
            f"[gemmascope] warning: taking over the stale lock {path} ({what}) of pid {pid} on "
            "this host, which is no longer running",
            file=sys.stderr,
            flush=True,
        )
        self._store.delete(path, token)
        return None

    def _held_message(self, path: str, what: str) -> str:
        data, _ = self._store.read(path)
        holder = _parse(data) if data else {}
        same_host = holder.get("host") == socket.gethostname()
        check = (
            "that process is still running on this host"
            if same_host
            else f"check on {holder.get('host', 'its host')} whether that run is still going"
        )
        return (
            f"another run is writing {what} in {self.workdir} (lock {path}: {_describe(holder)});"
            f" {check}. Two runs writing the same files would overwrite each other: wait for it "
            "to finish, or use another --workdir. If that run is gone (its host crashed), delete "
            f"the lock and rerun: {_remove_command(path)}"
        )

    def check_free(self, path: str, what: str) -> None:
        """Raises WorkdirError if a live run holds `path` (a lock we did not take)."""
        if self._live_holder(path, what) is not None:
            raise WorkdirError(self._held_message(path, what))

    def release(self) -> None:
        """Deletes every lock this run took that is still ours."""
        for path, payload in list(self._held.items()):
            data, token = self._store.read(path)
            if data == payload:
                self._store.delete(path, token)
            del self._held[path]


def _acquire(locks: _Locks, workdir: str, jobs: list[str] | None) -> None:
    """Takes the workdir lock (jobs None) or the jobs' locks, then checks the other kind."""
    if jobs is None:
        locks.take(workdir_lock_path(workdir), "the whole workdir")
        for name in files.listdir(files.join(workdir, LOCKS_DIR)):
            if name.startswith("job-") and name.endswith(".lock"):
                job = name[len("job-") : -len(".lock")]
                locks.check_free(files.join(workdir, LOCKS_DIR, name), f"job {job}")
        return
    for job in jobs:
        locks.take(job_lock_path(workdir, job), f"job {job}")
    locks.check_free(workdir_lock_path(workdir), "the whole workdir")


def holders(workdir: str) -> dict[str, dict]:
    """{lock path: holder record ({} if unreadable)} of every lock in the workdir."""
    store = _ObjectStore() if files.is_url(workdir) else _LocalStore()
    found = {}
    for name in files.listdir(files.join(workdir, LOCKS_DIR)):
        if name.endswith(".lock"):
            path = files.join(workdir, LOCKS_DIR, name)
            data, _ = store.read(path)
            if data is not None:
                found[path] = _parse(data)
    return found


@contextlib.contextmanager
def hold(workdir: str, jobs: list[str] | None = None):
    """Holds the workdir's lock (jobs None) or the jobs' locks for the block.

    Process 0 takes the locks for every process of a multi-process run.

    Raises:
        WorkdirError: A live run holds a conflicting lock (the message names it).
    """
    import jax

    locks = _Locks(workdir)
    error = None
    if jax.process_index() == 0:
        try:
            _acquire(locks, workdir, jobs)
        except WorkdirError as e:
            locks.release()
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            error = WorkdirError(f"process 0 could not lock {workdir}; see its message")
    if error is not None:
        raise error
    try:
        yield locks
    finally:
        locks.release()
