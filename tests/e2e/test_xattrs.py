"""The user.meshfs.* extended attributes on one node (../shared/INTERFACE.md).

Every readable name that applies on a single node is checked for its value: files here are
`local` (or `passthrough` on shared storage), their origin and only source is this node,
their hash is what `xxhsum -H2` prints, all their bytes are present, their age is a small
growing number, and they were never synced from anyone. The mount root carries the health
JSON and the lag. The writable names (pin, prefetch, evict) accept what the contract allows
and refuse the rest with the documented errno.
"""

import errno
import json
import os
import re
import subprocess

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until, xattr_errno

PUBLISH_WITHIN = 5
MiB = 1 << 20
P = "user.meshfs."

FILE_NAMES = {P + n for n in ("state", "origin", "sources", "hash", "cached_bytes", "age",
                              "synced_at", "last_error")}
DIR_NAMES = {P + "age"}
ROOT_NAMES = {P + "health", P + "lag"}

GHOST = {"ghost": {"address": "127.0.0.1", "data_server_port": 9, "root": "/nonexistent/ghost"}}
RETIRED = {"retired": {"address": "127.0.0.1", "data_server_port": 9, "root": "/nonexistent/r",
                       "status": "terminated"}}


def wait_hash(path, want, timeout=PUBLISH_WITHIN):
    def check():
        return h.getxattr(path, P + "hash") == want
    wait_until(check, timeout, message=f"{path} with hash {want}")


def getfattr_dump(path):
    """{name: value} from `getfattr -d -m '^user\\.meshfs\\.' PATH`."""
    r = subprocess.run(["getfattr", "--absolute-names", "-d", "-m", r"^user\.meshfs\.",
                        str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = re.fullmatch(r'(user\.meshfs\.[a-z_]+)="(.*)"', line)
        if m:
            # getfattr escapes '"' and '\' with a backslash (and control chars in octal).
            value = re.sub(r'\\([0-7]{3}|.)', lambda e: chr(int(e.group(1), 8))
                           if len(e.group(1)) == 3 else e.group(1), m.group(2))
            out[m.group(1)] = value
        else:
            m = re.fullmatch(r"(user\.meshfs\.[a-z_]+)", line)
            if m:
                out[m.group(1)] = ""
    return out


@pytest.fixture
def files_node(make_cluster):
    """n1 with a few files of its own (and a never-started host, ghost), all published."""
    cluster = make_cluster(start=False, extra_hosts=GHOST)
    node = cluster["n1"]
    node.files = {"games/a.db": h.random_bytes(70000, seed="a"),
                  "games/sub/b.db": h.random_bytes(4 * MiB + 9, seed="b"),
                  "models/m.pth": h.random_bytes(1, seed="m"),
                  "training/empty.npz": b""}
    for rel, data in node.files.items():
        cat, _, path = rel.partition("/")
        h.write_file(node.local(cat, path), data)
    cluster.start()
    for rel, data in node.files.items():
        wait_hash(node.path(rel), h.xxh128_bytes(data))
    return node


# --- files --------------------------------------------------------------------------------------

def test_file_xattr_values(files_node):
    node = files_node
    for rel, data in node.files.items():
        path = node.path(rel)
        values = h.meshfs_xattrs(path)
        assert set(values) >= FILE_NAMES, rel
        assert values[P + "state"] == "local", rel
        assert values[P + "origin"] == "n1", rel
        assert values[P + "sources"].split(",") == ["n1"], rel
        assert values[P + "hash"] == h.xxh128(node.local(*rel.split("/", 1))), rel
        assert re.fullmatch(r"xxh3-128:[0-9a-f]{32}", values[P + "hash"]), rel
        assert values[P + "cached_bytes"] == str(len(data)), rel
        age = int(values[P + "age"])
        assert 0 <= age < 60, rel
        assert values[P + "synced_at"] == "", rel
        assert values[P + "last_error"] == "", rel
        # The same file seen under /.hosts/n1 has the same attributes.
        mirrored = h.meshfs_xattrs(node.host_path("n1", rel))
        for name in FILE_NAMES - {P + "age"}:
            assert mirrored[name] == values[name], (rel, name)


def test_file_written_through_mount_xattrs(node):
    data = h.random_bytes(5 * MiB + 1, seed="w")
    path = node.path("models/new.pth")
    with open(path, "wb") as f:
        f.write(data)
    want = h.xxh128_bytes(data)
    wait_hash(path, want)
    assert want == h.xxh128(node.local("models", "new.pth"))
    assert h.getxattr(path, P + "state") == "local"
    assert h.getxattr(path, P + "origin") == "n1"
    assert h.getxattr(path, P + "sources") == "n1"
    assert h.getxattr(path, P + "cached_bytes") == str(len(data))
    assert h.getxattr(path, P + "synced_at") == ""
    assert h.getxattr(path, P + "last_error") == ""
    # A new version gets a new hash.
    with open(path, "r+b") as f:
        f.write(b"X")
    want2 = h.xxh128_bytes(b"X" + data[1:])
    assert want2 != want
    wait_hash(path, want2)


def test_age_is_a_small_number_that_grows(files_node):
    path = files_node.path("games/a.db")
    first = int(h.getxattr(path, P + "age"))
    assert 0 <= first < 60
    wait_until(lambda: int(h.getxattr(path, P + "age")) > first, 5,
               message="user.meshfs.age growing")
    root_first = int(h.getxattr(files_node.mnt, P + "age"))
    assert root_first >= 0
    wait_until(lambda: int(h.getxattr(files_node.mnt, P + "age")) > root_first, 5,
               message="user.meshfs.age of the root growing")


def test_directory_age(files_node):
    for d in (files_node.path("games"), files_node.path("games/sub"), files_node.mnt):
        value = h.getxattr(d, P + "age")
        assert re.fullmatch(r"\d+", value), (d, value)
        assert int(value) < 60
    for name in ("state", "hash", "origin", "cached_bytes"):
        assert xattr_errno(files_node.path("games"), P + name) == errno.ENODATA


def test_passthrough_file_xattrs(make_cluster, tmp_path):
    shared = tmp_path / "nfs"
    (shared / "models").mkdir(parents=True)
    cluster = make_cluster(start=False, nodes={"n1": {"host": {
        "shared_storage": [str(shared)], "storage_paths": {"models": str(shared / "models")}}}})
    node = cluster["n1"]
    data = h.random_bytes(123456, seed="pt")
    h.write_file(shared / "models" / "shared.pth", data)
    h.write_file(node.local("games", "own.db"), b"own")
    cluster.start()
    path = node.path("models/shared.pth")
    wait_hash(path, h.xxh128_bytes(data))
    assert h.getxattr(path, P + "state") == "passthrough"
    assert h.getxattr(path, P + "cached_bytes") == str(len(data))
    assert h.getxattr(path, P + "last_error") == ""
    assert h.getxattr(path, P + "origin") == "n1"
    wait_hash(node.path("games/own.db"), h.xxh128_bytes(b"own"))
    assert h.getxattr(node.path("games/own.db"), P + "state") == "local"

    with open(node.path("models/written.pth"), "wb") as f:
        f.write(b"through")
    assert h.getxattr(node.path("models/written.pth"), P + "state") == "passthrough"
    wait_hash(node.path("models/written.pth"), h.xxh128_bytes(b"through"))
    assert h.getxattr(node.path("models/written.pth"), P + "cached_bytes") == "7"


def test_cached_bytes_of_a_local_file_is_its_size_before_publication(node):
    """INTERFACE: cached_bytes = size for `local`. A file written through the mount is
    published when closed; while it is still open it is already local, with all its bytes
    here."""
    path = node.path("games/open.db")
    data = h.random_bytes(100000, seed="open")
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        assert os.stat(path).st_size == len(data)
        assert h.getxattr(path, P + "state") == "local"
        assert h.getxattr(path, P + "cached_bytes") == str(len(data))


# --- the mount root -----------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["hybrid", "broadcast"])
def test_root_health_json(make_cluster, strategy):
    extra = dict(GHOST, **RETIRED)
    cluster = make_cluster(start=False, extra_hosts=extra,
                           config={"auto_sync": {"strategy": strategy},
                                   "cache": {"max_size": "2G"}})
    node = cluster["n1"]
    sizes = {"games/x.db": 1000, "games/deep/y.db": 4 * MiB + 2, "models/z.pth": 3}
    for rel, size in sizes.items():
        cat, _, path = rel.partition("/")
        h.write_file(node.local(cat, path), h.random_bytes(size, seed=rel))
    total = sum(sizes.values())
    cluster.start()

    health = wait_until(lambda: (lambda j: j if j["unreplicated_bytes"] == total else None)(
        node.health()), PUBLISH_WITHIN * 2, message="unreplicated_bytes = all own bytes")
    for key in ("node", "uptime_s", "strategy", "hosts", "cache", "queue",
                "unreplicated_bytes"):
        assert key in health, key
    assert health["node"] == "n1"
    assert health["strategy"] == strategy
    assert isinstance(health["uptime_s"], int) and 0 <= health["uptime_s"] < 120
    hosts = {x["name"]: x for x in health["hosts"]}
    assert sorted(hosts) == ["ghost", "n1", "retired"]
    for name, x in hosts.items():
        for key in ("state", "circuit", "last_seen_s", "errors"):
            assert key in x, (name, key)
        assert x["state"] in ("up", "degraded", "down"), name
        assert x["circuit"] in ("closed", "open", "half-open"), name
        assert isinstance(x["errors"], int) and x["errors"] >= 0, name
    me = hosts["n1"]
    assert me["state"] == "up"
    assert me["circuit"] == "closed"
    assert me["errors"] == 0
    assert isinstance(me["last_seen_s"], int) and 0 <= me["last_seen_s"] < 60
    assert hosts["ghost"]["state"] == "down"
    assert hosts["ghost"]["last_seen_s"] is None
    assert health["cache"] == {"used": 0, "max": 2 * 1024 ** 3}
    assert health["queue"] == 0
    assert health["unreplicated_bytes"] == total

    first = health["uptime_s"]
    wait_until(lambda: node.health()["uptime_s"] > first, 5, message="uptime_s growing")

    # Written through the mount: counted too.
    with open(node.path("training/new.npz"), "wb") as f:
        f.write(b"0123456789")
    wait_until(lambda: node.health()["unreplicated_bytes"] == total + 10, PUBLISH_WITHIN,
               message="unreplicated_bytes counting the new file")


def test_unreplicated_bytes_is_zero_without_a_replication_target(make_cluster):
    cluster = make_cluster(start=False, config={"sync_routing": {"replication_target": 0}})
    node = cluster["n1"]
    h.write_file(node.local("games", "x.db"), b"x" * 5000)
    cluster.start()
    wait_until(lambda: node.health()["indexer"]["files"] == 1, PUBLISH_WITHIN)
    assert node.health()["unreplicated_bytes"] == 0


def test_root_lag(files_node):
    value = h.getxattr(files_node.mnt, P + "lag")
    assert re.fullmatch(r"\d+", value), value
    assert int(value) < 120
    assert xattr_errno(files_node.path("games"), P + "lag") == errno.ENODATA
    assert xattr_errno(files_node.path("games/a.db"), P + "health") == errno.ENODATA


# --- getfattr, listxattr, unknown names ---------------------------------------------------------

def test_getfattr_dumps_every_attribute(files_node):
    path = files_node.path("games/a.db")
    dump = getfattr_dump(path)
    assert set(dump) == set(h.meshfs_xattrs(path)), dump
    assert set(dump) >= FILE_NAMES
    values = h.meshfs_xattrs(path)
    for name in FILE_NAMES - {P + "age"}:
        assert dump[name] == values[name], name
    assert dump[P + "hash"] == h.xxh128(files_node.local("games", "a.db"))

    root = getfattr_dump(files_node.mnt)
    assert set(root) >= ROOT_NAMES
    health = json.loads(root[P + "health"])
    assert health["node"] == "n1"
    assert re.fullmatch(r"\d+", root[P + "lag"])


def test_listxattr_lists_the_names(files_node):
    node = files_node

    def ours(path):
        return {n for n in os.listxattr(path) if n.startswith(P)}

    file_names = ours(node.path("games/a.db"))
    assert file_names >= FILE_NAMES
    assert ours(node.path("games")) >= DIR_NAMES
    assert ours(node.mnt) >= ROOT_NAMES
    assert not ours(node.path("games")) & (ROOT_NAMES | {P + "hash", P + "state"})
    # Every listed name can be read.
    for path in (node.path("games/a.db"), node.path("games/sub"), node.mnt,
                 node.host_path("n1", "games/a.db")):
        for name in ours(path):
            assert xattr_errno(path, name) == 0, (path, name)


@pytest.mark.parametrize("where", ["file", "dir", "root", "hosts-file"])
def test_unknown_meshfs_name_is_enodata(files_node, where):
    path = {"file": files_node.path("games/a.db"), "dir": files_node.path("games"),
            "root": files_node.mnt,
            "hosts-file": files_node.host_path("n1", "games/a.db")}[where]
    for name in (P + "no_such_thing", P + "State", P + "hash2", P):
        assert xattr_errno(path, name) == errno.ENODATA, name
    r = subprocess.run(["getfattr", "-n", P + "no_such_thing", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "No such attribute" in r.stderr, r.stderr


# --- writable names -----------------------------------------------------------------------------

def test_pin(files_node):
    path = files_node.path("games/a.db")
    r = subprocess.run(["setfattr", "-n", P + "pin", "-v", "1", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert xattr_errno(path, P + "pin", "0") == 0
    assert xattr_errno(path, P + "pin", "1") == 0
    for bad in ("2", "yes", "", "11", "-1"):
        assert xattr_errno(path, P + "pin", bad) == errno.EINVAL, bad
    r = subprocess.run(["setfattr", "-n", P + "pin", "-v", "2", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    # Pinning changes nothing a reader sees.
    assert h.getxattr(path, P + "state") == "local"
    assert h.getxattr(path, P + "hash") == h.xxh128(files_node.local("games", "a.db"))
    with open(path, "rb") as f:
        assert f.read() == files_node.files["games/a.db"]


def test_evict_of_a_local_file_is_ebusy(files_node):
    path = files_node.path("games/a.db")
    assert xattr_errno(path, P + "evict", "1") == errno.EBUSY
    r = subprocess.run(["setfattr", "-n", P + "evict", "-v", "1", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    # The file is untouched.
    with open(path, "rb") as f:
        assert f.read() == files_node.files["games/a.db"]
    assert files_node.local("games", "a.db").exists()
    assert h.getxattr(path, P + "cached_bytes") == str(len(files_node.files["games/a.db"]))


@pytest.mark.parametrize("priority", ["low", "normal", "high", "critical"])
def test_prefetch_accepts_the_priorities(files_node, priority):
    for path in (files_node.path("games/a.db"), files_node.path("games"),
                 files_node.path("games/sub")):
        assert xattr_errno(path, P + "prefetch", priority) == 0, path
    r = subprocess.run(["setfattr", "-n", P + "prefetch", "-v", priority,
                        str(files_node.path("models"))], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def test_prefetch_refuses_other_values(files_node):
    for bad in ("urgent", "", "LOW", "1"):
        assert xattr_errno(files_node.path("games/a.db"), P + "prefetch", bad) == errno.EINVAL
        assert xattr_errno(files_node.path("games"), P + "prefetch", bad) == errno.EINVAL


def test_readable_names_cannot_be_set(files_node):
    path = files_node.path("games/a.db")
    for name in ("state", "hash", "origin"):
        assert xattr_errno(path, P + name, "x") != 0, name
    assert h.getxattr(path, P + "state") == "local"
