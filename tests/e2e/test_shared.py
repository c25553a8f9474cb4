"""Shared storage is checked with a probe file (docs/architecture.md, "Shared storage").

A category whose dir lies under a host's `shared_storage` is passed straight through only while
a probe written there (`<dir>/.meshfs-probe/<node>`) reads back within the deadline; otherwise
it is synced like any other category, and `user.meshfs.health` / `meshfs status` say so
(`shared_storage` list; this node `degraded` with a `reason`).

Each test starts real nodes on loopback (meshfs_harness.py). The shared storage is a plain dir
of the test's tmp dir that both nodes name in `shared_storage`; a read-only one is a read-only
bind mount of it (root only: skipped otherwise); a hung one is a FIFO where the probe file is
opened, which blocks open(2) until someone reads it, as a hung NFS server would. The checker
runs every 10 s with a 5 s deadline, so state changes are waited for within 30 s.
"""

import errno
import os
import subprocess

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until
from test_dataserver import manifest

MiB = 1 << 20
P = "user.meshfs."
PUBLISH_WITHIN = 5
SHOWN_WITHIN = 12        # another node's file: its publication plus a manifest pull
CHECK_WITHIN = 30        # a change of the shared storage is seen by the next rounds (10 s)
PROBE_DIR = ".meshfs-probe"


# --- helpers ------------------------------------------------------------------------------------

def shared_host(shared_root, category="training"):
    """The hosts entry that puts @category on the shared storage at @shared_root."""
    return {"shared_storage": [str(shared_root)],
            "storage_paths": {category: str(shared_root / category)}}


def shared_entry(node, category="training"):
    entries = [e for e in node.health()["shared_storage"] if e["category"] == category]
    assert len(entries) == 1, node.health()["shared_storage"]
    return entries[0]


def self_entry(health):
    return next(x for x in health["hosts"] if x["name"] == health["node"])


def wait_shared(node, state, detail=None, timeout=CHECK_WITHIN):
    """Waits until @node's health shows its training storage in @state (and @detail in the
    detail); returns that entry."""
    def check():
        e = shared_entry(node)
        return e if e["state"] == state and (detail is None or detail in e["detail"]) else None
    return wait_until(check, timeout, message=f"{node.name}: shared storage {state} "
                      f"({detail or 'any detail'})")


def state_of(path):
    return h.getxattr(path, P + "state")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def wait_hash(path, data, timeout=SHOWN_WITHIN):
    want = h.xxh128_bytes(data)

    def shown():
        try:
            return h.getxattr(path, P + "hash") == want
        except OSError:
            return False
    wait_until(shown, timeout, message=f"{path} shown with hash {want}")


def no_probe_anywhere(node, category="training"):
    """The probe dir shows nowhere in @node's mount, catalog or manifest."""
    assert PROBE_DIR not in os.listdir(node.path(category)), os.listdir(node.path(category))
    for host in node.cluster.nodes:
        listing = os.listdir(node.host_path(host, category))
        assert PROBE_DIR not in listing, (host.name, listing)
    assert h.errno_of(os.stat, node.path(f"{category}/{PROBE_DIR}")) == errno.ENOENT
    rows = [r for r in h.catalog_entries(node.state_dir) if PROBE_DIR in r["path"]]
    assert rows == [], rows
    _, entries, _ = manifest(node)
    assert [e for e in entries if PROBE_DIR in e["path"]] == [], entries


class ReadOnlyBind:
    """A read-only bind mount of @src at @dst (lazily unmounted at exit)."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst

    def __enter__(self):
        self.dst.mkdir(parents=True, exist_ok=True)
        for cmd in (["mount", "--bind", str(self.src), str(self.dst)],
                    ["mount", "-o", "remount,bind,ro", str(self.dst)]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                self.__exit__()
                pytest.skip(f"cannot make a read-only bind mount: {r.stderr.strip()}")
        return self

    def __exit__(self, *exc):
        if h.is_mounted(self.dst):
            subprocess.run(["umount", "-l", str(self.dst)], capture_output=True, timeout=30)


# --- tests --------------------------------------------------------------------------------------

def test_healthy_shared_storage_is_passed_through_and_probes_stay_hidden(make_cluster,
                                                                         tmp_path):
    shared = tmp_path / "nfs"
    (shared / "training").mkdir(parents=True)
    data = h.random_bytes(300 * 1024, seed="shared-npz")
    h.write_file(shared / "training" / "t_hex8_2p.npz", data)
    cluster = make_cluster(["a", "b"], nodes={"a": {"host": shared_host(shared)},
                                              "b": {"host": shared_host(shared)}})
    a, b = cluster["a"], cluster["b"]

    for node in (a, b):
        wait_hash(node.path("training/t_hex8_2p.npz"), data)
        assert state_of(node.path("training/t_hex8_2p.npz")) == "passthrough"
        e = shared_entry(node)
        assert e["state"] == "healthy", e
        assert e["path"] == str(shared / "training"), e
        assert "probe written and read back" in e["detail"], e
        assert e["mode"] == "passthrough", e
        health = node.health()
        assert self_entry(health)["state"] == "up", health
        assert "reason" not in self_entry(health), health
    # Each sees the other's probe moving within a round or two.
    wait_shared(a, "healthy", "shared with b")
    wait_shared(b, "healthy", "shared with a")

    # The probes are there on the storage, written by each node...
    probes = shared / "training" / PROBE_DIR
    for name in ("a", "b"):
        text = (probes / name).read_text()
        assert text.startswith(f"meshfs-probe 1\nnode {name}\nnonce "), text
    # ... and never in a listing, a lookup, a catalog or a manifest, after several rewrites.
    for node in (a, b):
        no_probe_anywhere(node)
    assert h.errno_of(os.mkdir, a.path(f"training/{PROBE_DIR}")) == errno.EPERM
    assert sorted(os.listdir(a.path("training"))) == ["t_hex8_2p.npz"]

    report = a.status_json()
    assert [s["state"] for s in report["shared_storage"]] == ["healthy"], report
    human = a.meshfs("status", timeout=30)
    assert human.returncode == 0, human.stderr
    assert "shared storage:" in human.stdout and "training" in human.stdout, human.stdout


def test_read_only_shared_storage_is_unhealthy_and_synced(make_cluster, tmp_path):
    """a's training is on shared storage mounted read-only: the probe cannot be written, so a
    reports it unhealthy and serves training as a normal category: b's file is fetched."""
    real = tmp_path / "nfs-real"
    (real / "training").mkdir(parents=True)
    here = h.random_bytes(100 * 1024, seed="ro-here")
    h.write_file(real / "training" / "here.npz", here)
    ro = tmp_path / "nfs"
    with ReadOnlyBind(real, ro):
        cluster = make_cluster(["a", "b"], start=False,
                               nodes={"a": {"host": shared_host(ro)}})
        a, b = cluster["a"], cluster["b"]
        theirs = h.random_bytes(2 * MiB + 5, seed="ro-theirs")
        h.write_file(b.local("training", "t_hex8_2p.npz"), theirs)
        cluster.start()

        e = shared_entry(a)
        assert e["state"] == "unhealthy", e
        assert "Read-only file system" in e["detail"], e
        assert e["mode"] == "synced", e
        health = a.health()
        assert self_entry(health)["state"] == "degraded", health
        assert "shared storage of training unhealthy" in self_entry(health)["reason"], health
        report = a.status_json()
        assert self_entry(report)["state"] == "degraded", report
        assert report["shared_storage"][0]["state"] == "unhealthy", report
        human = a.meshfs("status", timeout=30)
        assert "unhealthy" in human.stdout and "Read-only file system" in human.stdout, \
            human.stdout

        # Its own files there are still read from it, as a normal category's (not passthrough).
        wait_hash(a.path("training/here.npz"), here)
        assert state_of(a.path("training/here.npz")) == "local"
        assert read_bytes(a.path("training/here.npz")) == here
        # b's file is synced: `meshfs sync` fetches it (on passthrough it would count as local).
        wait_hash(a.path("training/t_hex8_2p.npz"), theirs)
        assert state_of(a.path("training/t_hex8_2p.npz")) == "remote"
        r = a.meshfs("sync", "training", timeout=60)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        assert state_of(a.path("training/t_hex8_2p.npz")) == "cached"
        assert read_bytes(a.path("training/t_hex8_2p.npz")) == theirs
        # b has no shared storage at all.
        assert b.health()["shared_storage"] == []


def test_missing_shared_storage_falls_back_and_comes_back(make_cluster, tmp_path):
    """a's shared dir is missing (not mounted): unhealthy, b's file is read by fetching, nothing
    is written where the mount belongs; once it appears, a passes it through again."""
    shared = tmp_path / "nfs"
    shared.mkdir()
    cluster = make_cluster(["a", "b"], start=False, nodes={"a": {"host": shared_host(shared)}})
    a, b = cluster["a"], cluster["b"]
    theirs = h.random_bytes(1 * MiB + 17, seed="missing-theirs")
    h.write_file(b.local("training", "from_b.npz"), theirs)
    cluster.start()

    e = shared_entry(a)
    assert e["state"] == "unhealthy" and "is missing" in e["detail"], e
    assert self_entry(a.health())["state"] == "degraded"
    wait_hash(a.path("training/from_b.npz"), theirs)
    assert read_bytes(a.path("training/from_b.npz")) == theirs
    wait_until(lambda: state_of(a.path("training/from_b.npz")) == "cached", 10)
    # A write would land on the local disk where the mount belongs: refused.
    assert h.errno_of(h.write_file, a.path("training/new.npz"), b"x") == errno.EROFS
    assert not (shared / "training").exists()

    (shared / "training").mkdir()
    wait_shared(a, "healthy")
    assert self_entry(a.health())["state"] == "up"
    h.write_file(a.path("training/new.npz"), b"through")
    assert (shared / "training" / "new.npz").read_bytes() == b"through"
    wait_until(lambda: state_of(a.path("training/new.npz")) == "passthrough", PUBLISH_WITHIN)
    no_probe_anywhere(a)
    no_probe_anywhere(b)


@pytest.mark.meshfs_timeout(200)
def test_hung_shared_storage_is_cut_off_and_recovers(make_cluster, tmp_path):
    """a's probe hangs (open(2) blocks): within a round a reports it unhealthy, its copies are
    not used (the file is read from b, which shares it), the mount stays responsive; once the
    storage answers again a passes it through again."""
    shared = tmp_path / "nfs"
    (shared / "training").mkdir(parents=True)
    data = h.random_bytes(3 * MiB + 1, seed="hung")
    h.write_file(shared / "training" / "same.npz", data)
    cluster = make_cluster(["a", "b"], nodes={"a": {"host": shared_host(shared)},
                                              "b": {"host": shared_host(shared)}})
    a, b = cluster["a"], cluster["b"]
    path = a.path("training/same.npz")
    wait_hash(path, data)
    wait_hash(b.path("training/same.npz"), data)
    # Both hold these bytes: a shows its own copy (b's is a source too).
    wait_until(lambda: h.getxattr(path, P + "sources") in ("a,b", "b,a"), SHOWN_WITHIN)
    assert state_of(path) == "passthrough"

    fifo = shared / "training" / PROBE_DIR / "a.new.writing"
    os.mkfifo(fifo)
    released = False

    def release():
        # A reader lets the blocked open(2) return; the probe then finds a FIFO and fails.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.unlink(fifo)
        os.close(fd)

    try:
        e = wait_shared(a, "unhealthy", "no answer from")
        assert "hung storage" in e["detail"], e
        health = a.health()
        assert self_entry(health)["state"] == "degraded", health
        # a's own copy is not used: the version shown is b's, fetched when read.
        wait_until(lambda: state_of(path) in ("remote", "cached"), 5)
        assert read_bytes(path) == data
        wait_until(lambda: state_of(path) == "cached", 10)
        # b is not affected.
        assert shared_entry(b)["state"] == "healthy"
        assert state_of(b.path("training/same.npz")) == "passthrough"
        release()
        released = True
        wait_shared(a, "healthy")
        wait_until(lambda: state_of(path) == "passthrough", 5)
        assert self_entry(a.health())["state"] == "up"
    finally:
        if not released and fifo.exists():
            release()
