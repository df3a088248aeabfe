"""Files, the one way lmforge writes them: atomic file and folder writes, JSON / JSONL, the user
cache folder, an inter-process lock, and whether a recorded process is still alive.

Every write goes to a temporary name beside the target and is renamed over it, so a crash (or a
full disk) leaves either the old file or the new one, never half of one. Imports nothing of
lmforge's: every other module may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from .errors import LmforgeError

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------------- atomic writes
def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: PathLike, data: Any) -> Path:
    """Write JSON atomically (temporary file + rename)."""
    return write_text(path, json.dumps(data, indent=1, default=str, allow_nan=True))


def read_json(path: PathLike, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return atomic_write(path, write)


def atomic_dir(final: PathLike, write: Callable[[Path], None], complete: Optional[Callable[[Path], None]] = None,
               ) -> Path:
    """Call ``write(tmp_dir)``, then ``complete(tmp_dir)`` (e.g. a completeness marker), fsync, and rename
    to ``final``. On any failure the temporary folder is removed and ``final`` (if it existed) is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write(tmp)
        if complete is not None:
            complete(tmp)
        fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_stale_temporaries(folder: PathLike) -> list[str]:
    """Clean up after atomic writes that a dead process left in `folder`: `.tmp-NAME-PID` folders or files are
    removed; an `.old-NAME-PID` whose NAME is missing (killed between the two renames) is put back. Entries of
    live processes are left alone. Returns what was done, for the log."""
    done = []
    folder = Path(folder)
    if not folder.is_dir():
        return done
    for entry in folder.iterdir():
        m = re.fullmatch(r"\.(tmp|old)-(.+)-(\d+)", entry.name)
        if not m or pid_alive(int(m.group(3))):
            continue
        kind, name = m.group(1), m.group(2)
        if kind == "old" and not (folder / name).exists():
            os.replace(entry, folder / name)
            done.append(f"restored {folder / name} from {entry.name}")
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}")
        else:
            entry.unlink(missing_ok=True)
            done.append(f"removed {entry}")
    return done


# ----------------------------------------------------------------------------------- output paths
def _writable_ancestor(p: Path, what: str) -> None:
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise LmforgeError(f"{what} {p} is under {anc}, which is a file", "choose a path in a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise LmforgeError(f"{what} {p}: cannot write in {anc} (permission denied)", "choose a writable place")
    # os.access says yes to root on /proc, /sys and read-only mounts: make (and remove) a folder to be sure
    try:
        probe = Path(tempfile.mkdtemp(prefix=".lmforge-write-probe-", dir=anc))
        probe.rmdir()
    except OSError as e:
        raise LmforgeError(f"{what} {p}: cannot write in {anc} ({e.strerror or e})",
                           "choose a writable place on a normal disk (not /proc, /sys or a read-only mount)") from None


def check_output_file(path: PathLike, what: str = "output file", replace: bool = True) -> Path:
    """Before any work: `path` can be written as a file (not a folder, under a writable folder; an existing
    file only when `replace`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise LmforgeError(f"{what} {p} is a folder, not a file", f"give a file name, e.g. {p / 'out.jsonl'}")
    if p.exists() and not p.is_file():
        raise LmforgeError(f"{what} {p} exists and is not a regular file", "choose another path")
    if p.exists() and not replace:
        raise LmforgeError(f"{what} {p} exists", "choose another path, or remove it first")
    _writable_ancestor(p, what)
    return p


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Before any work: `path` can be (or is) a folder lmforge writes into; a file there is never replaced."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise LmforgeError(f"{what} {p} is a file, not a folder", "choose a folder path (lmforge never replaces a file)")
    _writable_ancestor(p, what)
    return p


# ----------------------------------------------------------------------------------- JSON lines
class JsonLog:
    """An append-only JSON-lines file (log.jsonl): each record flushed at once, so a crash loses nothing."""

    def __init__(self, path: PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        # Called with every record written (experiment trackers, sweep pruning); main process only.
        self.listeners: list = []

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:  # a line cut off when the run was killed: dropped (it will be logged again)
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                keep.append(line)
        write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
        for listener in self.listeners:
            listener(record)

    def read(self) -> list[dict]:
        """The records; a torn last line (a crash mid-write) is dropped, any other bad line is an error
        that names the file and the line."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if i == last:
                    break  # cut off while being written: the records before it stand
                raise LmforgeError(f"{self.path} line {i + 1} is not valid JSON: {line[:80]!r}",
                                   "remove or fix that line (a file edited by hand?)") from None
            if isinstance(rec, dict):
                out.append(rec)
        return out


# ----------------------------------------------------------------------------------- cache, lock
def cache_dir() -> Path:
    """lmforge's user cache (converted models, tokenized data, the FLOP/s probe)."""
    root = os.environ.get("LMFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmforge")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def reuse_cache() -> bool:
    """May a cache entry built earlier be reused? Not with LMFORGE_NO_CACHE=1: every cache (tokenized data,
    streamed token caches, trained tokenizers, DPO reference log-probs) is then rebuilt, and the new entry
    replaces the old one. The one rule all four caches follow."""
    return not os.environ.get("LMFORGE_NO_CACHE")


# Hits and misses of each on-disk cache in this process (tests assert on them): the tokenized data, the
# streamed token caches, trained tokenizers and DPO reference log-probs.
CACHE_STATS: dict[str, dict] = {}


def cache_stats(cache: str) -> dict:
    """The hit/miss counters of one cache (the same dict for the life of the process)."""
    return CACHE_STATS.setdefault(cache, {"hits": 0, "misses": 0})


CACHE_NOTE_S = 5.0  # cache builds that take at least this long are logged with their time


@dataclass
class CacheSlot:
    """One entry of an on-disk cache, held under its lock: `hit` says whether `path` may be loaded as it is;
    `partial` is where a build writes before `publish` renames it into place."""
    cache: str
    path: Path
    hit: bool

    @property
    def partial(self) -> Path:
        return self.path.parent / f".partial-{self.path.name}"

    def miss(self) -> None:
        """The entry could not be loaded after all (damaged): build it again."""
        if self.hit:
            self.hit = False
            stats = cache_stats(self.cache)
            stats["hits"] -= 1
            stats["misses"] += 1
        if self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.exists():
            self.path.unlink()

    def publish(self) -> Path:
        """Move the finished build from `partial` into place (an old entry is replaced)."""
        if self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.partial, self.path)
        return self.path


@contextlib.contextmanager
def cache_slot(cache: str, name: str, ready: Callable[[Path], bool]) -> Iterator[CacheSlot]:
    """The one protocol of lmforge's caches: the entry cache_dir()/cache/name is looked at and built under a
    lock file (the processes of a multi-process run build it once; the others wait, then load it), reused only
    when `ready(path)` and `reuse_cache()` (LMFORGE_NO_CACHE) allow, built into `slot.partial` and renamed
    into place by `slot.publish()`, so a crash never leaves a half-written entry; hits and misses counted.

        with cache_slot("data", key, lambda p: (p / "dataset_info.json").exists()) as slot:
            if slot.hit:
                return load(slot.path)
            build(slot.partial); slot.publish()
    """
    root = cache_dir() / cache
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with locked(root / f".lock-{name}"):
        hit = reuse_cache() and ready(path)
        cache_stats(cache)["hits" if hit else "misses"] += 1
        slot = CacheSlot(cache, path, hit)
        t0 = time.perf_counter()
        if not hit:
            logging.getLogger("lmforge").info("%s cache: building an entry (first run with this data and these "
                                              "settings; later runs reuse it)", cache)
        yield slot
        took = time.perf_counter() - t0
        # a build is a phase a user waits through: say what it was and how long it took (once it takes a while)
        if not slot.hit and took >= CACHE_NOTE_S:
            logging.getLogger("lmforge").info("%s cache: built in %.0f s", cache, took)


@contextlib.contextmanager
def locked(lock_file: PathLike) -> Iterator[None]:
    """An exclusive lock on `lock_file` (created if needed) between processes, while inside."""
    with open(lock_file, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------- processes
def pid_alive(pid: int) -> bool:
    """Is `pid` a live process of a training run (python, lmforge, accelerate, torchrun)? A reused pid
    of an unrelated program is not; our own pid is not (a run folder we are about to replace)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return any(name in cmd for name in ("python", "lmforge", "accelerate", "torchrun"))
    except OSError:
        return True


def recorded_process_alive(manifest: dict) -> Optional[bool]:
    """For a manifest of status 'running': True if its process still runs, False if it is gone (the run
    crashed), None when it cannot be told (another host, no pid)."""
    pid = manifest.get("pid")
    if not isinstance(pid, int) or manifest.get("host") not in (None, platform.node()):
        return None
    if pid == os.getpid():
        return True
    return pid_alive(pid)
