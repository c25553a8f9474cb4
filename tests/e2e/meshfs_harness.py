"""meshfs_harness — start real meshfs nodes on loopback for the end-to-end tests.

A Node is one meshfs daemon with its own loopback address, root dir (data/games, models,
data/training), state dir, mountpoint, YAML config and log file, all under the test's temp dir.
A Cluster is a set of nodes that know each other: every node's config lists every node of the
cluster (plus any extra, never-started hosts). Each cluster gets its own 127.0.<k>.0/24, so the
data servers of different tests never share an address (or a port).

`Node.start()` runs `meshfs mount -c CONFIG MNT -f` with stdout and stderr going to the node's
log file, and polls (bounded) until the mount is up and the category dirs can be listed.
`Node.finish()` unmounts (fusermount3 -u, else umount -l), waits for the daemon to exit on its
own, then SIGTERM, then SIGKILL, reaps it by PID, and checks the log: a sanitizer report, a
non-zero exit or an `error:` line that the test did not declare with `expect_log()` is a
problem. Node.finish() and Cluster.finish() return the problems; the make_cluster fixture
fails the test with all of them at once.

The mount being ready does not mean the node's first scan of its own files is published: wait
for the files a test needs with wait_until().

This process makes itself a child subreaper, so a daemon that forked into the background
(`meshfs mount` without -f) is re-parented to us and can be reaped by PID too.

Nothing here imports anything outside the standard library.
"""

import ctypes
import itertools
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 8766
DEFAULT_CATEGORIES = {"games": "data/games", "models": "models", "training": "data/training"}

# Seconds; MESHFS_E2E_SLOW scales every harness deadline (e.g. 2 on a slow machine).
SLOW = float(os.environ.get("MESHFS_E2E_SLOW", "1") or 1)
MOUNT_TIMEOUT = 20 * SLOW
UNMOUNT_TIMEOUT = 10 * SLOW
EXIT_GRACE = 15 * SLOW     # after a clean unmount the daemon must exit by itself within this
TERM_TIMEOUT = 10 * SLOW   # after SIGTERM
KILL_TIMEOUT = 5 * SLOW    # after SIGKILL

SANITIZER_PATTERNS = [
    re.compile(p) for p in (
        r"ERROR: AddressSanitizer",
        r"ERROR: LeakSanitizer",
        r"LeakSanitizer",
        r"ERROR: UndefinedBehaviorSanitizer",
        r"runtime error:",
        r"WARNING: ThreadSanitizer",
        r"AddressSanitizer:DEADLYSIGNAL",
    )
]
# "2026-11-29T07:40:01.123Z meshfs[PID] error: message"
ERROR_LINE = re.compile(r"^.*\bmeshfs\[\d+\] error: .*$", re.MULTILINE)

MEANINGFUL_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT}


def meshfs_bin():
    """The binary under test: $MESHFS_BIN, else <repo>/build/meshfs."""
    return os.environ.get("MESHFS_BIN") or str(REPO_ROOT / "build" / "meshfs")


def require_meshfs_bin():
    path = meshfs_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(
            f"meshfs binary not found or not executable: {path} "
            "(build it with ./scripts/build, or set MESHFS_BIN)")
    return path


# ---------------------------------------------------------------------------------------------
# small helpers

class WaitTimeout(AssertionError):
    pass


def wait_until(predicate, timeout=10.0, interval=0.1, message=None,
               ignore=(OSError,)):
    """Calls @predicate until it returns something truthy, and returns that.

    Exceptions of the types in @ignore count as "not yet" (the last one is reported).
    Raises WaitTimeout (an AssertionError) after @timeout seconds, naming @message, the last
    value and the last exception. @timeout is scaled by MESHFS_E2E_SLOW.
    """
    deadline = time.monotonic() + timeout * SLOW
    last_value, last_exc = None, None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
        except ignore as exc:  # noqa: PERF203 - polling
            last_exc = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            detail = f"last value {last_value!r}"
            if last_exc is not None:
                detail += f", last error {last_exc!r}"
            raise WaitTimeout(f"timed out after {timeout * SLOW:g} s waiting for {what} ({detail})")
        time.sleep(interval)


class MeshfsTimeout(AssertionError):
    pass


def run_meshfs(*args, timeout=30.0, env=None, cwd=None, input=None, binary=None):
    """Runs `meshfs ARGS...` and returns a CompletedProcess with text stdout and stderr.

    Output goes through temp files, not pipes, so a daemon that the command leaves behind
    (`mount` without -f) cannot hold the pipes open and hang us. Raises MeshfsTimeout (an
    AssertionError carrying the output so far) if the command runs longer than @timeout.
    @env entries are added to (not substituted for) the environment.
    """
    cmd = [binary or require_meshfs_bin(), *(str(a) for a in args)]
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else
                                subprocess.DEVNULL, stdout=out, stderr=err, env=full_env,
                                cwd=cwd)
        try:
            if input is not None:
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
                proc.stdin.close()
            rc = proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out.seek(0)
            err.seek(0)
            raise MeshfsTimeout(
                f"`{' '.join(cmd)}` did not finish within {timeout * SLOW:g} s\n"
                f"stdout: {out.read().decode(errors='replace')}\n"
                f"stderr: {err.read().decode(errors='replace')}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def write_file(path, data, mtime_ns=None):
    """Writes @data (bytes or str) to @path (parents created), fsyncs, optionally sets mtime."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def random_bytes(size, seed=0):
    import random
    return random.Random(f"meshfs-e2e:{seed}").randbytes(size)


def xxh128(path):
    """`xxh3-128:<32 hex>` of a file, as user.meshfs.hash shows it (computed by xxhsum -H2)."""
    out = subprocess.run(["xxhsum", "-H2", str(path)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return "xxh3-128:" + out.split()[0].lower()


def xxh128_bytes(data):
    """`xxh3-128:<32 hex>` of @data (bytes or str), as xxhsum -H2 prints it."""
    if isinstance(data, str):
        data = data.encode()
    out = subprocess.run(["xxhsum", "-H2", "-"], input=data, check=True, capture_output=True,
                         timeout=120).stdout.decode()
    return "xxh3-128:" + out.split()[0].lower()


def catalog_entries(state_dir, host=None, category=None, path=None):
    """The rows of the entries table of <state_dir>/catalog.db as dicts (hash as lowercase
    hex), filtered by the given columns. Opened read-only, so it works while the daemon runs
    (WAL) and after it died."""
    import sqlite3
    db = Path(state_dir) / "catalog.db"
    if not db.exists():
        return []
    where, args = [], []
    for col, val in (("host", host), ("category", category), ("path", path)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    sql = "SELECT host, category, path, size, hash, seq, deleted FROM entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(sql + " ORDER BY category, path", args).fetchall()
    finally:
        conn.close()
    return [{"host": r[0], "category": r[1], "path": r[2], "size": r[3],
             "hash": bytes(r[4]).hex(), "seq": r[5], "deleted": r[6]} for r in rows]


NOBODY = 65534


def allow_traverse(path):
    """Adds search (x) permission for others to every directory above @path, so that an
    unprivileged user can reach it (pytest makes its temp dirs 0700)."""
    import stat as _stat
    for d in Path(path).resolve().parents:
        st = d.stat()
        if not st.st_mode & _stat.S_IXOTH:
            os.chmod(d, _stat.S_IMODE(st.st_mode) | _stat.S_IXOTH)


def run_as(uid, gid, *argv, timeout=60, env=None, input=None):
    """Runs @argv as @uid:@gid with no supplementary groups (setpriv). Returns a
    CompletedProcess with text stdout and stderr."""
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
           *(str(a) for a in argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOW,
                          env=full_env, input=input, cwd="/")


def gen_sample_data(root, games=(), models=(), npz=(), seed=0):
    """Runs scripts/gen-sample-data into @root. games: [(name, count)], models/npz: [(name,
    size)] with size an int or a string like "2M"."""
    args = [str(REPO_ROOT / "scripts" / "gen-sample-data"), "--root", str(root),
            "--seed", str(seed), "--quiet"]
    for name, count in games:
        args += ["--games", f"{name}:{count}"]
    for name, size in models:
        args += ["--model", f"{name}:{size}"]
    for name, size in npz:
        args += ["--npz", f"{name}:{size}"]
    subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3",
                    *args], check=True, timeout=600)


# ---------------------------------------------------------------------------------------------
# extended attributes

def getxattr(path, name):
    """The value of xattr @name on @path as str (raises OSError, e.g. ENODATA)."""
    return os.getxattr(str(path), name).decode()


def getxattr_bytes(path, name):
    return os.getxattr(str(path), name)


def setxattr(path, name, value):
    os.setxattr(str(path), name, value.encode() if isinstance(value, str) else value)


def xattr_errno(path, name, value=None):
    """0 if reading (or, with @value, writing) @name on @path works, else its errno."""
    try:
        if value is None:
            os.getxattr(str(path), name)
        else:
            setxattr(path, name, value)
        return 0
    except OSError as exc:
        return exc.errno


def meshfs_xattrs(path):
    """{name: value} of every user.meshfs.* xattr that listxattr reports on @path."""
    out = {}
    for name in os.listxattr(str(path)):
        if name.startswith("user.meshfs."):
            out[name] = os.getxattr(str(path), name).decode()
    return out


def health(mnt):
    """user.meshfs.health of the mount root, parsed."""
    return json.loads(getxattr(mnt, "user.meshfs.health"))


def errno_of(fn, *args, **kwargs):
    """Calls fn(*args, **kwargs): returns 0 if it succeeds, else the OSError's errno."""
    try:
        fn(*args, **kwargs)
        return 0
    except OSError as exc:
        return exc.errno


# ---------------------------------------------------------------------------------------------
# mounts and processes

def _unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path):
    """(dev "major:minor", fstype) of the mount whose mount point is @path, or None.

    Reads /proc/self/mountinfo only: never touches the mount, so it cannot hang on a dead or
    stuck FUSE daemon. The last (topmost) entry wins.
    """
    path = os.path.abspath(str(path))
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == path:
                found = (fields[2], right.split()[0] if right else "")
    return found


def is_mounted(path):
    return mount_entry(path) is not None


def abort_fuse_connection(path):
    """Aborts the FUSE connection of the mount at @path through fusectl, if it is available:
    every request pending on it fails at once with ENOTCONN. Returns True if it was done."""
    entry = mount_entry(path)
    if not entry or not entry[1].startswith("fuse"):
        return False
    major, minor = (int(x) for x in entry[0].split(":"))
    conn = Path("/sys/fs/fuse/connections") / str(minor if major == 0 else os.makedev(major,
                                                                                       minor))
    try:
        (conn / "abort").write_text("1")
        return True
    except OSError:
        return False


def detach_mount(path, timeout=UNMOUNT_TIMEOUT):
    """Unmounts @path: fusermount3 -u, else fusermount3 -u -z / umount -l (lazy).
    Returns (clean, message): clean is True when the plain unmount worked."""
    if not is_mounted(path):
        return True, ""
    try:
        r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode == 0 and not is_mounted(path):
            return True, ""
        msg = (r.stderr or r.stdout).strip()
    except subprocess.TimeoutExpired:
        msg = f"fusermount3 -u did not return within {timeout:g} s"
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if not is_mounted(path):
            break
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    return False, msg


_SUBREAPER = False


def become_subreaper():
    """Makes this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER), so a
    daemon that detaches from `meshfs mount` is re-parented here and can be waited for."""
    global _SUBREAPER
    if _SUBREAPER:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _SUBREAPER = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except OSError:
        _SUBREAPER = False
    return _SUBREAPER


def _proc_stat(pid):
    """(state, ppid) of @pid from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def _proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def find_pids(argv_contains):
    """PIDs whose argv contains every string in @argv_contains as a whole argument."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _proc_cmdline(int(entry))
        if argv and all(a in argv for a in argv_contains):
            pids.append(int(entry))
    return pids


def cleanup_leftovers(base_dir):
    """Detaches every mount under @base_dir and ends (by PID: SIGTERM, then SIGKILL) every
    process whose argv names a path under it, e.g. a daemon that a test's own
    `run_meshfs("mount", ...)` left running. Returns a description of each, for the report."""
    base = os.path.abspath(str(base_dir)) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        mounts = [_unescape_mountinfo(line.split()[4]) for line in f]
    for mnt in sorted((m for m in mounts if m.startswith(base)), reverse=True):
        found.append(f"mount {mnt}")
        detach_mount(mnt)
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        argv = _proc_cmdline(int(entry))
        if not argv or not any(a.startswith(base) for a in argv[1:]):
            continue
        if any(n.proc and n.proc.pid == int(entry) for n in live_nodes()):
            continue
        proc = Proc(int(entry))
        found.append(f"process {entry}: {' '.join(argv)}")
        proc.signal(signal.SIGTERM)
        if proc.wait(TERM_TIMEOUT) is None:
            proc.signal(signal.SIGKILL)
            proc.wait(KILL_TIMEOUT)
    return found


class Proc:
    """A daemon process we wait for by PID: our Popen child, or an adopted orphan."""

    def __init__(self, pid, popen=None):
        self.pid = pid
        self.popen = popen
        self.returncode = None

    def poll(self):
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.poll()
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (no subreaper): all we can see is whether it still exists, not how
            # it ended; a vanished process counts as exit 0.
            st = _proc_stat(self.pid)
            if st is None or st[0] == "Z":
                self.returncode = 0
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return self.returncode

    def signal(self, sig):
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


# Every node that has been started and not yet finished: the watchdog and the end-of-session
# cleanup go through it.
_LIVE = set()
_LIVE_LOCK = threading.Lock()


def live_nodes():
    with _LIVE_LOCK:
        return list(_LIVE)


def cleanup_all():
    """Stops every node still running (end of session, or after an interrupt)."""
    problems = []
    for node in live_nodes():
        problems += node.finish(check=False)
    reap_orphans()
    return problems


# ---------------------------------------------------------------------------------------------
# config

def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar
    raise TypeError(f"cannot write {type(v).__name__} to YAML")


def _yaml_key(k):
    k = str(k)
    return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", k) else json.dumps(k)


def _yaml_lines(obj, indent):
    sp = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{sp}{_yaml_key(k)}:")
                lines += _yaml_lines(v, indent + 2)
            elif isinstance(v, dict):
                lines.append(f"{sp}{_yaml_key(k)}: {{}}")
            elif isinstance(v, list):
                lines.append(f"{sp}{_yaml_key(k)}: []")
            else:
                lines.append(f"{sp}{_yaml_key(k)}: {_yaml_scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml_lines(item, indent + 2)
                sub[0] = f"{sp}- " + sub[0][indent + 2:]
                lines += sub
            elif isinstance(item, (dict, list)):
                lines.append(f"{sp}- " + ("{}" if isinstance(item, dict) else "[]"))
            else:
                lines.append(f"{sp}- {_yaml_scalar(item)}")
    else:
        lines.append(f"{sp}{_yaml_scalar(obj)}")
    return lines


def to_yaml(obj):
    """Block-style YAML for dicts/lists/scalars (strings always double-quoted)."""
    return "\n".join(_yaml_lines(obj, 0)) + "\n"


def deep_merge(base, extra):
    """A copy of @base with @extra merged in (dicts recursively; None in @extra deletes)."""
    out = dict(base)
    for k, v in (extra or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


_SUBNETS = itertools.count()


def _port_free(address, port=DEFAULT_PORT):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def next_subnet():
    """A third octet for a new cluster's 127.0.<k>.0/24; 127.0.0.x is left to humans (demo).
    Subnets whose first addresses already have the data-server port taken (another test run or
    a benchmark on this machine) are skipped, at most one full round."""
    for _ in range(240):
        k = 10 + next(_SUBNETS) % 240
        if all(_port_free(f"127.0.{k}.{n}") for n in (2, 3, 4)):
            return k
    return k


# ---------------------------------------------------------------------------------------------
# nodes

class Node:
    """One meshfs node: dirs, config, daemon process, log.

    Attributes: name, address, port, dir, root, state_dir, mnt, config_path, log_path,
    categories ({category: path under root}), cluster (set by Cluster; None alone).
    """

    def __init__(self, base_dir, name, address, port=DEFAULT_PORT, *, config=None, host=None,
                 categories=None):
        self.name = name
        self.address = address
        self.port = port
        self.dir = Path(base_dir) / name
        self.root = self.dir / "root"
        self.state_dir = self.dir / "state"
        self.mnt = self.dir / "mnt"
        self.config_path = self.dir / "meshfs.yaml"
        self.log_path = self.dir / "meshfs.log"
        self.categories = dict(categories or DEFAULT_CATEGORIES)
        self.config_extra = dict(config or {})   # merged into this node's whole config
        self.host_extra = dict(host or {})       # merged into this node's hosts entry
        self.cluster = None
        self.proc = None
        self.mode = None                         # "mount" | "mount-bg" | "serve"
        self._expected_logs = []
        self._expected_exit = {0}
        self._problems = []
        self._deliberate_kill = False
        self._start_failed = False
        self._stopped = False
        self.starts = 0
        for d in (self.root, self.state_dir, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        for sub in self.categories.values():
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        sock = self.state_dir / "control.sock"
        if len(str(sock)) >= 108:
            raise AssertionError(f"{sock} is too long for a unix socket path: use a shorter "
                                 "base dir or node name")

    def __repr__(self):
        return f"<Node {self.name} {self.address}:{self.port} pid={self.pid}>"

    # -- paths --------------------------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def control_sock(self):
        return self.state_dir / "control.sock"

    def local(self, category, rel=""):
        """Path of @rel in this node's own (backing) dir of @category."""
        return self.root / self.categories[category] / rel

    def path(self, rel=""):
        """Path of @rel under the mountpoint ("games/x.db")."""
        return self.mnt / rel

    def host_path(self, host, rel=""):
        """Path under the mount's /.hosts/<host>/ view."""
        return self.mnt / ".hosts" / (host.name if isinstance(host, Node) else host) / rel

    @property
    def url(self):
        return f"http://{self.address}:{self.port}"

    # -- config -------------------------------------------------------------------------------

    def host_entry(self):
        entry = {"address": self.address, "data_server_port": self.port,
                 "root": str(self.root)}
        return deep_merge(entry, self.host_extra)

    def config_dict(self):
        hosts = {}
        extra_hosts = {}
        cluster_config = {}
        if self.cluster is not None:
            for n in self.cluster.nodes:
                hosts[n.name] = n.host_entry()
            extra_hosts = self.cluster.extra_hosts
            cluster_config = self.cluster.config
        else:
            hosts[self.name] = self.host_entry()
        hosts.update(extra_hosts)
        cfg = {
            "node": self.name,
            "state_dir": str(self.state_dir),
            "publish_quiet_seconds": 0.5,
        }
        if self.categories != DEFAULT_CATEGORIES:
            cfg["categories"] = dict(self.categories)
        cfg = deep_merge(cfg, cluster_config)
        cfg = deep_merge(cfg, self.config_extra)
        cfg["hosts"] = deep_merge(hosts, cfg.get("hosts") if isinstance(cfg.get("hosts"), dict)
                                  else {})
        return cfg

    def write_config(self):
        self.config_path.write_text(to_yaml(self.config_dict()))
        return self.config_path

    # -- expectations -------------------------------------------------------------------------

    def expect_log(self, regex):
        """Declares that `error:` lines matching @regex (re.search) are expected in the log."""
        self._expected_logs.append(re.compile(regex))

    def expect_exit(self, *codes):
        """Declares the daemon's exit codes that are not a problem (default: 0 only)."""
        self._expected_exit = set(codes)

    # -- running ------------------------------------------------------------------------------

    def _env(self, background=False):
        env = dict(os.environ)
        if background:
            # A detached daemon's stderr is /dev/null: send sanitizer reports to files.
            for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
                prefix = env.get(var, "")
                env[var] = (prefix + ":" if prefix else "") + \
                    f"log_path={self.dir / 'sanitizer'}"
        return env

    def _logfile(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by start()
        f.write(f"--- harness: start #{self.starts + 1} of {self.name} at "
                f"{time.strftime('%H:%M:%S')} ---\n".encode())
        f.flush()
        return f

    def start(self, *, wait=True, timeout=MOUNT_TIMEOUT, args=(), mode="mount",
              detach_stale=True):
        """Starts the daemon. mode "mount": `meshfs mount -c CFG MNT -f` (foreground, ours);
        "mount-bg": `meshfs mount -c CFG MNT` which must return once the mount is ready;
        "serve": `meshfs serve -c CFG`. With @wait, returns once ready (see wait_ready).
        A mount still at MNT (say a killed daemon's) is detached first, unless @detach_stale
        is False: then meshfs itself has to deal with it."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(f"{self.name} is already running (pid {self.pid})")
        binary = require_meshfs_bin()
        self.write_config()
        if detach_stale and is_mounted(self.mnt):
            detach_mount(self.mnt)
        self.mode = mode
        self._deliberate_kill = False
        self._start_failed = False
        self._stopped = False
        with _LIVE_LOCK:
            _LIVE.add(self)
        log = self._logfile()
        self.starts += 1
        try:
            if mode == "mount":
                cmd = [binary, "mount", "-c", str(self.config_path), str(self.mnt), "-f",
                       *map(str, args)]
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env())
                self.proc = Proc(popen.pid, popen)
            elif mode == "serve":
                cmd = [binary, "serve", "-c", str(self.config_path), *map(str, args)]
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env())
                self.proc = Proc(popen.pid, popen)
            elif mode == "mount-bg":
                become_subreaper()
                cmd = [binary, "mount", "-c", str(self.config_path), str(self.mnt),
                       *map(str, args)]
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env(True))
                try:
                    rc = popen.wait(timeout=timeout * SLOW)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
                    self._start_failed = True
                    raise AssertionError(
                        f"`{' '.join(cmd)}` did not return within {timeout * SLOW:g} s\n"
                        + self.log_tail()) from None
                if rc != 0:
                    self._start_failed = True
                    raise AssertionError(f"`{' '.join(cmd)}` exited {rc}\n" + self.log_tail())
                pids = [p for p in find_pids([str(self.config_path), str(self.mnt)])
                        if p != popen.pid]
                if len(pids) != 1:
                    raise AssertionError(f"{self.name}: expected one detached daemon for "
                                         f"{self.config_path}, found pids {pids}")
                self.proc = Proc(pids[0])
            else:
                raise ValueError(f"unknown mode {mode!r}")
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=MOUNT_TIMEOUT):
        """Polls until the daemon is ready: for a mount, the mountpoint is in mountinfo and
        every category dir lists; for serve, the data server accepts TCP connections. Raises
        with the log tail if the daemon exits or @timeout passes."""
        deadline = time.monotonic() + timeout * SLOW
        last = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                # Reported here, with the log tail; finish() does not report it again.
                self._start_failed = True
                raise AssertionError(f"{self.name}: meshfs exited with {rc} before it was "
                                     f"ready\n" + self.log_tail())
            try:
                if self.mode == "serve":
                    if self.port_open():
                        return
                elif is_mounted(self.mnt):
                    for cat in self.categories:
                        os.listdir(self.mnt / cat)
                    return
                else:
                    last = "not mounted yet"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: not ready after {timeout * SLOW:g} s "
                                     f"({last})\n" + self.log_tail())
            time.sleep(0.05)

    def port_open(self):
        import socket
        try:
            with socket.create_connection((self.address, self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_listening(self, timeout=10):
        wait_until(self.port_open, timeout, message=f"{self.name}'s data server on {self.url}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=EXIT_GRACE):
        """Stops the daemon the way a user does (unmount; for serve, SIGTERM), escalating to
        SIGTERM and SIGKILL if it does not exit, and reaps it. Returns its exit code. Problems
        (it had to be signalled, an unexpected exit code) are kept for finish()."""
        if self.proc is None:
            if is_mounted(self.mnt):
                detach_mount(self.mnt)
            return None
        if self._stopped:
            return self.proc.returncode
        unclean = False
        if self.proc.poll() is None:
            if self.mode in ("mount", "mount-bg"):
                clean, msg = detach_mount(self.mnt)
                if not clean:
                    # Usually the test still holds a file or its cwd in the mount. The daemon
                    # then exits however it can, so its exit code is not held against it.
                    unclean = True
                    self._problems.append(
                        f"{self.name}: could not unmount {self.mnt} cleanly ({msg}): is a file "
                        "or a cwd still open in it? Detached it lazily and sent SIGTERM")
                    self._note_log(f"harness: clean unmount failed ({msg}); detached lazily")
                    self.proc.signal(signal.SIGTERM)
                if self.proc.wait(timeout * SLOW) is None:
                    self._problems.append(
                        f"{self.name}: still running {timeout * SLOW:g} s after its mount was "
                        "unmounted; sending SIGTERM")
                    self.proc.signal(signal.SIGTERM)
            else:
                self.proc.signal(signal.SIGTERM)
            if self.proc.wait(TERM_TIMEOUT) is None:
                self._problems.append(f"{self.name}: did not exit within {TERM_TIMEOUT:g} s of "
                                      "SIGTERM; killed")
                self._deliberate_kill = True
                self.proc.signal(signal.SIGKILL)
                if self.proc.wait(KILL_TIMEOUT) is None:
                    self._problems.append(f"{self.name}: pid {self.pid} survived SIGKILL")
        rc = self.proc.returncode
        if is_mounted(self.mnt):
            detach_mount(self.mnt)
        if rc is not None and rc not in self._expected_exit and not unclean and \
                not self._start_failed and not (self._deliberate_kill and rc < 0):
            self._problems.append(f"{self.name}: meshfs {self.mode} exited with {rc} "
                                  f"(expected {sorted(self._expected_exit)})")
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._stopped = True
        return rc

    def kill(self, sig=signal.SIGKILL, detach=True):
        """Simulates a crash: sends @sig, reaps the daemon and (with @detach) detaches the
        dead mount; without, the stale mount stays for the test to look at (stop() and
        finish() still detach it). The resulting exit status is not reported as a problem.
        Returns it."""
        if self.proc is None:
            return None
        self._deliberate_kill = True
        self.proc.signal(sig)
        rc = self.proc.wait(KILL_TIMEOUT if sig == signal.SIGKILL else TERM_TIMEOUT)
        if rc is None:
            self.proc.signal(signal.SIGKILL)
            rc = self.proc.wait(KILL_TIMEOUT)
        if detach and is_mounted(self.mnt):
            detach_mount(self.mnt)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        return rc

    def restart(self, **kwargs):
        self.stop()
        return self.start(**kwargs)

    def watchdog_kill(self):
        """Called from the watchdog thread: unblocks everything waiting on this node."""
        self._deliberate_kill = True
        if self.mode in ("mount", "mount-bg"):
            abort_fuse_connection(self.mnt)
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)

    # -- logs ---------------------------------------------------------------------------------

    def _note_log(self, text):
        with open(self.log_path, "ab") as f:
            f.write(f"--- {text} ---\n".encode())

    def log_text(self):
        """The node's log: the daemon's stdout/stderr, plus any sanitizer log files and *.log
        files in the state dir."""
        parts = []
        try:
            parts.append(self.log_path.read_bytes().decode(errors="replace"))
        except FileNotFoundError:
            pass
        extra = sorted(self.dir.glob("sanitizer*")) + sorted(self.state_dir.glob("*.log"))
        for p in extra:
            try:
                parts.append(f"--- {p} ---\n" + p.read_bytes().decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def log_tail(self, lines=40):
        text = self.log_text().splitlines()
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + \
            "\n".join(text[-lines:])

    def log_problems(self):
        """Sanitizer reports and unexpected `error:` lines in the log."""
        text = self.log_text()
        problems = []
        for pat in SANITIZER_PATTERNS:
            m = pat.search(text)
            if m:
                start = text.rfind("\n", 0, m.start()) + 1
                problems.append(f"{self.name}: sanitizer report in the log:\n"
                                + text[start:start + 4000])
                break
        unexpected = [line for line in ERROR_LINE.findall(text)
                      if not any(p.search(line) for p in self._expected_logs)]
        if unexpected:
            problems.append(f"{self.name}: unexpected error lines in {self.log_path}:\n  "
                            + "\n  ".join(unexpected[:20]))
        return problems

    def finish(self, check=True):
        """Stops the daemon and returns every problem seen (empty list = all good)."""
        try:
            self.stop()
        except Exception as exc:  # teardown must go on for the other nodes
            self._problems.append(f"{self.name}: stopping failed: {exc!r}")
        problems = list(self._problems)
        self._problems.clear()
        if check and self.starts:
            log_problems = self.log_problems()
            if self._start_failed:  # its error lines were shown when the start failed
                log_problems = [p for p in log_problems if "sanitizer" in p]
            problems += log_problems
        if problems and check:
            problems.append(self.log_tail())
        return problems

    # -- conveniences -------------------------------------------------------------------------

    def meshfs(self, *args, **kwargs):
        """run_meshfs(*args, "-c", <this node's config>)."""
        return run_meshfs(*args, "-c", self.config_path, **kwargs)

    def status_json(self, timeout=30):
        r = self.meshfs("status", "--json", timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"meshfs status --json exited {r.returncode}: {r.stderr}")
        return json.loads(r.stdout)

    def health(self):
        return health(self.mnt)


def reap_orphans():
    """Reaps zombie meshfs daemons that were adopted (as subreaper) but that no Node tracks,
    e.g. one left by a test's own `run_meshfs("mount", ...)`. Only for the end of the
    session: it must not steal the exit status of a Popen that someone still waits for."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        st = _proc_stat(pid)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if st and st[1] == me and st[0] == "Z" and comm == "meshfs":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


class Cluster:
    """Nodes that know each other. cluster["name"] or cluster[0] gives a node.

    @config is merged into every node's config; @nodes maps a node name to a dict with
    optional "config" (merged into its config) and "host" (merged into its hosts entry);
    @extra_hosts adds hosts entries for hosts that are never started.
    """

    def __init__(self, base_dir, names, *, port=DEFAULT_PORT, config=None, nodes=None,
                 extra_hosts=None, categories=None):
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        k = next_subnet()
        self.base_dir = Path(base_dir)
        self.config = dict(config or {})
        self.extra_hosts = dict(extra_hosts or {})
        per = nodes or {}
        self.nodes = []
        for i, name in enumerate(names):
            opts = per.get(name, {})
            n = Node(self.base_dir, name, f"127.0.{k}.{i + 2}", port,
                     config=opts.get("config"), host=opts.get("host"),
                     categories=categories)
            n.cluster = self
            self.nodes.append(n)
        self.subnet = f"127.0.{k}.0/24"

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.nodes[key]
        for n in self.nodes:
            if n.name == key:
                return n
        raise KeyError(key)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    def write_configs(self):
        for n in self.nodes:
            n.write_config()

    def start(self, *names, timeout=MOUNT_TIMEOUT, mode="mount"):
        """Starts the named nodes (all by default) and waits until each is ready."""
        chosen = [self[n] for n in names] if names else self.nodes
        self.write_configs()
        for n in chosen:
            n.start(wait=False, timeout=timeout, mode=mode)
        for n in chosen:
            n.wait_ready(timeout)
        return self

    def finish(self, check=True):
        problems = []
        for n in reversed(self.nodes):
            problems += n.finish(check=check)
        return problems


class Watchdog:
    """Bounds one test: after @seconds, kills every live node (aborting its FUSE connection
    first), which turns a test blocked on a hung mount into a failing one."""

    def __init__(self, seconds):
        self.seconds = seconds * SLOW
        self.fired = False
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True

    def _fire(self):
        self.fired = True
        for node in live_nodes():
            try:
                node.watchdog_kill()
            except Exception:  # noqa: BLE001 - best effort from a timer thread
                pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


__all__ = [
    "DEFAULT_CATEGORIES", "DEFAULT_PORT", "REPO_ROOT", "Cluster", "MeshfsTimeout", "Node",
    "WaitTimeout", "Watchdog", "abort_fuse_connection", "become_subreaper", "cleanup_all",
    "cleanup_leftovers", "find_pids",
    "deep_merge", "detach_mount", "errno_of", "gen_sample_data", "getxattr", "getxattr_bytes",
    "health", "is_mounted", "meshfs_bin", "meshfs_xattrs", "mount_entry", "random_bytes",
    "require_meshfs_bin", "run_meshfs", "setxattr", "to_yaml", "wait_until", "write_file",
    "xattr_errno", "xxh128",
    "NOBODY", "allow_traverse", "catalog_entries", "run_as", "xxh128_bytes",
]