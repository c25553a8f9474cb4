"""Bad input and faults: each gives a clear one-line error and a non-zero exit, and leaves
nothing mounted or running; a crashed daemon's mount is cleaned up by the next mount, with a
consistent catalog and no needless re-hashing; an unreadable file is skipped, not fatal.
"""

import errno
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

import meshfs_harness as h
from meshfs_harness import errno_of, run_meshfs, wait_until

PUBLISH_WITHIN = 5
MiB = 1 << 20

MODES = {"background": [], "foreground": ["-f"]}


# --- helpers ------------------------------------------------------------------------------------

def error_lines(stderr):
    """The lines of @stderr that report an error: every non-empty line for the background
    mount (its stderr is only for the user), the log's `error:` lines for -f (its stderr is
    the daemon log)."""
    return [line for line in stderr.splitlines()
            if line.strip() and ("meshfs[" not in line or " error: " in line)]


def assert_one_line_error(r, *must_contain):
    assert r.returncode != 0, (r.returncode, r.stdout, r.stderr)
    lines = error_lines(r.stderr)
    assert len(lines) == 1, f"expected one error line, got:\n{r.stderr}"
    for text in must_contain:
        assert str(text) in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def assert_no_sanitizer_report(*texts):
    for text in texts:
        for pat in h.SANITIZER_PATTERNS:
            assert not pat.search(text), f"sanitizer report:\n{text}"


def assert_nothing_left(config_path, *mountpoints):
    for mnt in mountpoints:
        assert not h.is_mounted(mnt), f"{mnt} is still mounted"
    wait_until(lambda: not h.find_pids([str(config_path)]), 10,
               message=f"no meshfs process left running with {config_path}")


def mount_count(path):
    """How many mounts sit on mount point @path (mountinfo only, never touches the mount)."""
    path = os.path.abspath(str(path))
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if h._unescape_mountinfo(line.split()[4]) == path)


def integrity(state_dir):
    conn = sqlite3.connect(f"file:{state_dir / 'catalog.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def state_log(node):
    p = node.state_dir / "meshfs.log"
    return p.read_text(errors="replace") if p.exists() else ""


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", sorted(MODES))
def test_mountpoint_that_is_a_file(make_cluster, mode):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    node.write_config()
    target = node.dir / "not-a-dir"
    target.write_bytes(b"I am a file")
    r = node.meshfs("mount", target, *MODES[mode])
    line = assert_one_line_error(r, target)
    assert "not a directory" in line.lower(), line
    assert target.read_bytes() == b"I am a file"
    assert_nothing_left(node.config_path, target, node.mnt)
    assert_no_sanitizer_report(r.stderr, state_log(node))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_state_dir_not_writable(make_cluster, mode):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    node.write_config()
    os.chmod(node.state_dir, 0o755)     # root's, not writable for uid 65534
    os.chmod(node.config_path, 0o644)
    h.allow_traverse(node.config_path)
    r = h.run_as(h.NOBODY, h.NOBODY, h.meshfs_bin(), "mount", "-c", node.config_path,
                 node.mnt, *MODES[mode])
    assert_one_line_error(r, node.state_dir)
    assert os.listdir(node.state_dir) == [], "nothing is written to a state dir we cannot use"
    assert_nothing_left(node.config_path, node.mnt)
    assert_no_sanitizer_report(r.stderr)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_data_server_port_in_use(make_cluster, mode):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    node.write_config()
    # The refused start logs its error to the state dir's log: expected here.
    node.expect_log(r"cannot listen on")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((node.address, node.port))
        squatter.listen(1)
        r = node.meshfs("mount", node.mnt, *MODES[mode])
        assert_one_line_error(r, f"{node.address}:{node.port}")
        assert_nothing_left(node.config_path, node.mnt)
    assert_no_sanitizer_report(r.stderr, state_log(node))
    # With the port free again the same config mounts.
    node.start()
    assert node.port_open()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_second_daemon_on_the_same_state_dir(make_cluster, mode):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    h.write_file(node.local("games", "a.db"), b"still served")
    cluster.start()
    # The refused daemon may log to the shared state dir's log: expected here.
    node.expect_log(r"another meshfs daemon|state dir")
    second_cfg = node.dir / "second.yaml"
    shutil.copy(node.config_path, second_cfg)
    second_mnt = node.dir / "mnt2"
    second_mnt.mkdir()

    r = run_meshfs("mount", "-c", second_cfg, second_mnt, *MODES[mode])
    assert_one_line_error(r, node.state_dir, str(node.pid))
    assert_nothing_left(second_cfg, second_mnt)
    assert_no_sanitizer_report(r.stderr)
    # The first daemon is unharmed.
    assert node.running()
    wait_until(node.path("games/a.db").exists, PUBLISH_WITHIN)
    assert node.path("games/a.db").read_bytes() == b"still served"
    assert node.status_json()["node"] == "n1"


# --- unreadable data ----------------------------------------------------------------------------

ROOT_PROOF_UNREADABLE = "/proc/sys/vm/drop_caches"   # mode 0200: open(O_RDONLY) is EACCES
#                                                      even for root (sysctl checks the mode)


def test_unreadable_file_is_skipped_logged_and_reported(make_cluster):
    """Root reads every ordinary file, so the unreadable file is a bind mount of a sysctl
    file that refuses reads to everyone, root included."""
    if errno_of(open, ROOT_PROOF_UNREADABLE, "rb") != errno.EACCES:
        pytest.skip(f"{ROOT_PROOF_UNREADABLE} is readable here: no root-proof unreadable file")
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    good = h.random_bytes(20000, seed="good")
    h.write_file(node.local("games", "good.db"), good)
    locked = node.local("games", "locked.db")
    h.write_file(locked, b"")
    subprocess.run(["mount", "--bind", ROOT_PROOF_UNREADABLE, str(locked)], check=True,
                   timeout=30)
    try:
        assert errno_of(open, locked, "rb") == errno.EACCES
        cluster.start()
        wait_until(lambda: node.health()["indexer"]["last_scan_done"] > 0, PUBLISH_WITHIN * 2,
                   message="first full scan done")
        health = node.health()
        assert health["indexer"]["unreadable"] >= 1, health
        assert "locked.db" in health["indexer"]["last_unreadable"], health
        # The rest is served as usual.
        wait_until(node.path("games/good.db").exists, PUBLISH_WITHIN)
        assert node.path("games/good.db").read_bytes() == good
        rows = h.catalog_entries(node.state_dir, category="games", path="locked.db")
        assert not [r for r in rows if not r["deleted"]], rows
        assert node.running()
        # Logged as a warning that names the file.
        wait_until(lambda: [line for line in node.log_text().splitlines()
                            if "locked.db" in line and " warning: " in line], 5,
                   message="a warning about locked.db in the log")
    finally:
        subprocess.run(["umount", str(locked)], timeout=30)


# --- crash and restart --------------------------------------------------------------------------

CRASH_FILES = {"games/a.db": 70000, "games/sub/b.db": 4 * MiB + 3, "models/m.pth": 10,
               "training/t.npz": 123}


def _start_with_files(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    node.data = {}
    for rel, size in CRASH_FILES.items():
        cat, _, path = rel.partition("/")
        node.data[rel] = h.random_bytes(size, seed=rel)
        h.write_file(node.local(cat, path), node.data[rel])
    cluster.start()
    wait_until(lambda: node.health()["indexer"]["files"] == len(CRASH_FILES),
               PUBLISH_WITHIN * 2, message="every file published")
    assert node.health()["indexer"]["hashed_files"] == len(CRASH_FILES)
    return node


def _crash(node, detach):
    pid = node.pid
    rc = node.kill(signal.SIGKILL, detach=detach)
    assert rc == -signal.SIGKILL, rc
    assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} not reaped"


def _wait_first_scan(node):
    wait_until(lambda: node.health()["indexer"]["last_scan_done"] > 0, PUBLISH_WITHIN * 2,
               message="first full scan after the restart")


@pytest.mark.meshfs_timeout(120)
@pytest.mark.parametrize("mode", ["mount", "mount-bg"])
def test_kill9_leaves_a_stale_mount_that_the_next_mount_cleans_up(make_cluster, mode):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    h.write_file(node.local("games", "a.db"), b"game bytes")
    cluster.start(mode=mode)
    wait_until(node.path("games/a.db").exists, PUBLISH_WITHIN)

    _crash(node, detach=False)
    assert h.is_mounted(node.mnt), "the dead daemon's mount is still in the mount table"
    # (stat of the root itself may still be answered from the kernel's attribute cache.)
    assert errno_of(os.listdir, node.mnt) == errno.ENOTCONN
    assert errno_of(os.listdir, node.path("games")) == errno.ENOTCONN
    assert errno_of(open, node.path("games/a.db"), "rb") == errno.ENOTCONN

    # Not detached by the harness: `meshfs mount` has to clean it up itself, at once.
    node.start(mode=mode, detach_stale=False)
    assert mount_count(node.mnt) == 1, "the stale mount must be replaced, not stacked upon"
    assert node.path("games/a.db").read_bytes() == b"game bytes"
    assert node.stop() == 0
    assert not h.is_mounted(node.mnt), "after a clean unmount nothing is left at the mountpoint"


@pytest.mark.meshfs_timeout(120)
def test_kill9_restart_keeps_the_catalog_and_rehashes_nothing(make_cluster):
    node = _start_with_files(make_cluster)
    _crash(node, detach=True)
    assert integrity(node.state_dir) == [("ok",)]

    node.start()
    _wait_first_scan(node)
    health = node.health()
    assert health["indexer"]["hashed_files"] == 0, health["indexer"]
    assert health["indexer"]["files"] == len(CRASH_FILES)
    for rel, data in node.data.items():
        assert node.path(rel).read_bytes() == data, rel
        assert h.getxattr(node.path(rel), "user.meshfs.hash") == h.xxh128_bytes(data), rel
    assert integrity(node.state_dir) == [("ok",)]
    live = [r for r in h.catalog_entries(node.state_dir, host="n1") if not r["deleted"]]
    assert sorted(f"{r['category']}/{r['path']}" for r in live) == sorted(CRASH_FILES)


@pytest.mark.meshfs_timeout(120)
def test_kill9_file_changed_while_down_is_rehashed(make_cluster):
    node = _start_with_files(make_cluster)
    _crash(node, detach=True)
    new = h.random_bytes(55555, seed="changed while down")
    h.write_file(node.local("games", "a.db"), new)
    time.sleep(0.6)  # older than publish_quiet_seconds when the daemon comes back
    assert integrity(node.state_dir) == [("ok",)]

    node.start()
    _wait_first_scan(node)
    wait_until(lambda: h.getxattr(node.path("games/a.db"), "user.meshfs.hash")
               == h.xxh128_bytes(new), PUBLISH_WITHIN, message="a.db's new hash")
    assert node.health()["indexer"]["hashed_files"] == 1
    assert node.path("games/a.db").read_bytes() == new
    assert os.stat(node.path("games/a.db")).st_size == len(new)
    for rel, data in node.data.items():
        if rel != "games/a.db":
            assert node.path(rel).read_bytes() == data, rel
    row = h.catalog_entries(node.state_dir, host="n1", category="games", path="a.db")[0]
    assert row["size"] == len(new) and row["deleted"] == 0
    assert row["hash"] == h.xxh128_bytes(new).split(":")[1]
    assert integrity(node.state_dir) == [("ok",)]


@pytest.mark.meshfs_timeout(120)
def test_kill9_file_written_through_mount_survives(make_cluster):
    """A file written and closed through the mount before the crash is there after it, with
    its hash, and is not hashed again."""
    node = _start_with_files(make_cluster)
    data = h.random_bytes(300000, seed="before crash")
    with open(node.path("models/late.pth"), "wb") as f:
        f.write(data)
    wait_until(lambda: h.getxattr(node.path("models/late.pth"), "user.meshfs.hash")
               == h.xxh128_bytes(data), PUBLISH_WITHIN, message="late.pth published")
    _crash(node, detach=True)
    node.start()
    _wait_first_scan(node)
    assert node.path("models/late.pth").read_bytes() == data
    assert h.getxattr(node.path("models/late.pth"), "user.meshfs.hash") == h.xxh128_bytes(data)
    assert node.health()["indexer"]["hashed_files"] == 0
