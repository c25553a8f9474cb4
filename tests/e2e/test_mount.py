"""One node through its mount: bytes, errno, the data dir, the catalog and the CLI.

Everything here runs a single real node (`meshfs mount -f`) and checks what a user of the
mount sees (../shared/INTERFACE.md): the bytes read equal the source, files added, changed or
removed in the data dir show up, files written through the mount land in the data dir and in
the catalog, POSIX calls give the usual results and errno values, read-only places give
EROFS, /.hosts mirrors the node's own files, a category on shared storage is passed through,
and `meshfs status`/`meshfs sync` report the node's data.
"""

import errno
import hashlib
import json
import os
import random
import re
import sqlite3
import stat
import textwrap
import time

import pytest

import meshfs_harness as h
from meshfs_harness import errno_of, wait_until

# publish_quiet_seconds is 0.5 in the harness config: a few seconds is plenty.
PUBLISH_WITHIN = 5
MiB = 1 << 20

# A configured host that never runs: its data server address answers nothing.
GHOST = {"ghost": {"address": "127.0.0.1", "data_server_port": 9, "root": "/nonexistent/ghost"}}


# --- helpers ------------------------------------------------------------------------------------

def listing(path):
    return sorted(os.listdir(path))


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def mount_hash(path):
    """user.meshfs.hash of @path, or None when it cannot be read (not there yet)."""
    try:
        return h.getxattr(path, "user.meshfs.hash")
    except OSError:
        return None


def wait_published(node, rel, data, timeout=PUBLISH_WITHIN):
    """Waits until the mount shows @rel ("games/x") with @data's hash; returns the hash."""
    want = h.xxh128_bytes(data)
    wait_until(lambda: mount_hash(node.path(rel)) == want, timeout,
               message=f"{rel} published with hash {want}")
    return want


def live_entry(node, category, path):
    """The catalog row of this node's (category, path), or None."""
    rows = h.catalog_entries(node.state_dir, host=node.name, category=category, path=path)
    return rows[0] if rows else None


def wait_entry(node, category, path, pred, timeout=PUBLISH_WITHIN, message=None):
    """Waits until this node's catalog row of (category, path) satisfies @pred; returns it."""
    def check():
        row = live_entry(node, category, path)
        return row if row and pred(row) else None
    return wait_until(check, timeout, message=message or f"catalog entry {category}/{path}",
                      ignore=(OSError, sqlite3.Error))


def wait_scanned(node, timeout=PUBLISH_WITHIN * 2):
    """Waits until the node's first full scan is done (health indexer.last_scan_done)."""
    return wait_until(lambda: node.health()["indexer"]["last_scan_done"] > 0, timeout,
                      message=f"{node.name}'s first full scan")


CHILD_PRELUDE = textwrap.dedent("""\
    import hashlib, json, os, sys
    def err(fn, *a, **k):
        try:
            fn(*a, **k)
            return 0
        except OSError as e:
            return e.errno
    def create(path, data, mode=0o666):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    def read(path):
        with open(path, "rb") as f:
            return f.read()
    out = {}
    """)


def run_py_as(code, uid=h.NOBODY, gid=h.NOBODY):
    """Runs python @code (after CHILD_PRELUDE; it fills the dict `out`) as @uid:@gid and
    returns `out`."""
    script = CHILD_PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    r = h.run_as(uid, gid, "/usr/bin/python3", "-c", script)
    assert r.returncode == 0, f"child as {uid}:{gid} failed:\n{r.stderr}"
    return json.loads(r.stdout)


def numbers_in(text):
    return {int(n) for n in re.findall(r"(?<![\d.])\d+(?![\d.])", text)}


# --- reading ------------------------------------------------------------------------------------

SIZES = [0, 1, 4095, 4096, 4097, MiB + 3, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 17]


def test_read_equals_source_for_many_sizes(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    files = {}
    for i, size in enumerate(SIZES):
        rel = f"sizes/f{i}_{size}.bin"
        files[rel] = h.random_bytes(size, seed=f"size{size}")
        h.write_file(node.local("games", rel), files[rel])
    cluster.start()

    wait_until(lambda: listing(node.path("games/sizes")) == sorted(p.split("/")[1]
                                                                  for p in files),
               PUBLISH_WITHIN * 2, message="every file listed")
    for rel, data in files.items():
        path = node.path("games/" + rel)
        assert os.stat(path).st_size == len(data), rel
        assert read_bytes(path) == data, f"{rel}: bytes read differ from the source"
        # Reads in odd-sized pieces that straddle page and chunk boundaries.
        with open(path, "rb") as f:
            pieces = iter(lambda: f.read(65537), b"")
            assert b"".join(pieces) == data, f"{rel}: piecewise read differs"


def test_pread_at_random_offsets(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    data = h.random_bytes(10 * MiB + 333, seed="pread")
    h.write_file(node.local("models", "big.pth"), data)
    cluster.start()

    path = node.path("models/big.pth")
    wait_until(lambda: path.exists(), PUBLISH_WITHIN, message="big.pth listed")
    rng = random.Random(1234)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(300):
            off = rng.randrange(0, len(data) + 4096)
            length = rng.choice([1, 17, 4096, 65536, 131073, 4 * MiB + 5])
            got = os.pread(fd, length, off)
            assert got == data[off:off + length], f"pread({length}, {off}) differs"
        # Chunk boundaries exactly, and the very end.
        for off in (4 * MiB - 1, 4 * MiB, 8 * MiB - 3, len(data) - 1, len(data)):
            assert os.pread(fd, 10, off) == data[off:off + 10], f"pread at {off}"
    finally:
        os.close(fd)


def test_sqlite_games_db_through_mount(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    h.gen_sample_data(node.root, games=[("canonical_hex8_2p.db", 120)], seed=7)
    source = node.local("games", "canonical_hex8_2p.db")
    cluster.start()
    mounted = node.path("games/canonical_hex8_2p.db")
    wait_until(lambda: mounted.exists(), PUBLISH_WITHIN, message="the games db listed")

    query = ("SELECT game_id, board_type, num_players, winner, total_moves, final_scores "
             "FROM games ORDER BY game_id")
    moves = "SELECT count(*), sum(length(policy)) FROM game_moves"

    def rows(path):
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return (conn.execute(query).fetchall(), conn.execute(moves).fetchall(),
                    conn.execute("PRAGMA integrity_check").fetchall())
        finally:
            conn.close()

    want = rows(source)
    got = rows(mounted)
    assert len(want[0]) == 120
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == [("ok",)]
    assert read_bytes(mounted) == read_bytes(source)


# --- changes in the data dir --------------------------------------------------------------------

def test_file_added_in_data_dir_appears_and_vanishes_when_deleted(node):
    data = h.random_bytes(70000, seed="added")
    h.write_file(node.local("games", "new_games.db"), data)
    h.write_file(node.local("games", "deep/er/nested.db"), data[:1000])

    path = node.path("games/new_games.db")
    wait_until(lambda: "new_games.db" in os.listdir(node.path("games")), PUBLISH_WITHIN,
               message="new_games.db listed in the mount")
    assert read_bytes(path) == data
    nested = node.path("games/deep/er/nested.db")
    wait_until(nested.exists, PUBLISH_WITHIN, message="nested file shown")
    assert read_bytes(nested) == data[:1000]

    os.unlink(node.local("games", "new_games.db"))
    wait_until(lambda: "new_games.db" not in os.listdir(node.path("games")), PUBLISH_WITHIN,
               message="new_games.db gone from the listing")
    # The kernel's cached entry is dropped asynchronously: eventually ENOENT.
    wait_until(lambda: errno_of(os.stat, path) == errno.ENOENT, PUBLISH_WITHIN,
               message="stat of the deleted file giving ENOENT")
    assert errno_of(open, path, "rb") == errno.ENOENT
    # The catalog keeps a tombstone, not a live entry.
    wait_entry(node, "games", "new_games.db", lambda r: r["deleted"] == 1,
               message="new_games.db deleted in the catalog")


@pytest.mark.parametrize("how", ["rewrite-in-place", "rename-over"])
def test_changed_file_shows_new_content_size_and_hash(node, how):
    old = h.random_bytes(50000, seed="v1")
    new = h.random_bytes(123457, seed="v2")
    src = node.local("models", "model.pth")
    h.write_file(src, old)
    old_hash = wait_published(node, "models/model.pth", old)
    mounted = node.path("models/model.pth")
    assert read_bytes(mounted) == old  # the kernel now holds the old content and attributes

    if how == "rewrite-in-place":
        h.write_file(src, new)
    else:
        tmp = node.root / "incoming.tmp"   # same file system, outside every category
        h.write_file(tmp, new)
        os.rename(tmp, src)

    new_hash = wait_published(node, "models/model.pth", new)
    assert new_hash != old_hash
    # The kernel's cached attributes and pages are invalidated asynchronously.
    wait_until(lambda: os.stat(mounted).st_size == len(new), PUBLISH_WITHIN,
               message="the new size")
    wait_until(lambda: read_bytes(mounted) == new, PUBLISH_WITHIN,
               message="the new content read through the mount")
    assert h.getxattr(mounted, "user.meshfs.cached_bytes") == str(len(new))


def test_writing_sidecar_holds_a_file_back_until_removed(node):
    data = h.random_bytes(40000, seed="held")
    h.write_file(node.local("games", "held.db.writing"), b"")
    h.write_file(node.local("games", "held.db"), data)
    # A file written at the same time without a sidecar: once it is shown, the held one
    # would have been shown too had the sidecar not held it.
    h.write_file(node.local("games", "free.db"), data[:100])
    wait_until(lambda: node.path("games/free.db").exists(), PUBLISH_WITHIN,
               message="free.db shown")
    wait_scanned(node)
    time.sleep(1.5)  # three quiet periods more
    assert "held.db" not in os.listdir(node.path("games"))
    assert errno_of(os.stat, node.path("games/held.db")) == errno.ENOENT
    assert live_entry(node, "games", "held.db") is None

    os.unlink(node.local("games", "held.db.writing"))
    wait_until(lambda: "held.db" in os.listdir(node.path("games")), PUBLISH_WITHIN,
               message="held.db shown once its sidecar is gone")
    assert read_bytes(node.path("games/held.db")) == data
    wait_published(node, "games/held.db", data)


# --- writing through the mount ------------------------------------------------------------------

def test_file_written_through_mount_lands_in_data_dir_catalog_and_xattrs(node):
    data = h.random_bytes(6 * MiB + 11, seed="written")
    small = b"a small file in a new dir\n"
    with open(node.path("games/written.db"), "wb") as f:
        f.write(data)
    os.makedirs(node.path("games/new/dir"))
    with open(node.path("games/new/dir/small.txt"), "wb") as f:
        f.write(small)

    assert read_bytes(node.local("games", "written.db")) == data
    assert read_bytes(node.local("games", "new/dir/small.txt")) == small
    assert read_bytes(node.path("games/written.db")) == data

    want = h.xxh128_bytes(data)
    assert want == h.xxh128(node.local("games", "written.db"))
    row = wait_entry(node, "games", "written.db",
                     lambda r: r["hash"] == want.split(":")[1] and r["deleted"] == 0,
                     message="written.db in the catalog with its hash")
    assert row["host"] == node.name
    assert row["size"] == len(data)
    assert row["seq"] > 0
    small_row = wait_entry(node, "games", "new/dir/small.txt",
                           lambda r: r["deleted"] == 0 and r["size"] == len(small))
    assert small_row["hash"] == h.xxh128_bytes(small).split(":")[1]

    path = node.path("games/written.db")
    wait_published(node, "games/written.db", data)
    assert h.getxattr(path, "user.meshfs.state") == "local"
    assert h.getxattr(path, "user.meshfs.origin") == node.name
    assert h.getxattr(path, "user.meshfs.cached_bytes") == str(len(data))

    # A later write is a new version with a greater seq.
    with open(path, "ab") as f:
        f.write(b"more")
    row2 = wait_entry(node, "games", "written.db", lambda r: r["size"] == len(data) + 4,
                      message="the appended version in the catalog")
    assert row2["seq"] > max(row["seq"], small_row["seq"])
    assert row2["hash"] == h.xxh128_bytes(data + b"more").split(":")[1]
    wait_published(node, "games/written.db", data + b"more")


def test_empty_file_created_through_mount_is_published(node):
    open(node.path("training/empty.npz"), "wb").close()
    assert node.local("training", "empty.npz").stat().st_size == 0
    wait_published(node, "training/empty.npz", b"")
    wait_entry(node, "training", "empty.npz", lambda r: r["size"] == 0 and r["deleted"] == 0)


# --- POSIX behaviour ----------------------------------------------------------------------------

def test_errno_enoent(node):
    g = node.path("games")
    assert errno_of(os.stat, g / "missing") == errno.ENOENT
    assert errno_of(open, g / "missing", "rb") == errno.ENOENT
    assert errno_of(os.unlink, g / "missing") == errno.ENOENT
    assert errno_of(os.rmdir, g / "missing") == errno.ENOENT
    assert errno_of(os.rename, g / "missing", g / "other") == errno.ENOENT
    assert errno_of(open, g / "no-dir" / "file", "wb") == errno.ENOENT
    assert errno_of(os.listdir, g / "no-dir") == errno.ENOENT
    assert errno_of(os.stat, node.mnt / "no-such-category") == errno.ENOENT


def test_errno_eexist(node):
    g = node.path("games")
    (g / "f.db").write_bytes(b"x")
    os.mkdir(g / "d")
    assert errno_of(os.mkdir, g / "d") == errno.EEXIST
    assert errno_of(os.mkdir, g / "f.db") == errno.EEXIST
    assert errno_of(os.open, g / "f.db", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert errno_of(os.link, g / "f.db", g / "d") == errno.EEXIST
    assert errno_of(os.symlink, "f.db", g / "d") == errno.EEXIST
    assert errno_of(os.mkdir, node.path("models")) == errno.EEXIST
    assert read_bytes(g / "f.db") == b"x"


def test_errno_enotempty(node):
    g = node.path("games")
    os.makedirs(g / "full/sub")
    (g / "full/x.db").write_bytes(b"x")
    os.mkdir(g / "empty")
    assert errno_of(os.rmdir, g / "full") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, g / "full/sub") == 0
    assert errno_of(os.rmdir, g / "full") == errno.ENOTEMPTY  # x.db is still there
    # rename over a non-empty directory
    assert errno_of(os.rename, g / "empty", g / "full") == errno.ENOTEMPTY
    assert node.local("games", "full/x.db").exists()


def test_errno_eisdir(node):
    g = node.path("games")
    os.mkdir(g / "d")
    (g / "f.db").write_bytes(b"x")
    assert errno_of(open, g / "d", "wb") == errno.EISDIR
    assert errno_of(open, g / "d", "r+b") == errno.EISDIR
    assert errno_of(os.unlink, g / "d") == errno.EISDIR
    assert errno_of(os.rename, g / "f.db", g / "d") == errno.EISDIR


def test_errno_enotdir(node):
    g = node.path("games")
    (g / "f.db").write_bytes(b"x")
    os.mkdir(g / "d")
    assert errno_of(os.rmdir, g / "f.db") == errno.ENOTDIR
    assert errno_of(os.listdir, g / "f.db") == errno.ENOTDIR
    assert errno_of(open, g / "f.db" / "x", "wb") == errno.ENOTDIR
    assert errno_of(os.stat, g / "f.db" / "x") == errno.ENOTDIR
    assert errno_of(os.rename, g / "d", g / "f.db") == errno.ENOTDIR


def test_errno_exdev_across_categories(node):
    (node.path("games") / "f.db").write_bytes(b"x")
    os.mkdir(node.path("games/d"))
    assert errno_of(os.rename, node.path("games/f.db"), node.path("models/f.db")) == errno.EXDEV
    assert errno_of(os.rename, node.path("games/d"), node.path("training/d")) == errno.EXDEV
    assert errno_of(os.link, node.path("games/f.db"), node.path("models/f.db")) == errno.EXDEV
    assert node.path("games/f.db").exists()
    assert not node.path("models/f.db").exists()
    assert not node.local("models", "f.db").exists()


def test_rename_over_existing_file(node):
    a, b = h.random_bytes(30000, seed="A"), h.random_bytes(20000, seed="B")
    node.path("games/a.db").write_bytes(a)
    node.path("games/b.db").write_bytes(b)
    hash_a = wait_published(node, "games/a.db", a)
    wait_published(node, "games/b.db", b)

    os.rename(node.path("games/a.db"), node.path("games/b.db"))
    assert read_bytes(node.path("games/b.db")) == a
    assert errno_of(os.stat, node.path("games/a.db")) == errno.ENOENT
    assert "a.db" not in os.listdir(node.path("games"))
    assert not node.local("games", "a.db").exists()
    assert read_bytes(node.local("games", "b.db")) == a

    wait_entry(node, "games", "a.db", lambda r: r["deleted"] == 1,
               message="a.db deleted in the catalog")
    row = wait_entry(node, "games", "b.db",
                     lambda r: r["hash"] == hash_a.split(":")[1] and r["deleted"] == 0,
                     message="b.db carries a.db's hash in the catalog")
    assert row["size"] == len(a)
    assert mount_hash(node.path("games/b.db")) == hash_a

    # A rename to a new name, into a subdirectory, moves the entry.
    os.mkdir(node.path("games/sub"))
    os.rename(node.path("games/b.db"), node.path("games/sub/c.db"))
    assert read_bytes(node.path("games/sub/c.db")) == a
    wait_entry(node, "games", "b.db", lambda r: r["deleted"] == 1)
    wait_entry(node, "games", "sub/c.db",
               lambda r: r["hash"] == hash_a.split(":")[1] and r["deleted"] == 0)
    assert mount_hash(node.path("games/sub/c.db")) == hash_a


def test_unlink_through_mount(node):
    data = b"doomed" * 1000
    node.path("games/doomed.db").write_bytes(data)
    wait_published(node, "games/doomed.db", data)
    os.unlink(node.path("games/doomed.db"))
    assert "doomed.db" not in os.listdir(node.path("games"))
    assert not node.local("games", "doomed.db").exists()
    wait_entry(node, "games", "doomed.db", lambda r: r["deleted"] == 1,
               message="doomed.db deleted in the catalog")


def test_unlinked_open_file_still_reads(node):
    data = h.random_bytes(300000, seed="open-unlink")
    h.write_file(node.local("games", "open.db"), data)
    path = node.path("games/open.db")
    wait_until(path.exists, PUBLISH_WITHIN)
    with open(path, "rb") as f:
        head = f.read(1000)
        os.unlink(path)
        assert errno_of(os.stat, path) == errno.ENOENT
        assert "open.db" not in os.listdir(node.path("games"))
        rest = f.read()
        assert head + rest == data
        assert os.pread(f.fileno(), 100, 5000) == data[5000:5100]
    # An open writer keeps writing to its (now nameless) file.
    with open(node.path("games/w.db"), "w+b") as w:
        w.write(b"first")
        w.flush()
        os.unlink(node.path("games/w.db"))
        w.write(b"second")
        w.flush()
        assert os.pread(w.fileno(), 20, 0) == b"firstsecond"
    assert not node.local("games", "w.db").exists()


def test_fstat_of_unlinked_open_file(node):
    """POSIX: an open file keeps its attributes after its last name is gone."""
    data = h.random_bytes(12345, seed="fstat")
    path = node.path("games/f.db")
    path.write_bytes(data)
    with open(path, "rb") as f:
        os.unlink(path)
        st = os.fstat(f.fileno())
        assert st.st_size == len(data)
        assert st.st_nlink == 0
        assert f.read() == data
    with open(node.path("games/g.db"), "w+b") as g:
        g.write(data)
        g.flush()
        os.unlink(node.path("games/g.db"))
        assert os.fstat(g.fileno()).st_size == len(data)
        g.write(b"x")
        g.flush()
        assert os.fstat(g.fileno()).st_size == len(data) + 1


def test_hard_links(node):
    data = b"linked content\n" * 100
    node.path("games/orig.db").write_bytes(data)
    wait_published(node, "games/orig.db", data)
    assert os.stat(node.path("games/orig.db")).st_nlink == 1
    os.link(node.path("games/orig.db"), node.path("games/link.db"))
    st1, st2 = os.stat(node.path("games/orig.db")), os.stat(node.path("games/link.db"))
    assert st1.st_ino == st2.st_ino
    assert st1.st_nlink == 2 and st2.st_nlink == 2
    assert read_bytes(node.path("games/link.db")) == data
    assert os.stat(node.local("games", "link.db")).st_ino == \
        os.stat(node.local("games", "orig.db")).st_ino
    os.unlink(node.path("games/orig.db"))
    assert os.stat(node.path("games/link.db")).st_nlink == 1
    assert read_bytes(node.path("games/link.db")) == data


def test_write_through_one_hard_link_is_read_through_the_other(node):
    old, new = b"A" * 5000, b"B" * 7000
    node.path("games/one.db").write_bytes(old)
    os.link(node.path("games/one.db"), node.path("games/two.db"))
    assert read_bytes(node.path("games/one.db")) == old   # both now in the page cache
    assert read_bytes(node.path("games/two.db")) == old
    with open(node.path("games/two.db"), "r+b") as f:
        f.write(new)
    assert os.stat(node.path("games/one.db")).st_size == len(new)
    assert read_bytes(node.path("games/one.db")) == new
    assert read_bytes(node.local("games", "one.db")) == new


def test_symlinks_survive_a_restart(node):
    """A symlink is never published (it has no content of its own), but after a restart the
    mount still shows it, like any other entry of the node's data dir."""
    data = b"pointed at\n" * 10
    node.path("games/t.db").write_bytes(data)
    os.symlink("t.db", node.path("games/l.db"))
    node.restart()
    wait_until(lambda: "l.db" in os.listdir(node.path("games")), 10,
               message="symlink listed after the restart")
    assert os.readlink(node.path("games/l.db")) == "t.db"
    assert read_bytes(node.path("games/l.db")) == data


def test_symlinks(node):
    data = b"target bytes\n" * 50
    os.mkdir(node.path("games/sub"))
    node.path("games/sub/target.db").write_bytes(data)
    os.symlink("sub/target.db", node.path("games/link.db"))
    os.symlink("../sub/target.db", node.path("games/sub/rel.db"))
    link = node.path("games/link.db")
    assert os.readlink(link) == "sub/target.db"
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    assert read_bytes(link) == data
    assert read_bytes(node.path("games/sub/rel.db")) == data
    assert os.readlink(node.local("games", "link.db")) == "sub/target.db"
    assert "link.db" in os.listdir(node.path("games"))
    os.unlink(link)
    assert errno_of(os.lstat, link) == errno.ENOENT
    assert node.path("games/sub/target.db").exists()


def test_truncate(node):
    data = h.random_bytes(100000, seed="trunc")
    path = node.path("games/t.db")
    path.write_bytes(data)
    wait_published(node, "games/t.db", data)

    os.truncate(path, 1234)
    assert os.stat(path).st_size == 1234
    assert read_bytes(path) == data[:1234]
    assert read_bytes(node.local("games", "t.db")) == data[:1234]
    wait_published(node, "games/t.db", data[:1234])

    os.truncate(path, 5000)  # grows with zeros
    assert read_bytes(path) == data[:1234] + b"\0" * (5000 - 1234)
    wait_published(node, "games/t.db", data[:1234] + b"\0" * (5000 - 1234))

    with open(path, "r+b") as f:
        f.truncate(10)
    assert read_bytes(path) == data[:10]
    wait_published(node, "games/t.db", data[:10])

    with open(path, "wb"):  # O_TRUNC
        pass
    assert os.stat(path).st_size == 0
    wait_published(node, "games/t.db", b"")


def test_chmod(node):
    path = node.path("games/c.db")
    path.write_bytes(b"x")
    for mode in (0o600, 0o640, 0o755, 0o444):
        os.chmod(path, mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert stat.S_IMODE(os.stat(node.local("games", "c.db")).st_mode) == mode
    os.mkdir(node.path("games/d"))
    os.chmod(node.path("games/d"), 0o700)
    assert stat.S_IMODE(os.stat(node.path("games/d")).st_mode) == 0o700


def test_utime(node):
    path = node.path("games/u.db")
    path.write_bytes(b"x")
    mtime_ns = 1_700_000_000_123_456_789
    atime_ns = 1_600_000_000_000_000_001
    os.utime(path, ns=(atime_ns, mtime_ns))
    st = os.stat(path)
    assert st.st_mtime_ns == mtime_ns
    assert st.st_atime_ns == atime_ns
    assert os.stat(node.local("games", "u.db")).st_mtime_ns == mtime_ns
    os.utime(path)  # now
    assert abs(os.stat(path).st_mtime - time.time()) < 60


def test_mkdir_rmdir(node):
    os.makedirs(node.path("training/a/b/c"))
    assert os.path.isdir(node.path("training/a/b/c"))
    assert node.local("training", "a/b/c").is_dir()
    assert "a" in os.listdir(node.path("training"))
    os.rmdir(node.path("training/a/b/c"))
    assert errno_of(os.stat, node.path("training/a/b/c")) == errno.ENOENT
    assert not node.local("training", "a/b/c").exists()
    assert listing(node.path("training/a/b")) == []
    os.rmdir(node.path("training/a/b"))
    os.rmdir(node.path("training/a"))
    assert "a" not in os.listdir(node.path("training"))
    assert not node.local("training", "a").exists()


def test_fsync(node):
    data = h.random_bytes(200000, seed="fsync")
    fd = os.open(node.path("games/s.db"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        assert read_bytes(node.local("games", "s.db")) == data
        os.write(fd, b"tail")
        os.fdatasync(fd)
        assert read_bytes(node.local("games", "s.db")) == data + b"tail"
    finally:
        os.close(fd)
    # fsync of a read-only descriptor and of a directory work too.
    fd = os.open(node.path("games/s.db"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(node.path("games"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert errno_of(os.fsync, fd) in (0, errno.EINVAL)  # EINVAL: fsync not meaningful
    finally:
        os.close(fd)


def test_new_files_are_owned_by_the_caller(node):
    h.allow_traverse(node.mnt)
    os.mkdir(node.path("games/drop"))
    os.chmod(node.path("games/drop"), 0o777)
    out = run_py_as(f"""
        os.umask(0o027)
        d = {str(node.path("games/drop"))!r}
        create(d + "/by-nobody.db", b"written by nobody", 0o666)
        os.mkdir(d + "/nobody-dir", 0o777)
        create(d + "/nobody-dir/inner.db", b"inner", 0o644)
        os.symlink("by-nobody.db", d + "/nobody-link")
        out["read"] = read(d + "/by-nobody.db").decode()
    """)
    assert out["read"] == "written by nobody"
    for rel, mode in (("by-nobody.db", 0o640), ("nobody-dir", 0o750),
                      ("nobody-dir/inner.db", 0o640)):
        for path in (node.path("games/drop/" + rel), node.local("games", "drop/" + rel)):
            st = os.stat(path)
            assert (st.st_uid, st.st_gid) == (h.NOBODY, h.NOBODY), path
            assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
    st = os.lstat(node.path("games/drop/nobody-link"))
    assert (st.st_uid, st.st_gid) == (h.NOBODY, h.NOBODY)
    assert read_bytes(node.local("games", "drop/by-nobody.db")) == b"written by nobody"


def test_kernel_checks_permissions(node):
    h.allow_traverse(node.mnt)
    os.mkdir(node.path("games/private"), 0o755)
    secret = b"root's file\n"
    node.path("games/private/root.db").write_bytes(secret)
    os.chmod(node.path("games/private/root.db"), 0o644)
    node.path("games/private/closed.db").write_bytes(b"closed")
    os.chmod(node.path("games/private/closed.db"), 0o600)
    out = run_py_as(f"""
        import errno
        d = {str(node.path("games/private"))!r}
        out["create"] = err(create, d + "/new.db", b"x")
        out["mkdir"] = err(os.mkdir, d + "/sub")
        out["unlink"] = err(os.unlink, d + "/root.db")
        out["rename"] = err(os.rename, d + "/root.db", d + "/moved.db")
        out["write"] = err(open, d + "/root.db", "r+b")
        out["chmod"] = err(os.chmod, d + "/root.db", 0o666)
        out["read_closed"] = err(open, d + "/closed.db", "rb")
        out["read"] = read(d + "/root.db").decode()
    """)
    for op in ("create", "mkdir", "unlink", "rename", "write", "read_closed"):
        assert out[op] == errno.EACCES, (op, errno.errorcode.get(out[op], out[op]))
    assert out["chmod"] == errno.EPERM
    assert out["read"] == secret.decode()
    assert listing(node.local("games", "private")) == ["closed.db", "root.db"]
    assert stat.S_IMODE(os.stat(node.path("games/private/root.db")).st_mode) == 0o644


def test_allow_other_lets_a_non_root_user_list_and_read(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    data = h.random_bytes(5 * MiB + 7, seed="other")
    h.write_file(node.local("models", "shared.pth"), data)
    cluster.start()
    wait_until(node.path("models/shared.pth").exists, PUBLISH_WITHIN)
    h.allow_traverse(node.mnt)
    out = run_py_as(f"""
        m = {str(node.mnt)!r}
        out["root"] = sorted(os.listdir(m))
        out["models"] = sorted(os.listdir(m + "/models"))
        out["sha"] = hashlib.sha256(read(m + "/models/shared.pth")).hexdigest()
        out["state"] = os.getxattr(m + "/models/shared.pth", "user.meshfs.state").decode()
        out["hosts"] = sorted(os.listdir(m + "/.hosts/n1/models"))
    """)
    assert {"games", "models", "training", ".hosts"} <= set(out["root"])
    assert out["models"] == ["shared.pth"]
    assert out["sha"] == hashlib.sha256(data).hexdigest()
    assert out["state"] == "local"
    assert out["hosts"] == ["shared.pth"]


# --- read-only places ---------------------------------------------------------------------------

def test_mount_root_is_read_only(node):
    m = node.mnt
    assert errno_of(open, m / "new.db", "wb") == errno.EROFS
    assert errno_of(os.mkdir, m / "newdir") == errno.EROFS
    assert errno_of(os.symlink, "games", m / "link") == errno.EROFS
    assert errno_of(os.rmdir, m / "games") == errno.EROFS
    assert errno_of(os.rename, m / "games", m / "games2") == errno.EROFS
    assert errno_of(os.chmod, m, 0o700) == errno.EROFS
    assert errno_of(os.utime, m, (1, 1)) == errno.EROFS
    assert errno_of(os.mkdir, m / ".hosts" / "newhost") == errno.EROFS
    assert errno_of(os.rmdir, m / ".hosts" / "n1") == errno.EROFS
    assert sorted(os.listdir(m)) == sorted(["games", "models", "training", ".hosts"])


def test_hosts_view_is_read_only(make_cluster):
    cluster = make_cluster(start=False, extra_hosts=GHOST)
    node = cluster["n1"]
    data = b"own data\n" * 100
    h.write_file(node.local("games", "own.db"), data)
    h.write_file(node.local("games", "sub/deep.db"), data)
    cluster.start()
    mirror = node.host_path("n1", "games")
    wait_until(lambda: (mirror / "own.db").exists(), PUBLISH_WITHIN)
    f = mirror / "own.db"

    assert errno_of(open, f, "r+b") == errno.EROFS
    assert errno_of(open, f, "ab") == errno.EROFS
    assert errno_of(open, f, "wb") == errno.EROFS
    assert errno_of(open, mirror / "new.db", "wb") == errno.EROFS
    assert errno_of(open, mirror / "sub" / "new.db", "wb") == errno.EROFS
    assert errno_of(os.unlink, f) == errno.EROFS
    assert errno_of(os.rename, f, mirror / "renamed.db") == errno.EROFS
    assert errno_of(os.rename, node.path("games/own.db"), mirror / "x.db") == errno.EROFS
    assert errno_of(os.chmod, f, 0o600) == errno.EROFS
    assert errno_of(os.truncate, f, 0) == errno.EROFS
    assert errno_of(os.utime, f, (1, 1)) == errno.EROFS
    assert errno_of(os.mkdir, mirror / "newdir") == errno.EROFS
    assert errno_of(os.rmdir, mirror / "sub") == errno.EROFS
    assert errno_of(os.symlink, "own.db", mirror / "link") == errno.EROFS
    assert errno_of(os.link, f, mirror / "hard.db") == errno.EROFS
    assert errno_of(os.link, node.path("games/own.db"), mirror / "hard.db") == errno.EROFS
    assert errno_of(open, node.host_path("ghost", "games/new.db"), "wb") == errno.EROFS
    assert errno_of(os.mkdir, node.host_path("ghost", "models/d")) == errno.EROFS
    # Nothing changed underneath.
    assert read_bytes(node.local("games", "own.db")) == data
    assert stat.S_IMODE(os.stat(node.local("games", "own.db")).st_mode) == 0o644
    assert listing(node.local("games")) == ["own.db", "sub"]
    assert listing(node.local("games", "sub")) == ["deep.db"]


# --- /.hosts ------------------------------------------------------------------------------------

def test_hosts_view_shows_own_files_with_identical_bytes(make_cluster):
    cluster = make_cluster(start=False, extra_hosts=GHOST)
    node = cluster["n1"]
    files = {"games/a.db": h.random_bytes(10000, seed=1),
             "games/sub/b.db": h.random_bytes(5 * MiB, seed=2),
             "models/m.pth": h.random_bytes(777, seed=3)}
    for rel, data in files.items():
        cat, _, path = rel.partition("/")
        h.write_file(node.local(cat, path), data)
    cluster.start()
    for rel in files:
        wait_until(node.path(rel).exists, PUBLISH_WITHIN, message=f"{rel} shown")

    assert sorted(os.listdir(node.mnt / ".hosts")) == ["ghost", "n1"]
    assert listing(node.host_path("n1")) == ["games", "models", "training"]
    for rel, data in files.items():
        mirrored = node.host_path("n1", rel)
        assert read_bytes(mirrored) == data, rel
        assert os.stat(mirrored).st_size == len(data)
        assert h.getxattr(mirrored, "user.meshfs.hash") == h.xxh128_bytes(data)
    assert listing(node.host_path("n1", "games")) == listing(node.path("games"))
    assert listing(node.host_path("n1", "games/sub")) == ["b.db"]

    # A file added later shows up there too.
    h.write_file(node.local("training", "late.npz"), b"late")
    wait_until(lambda: (node.host_path("n1", "training/late.npz")).exists(), PUBLISH_WITHIN,
               message="late.npz under /.hosts/n1")
    assert read_bytes(node.host_path("n1", "training/late.npz")) == b"late"


def test_other_hosts_category_dirs_exist_and_are_empty(make_cluster):
    cluster = make_cluster(start=False, extra_hosts=GHOST)
    node = cluster["n1"]
    h.write_file(node.local("games", "mine.db"), b"mine")
    cluster.start()
    wait_until(node.path("games/mine.db").exists, PUBLISH_WITHIN)
    assert listing(node.host_path("ghost")) == ["games", "models", "training"]
    for cat in ("games", "models", "training"):
        d = node.host_path("ghost", cat)
        assert d.is_dir(), d
        assert os.listdir(d) == [], d
    assert errno_of(os.stat, node.host_path("ghost", "games/mine.db")) == errno.ENOENT
    assert errno_of(os.stat, node.mnt / ".hosts" / "nobody-such") == errno.ENOENT


# --- passthrough --------------------------------------------------------------------------------

def test_shared_storage_category_is_passed_through(make_cluster, tmp_path):
    shared = tmp_path / "nfs"
    (shared / "ringrift" / "training").mkdir(parents=True)
    shared_dir = shared / "ringrift" / "training"
    cluster = make_cluster(start=False, nodes={"n1": {"host": {
        "shared_storage": [str(shared / "ringrift")],
        "storage_paths": {"training": str(shared_dir)}}}})
    node = cluster["n1"]
    before = h.random_bytes(4 * MiB + 3, seed="nfs")
    h.write_file(shared_dir / "before.npz", before)
    h.write_file(node.local("games", "local.db"), b"local")
    cluster.start()

    mounted = node.path("training/before.npz")
    wait_until(mounted.exists, PUBLISH_WITHIN)
    assert read_bytes(mounted) == before
    assert h.getxattr(mounted, "user.meshfs.state") == "passthrough"
    assert h.getxattr(mounted, "user.meshfs.cached_bytes") == str(len(before))

    data = h.random_bytes(100000, seed="through")
    with open(node.path("training/written.npz"), "wb") as f:
        f.write(data)
    assert read_bytes(shared_dir / "written.npz") == data
    assert not (node.root / "data/training/written.npz").exists()
    w = node.path("training/written.npz")
    assert h.getxattr(w, "user.meshfs.state") == "passthrough"
    wait_published(node, "training/written.npz", data)
    assert h.getxattr(w, "user.meshfs.cached_bytes") == str(len(data))

    # Appends and changes go straight through, both ways.
    with open(w, "ab") as f:
        f.write(b"+")
    assert read_bytes(shared_dir / "written.npz") == data + b"+"
    h.write_file(shared_dir / "direct.npz", b"put there by another host")
    wait_until(node.path("training/direct.npz").exists, PUBLISH_WITHIN,
               message="a file put on the shared storage shows up")
    assert read_bytes(node.path("training/direct.npz")) == b"put there by another host"

    # The other categories are still this node's own.
    wait_until(node.path("games/local.db").exists, PUBLISH_WITHIN)
    assert h.getxattr(node.path("games/local.db"), "user.meshfs.state") == "local"


# --- meshfs status and meshfs sync --------------------------------------------------------------

def _populate(node, files):
    total = 0
    for rel, size in files.items():
        cat, _, path = rel.partition("/")
        h.write_file(node.local(cat, path), h.random_bytes(size, seed=rel))
        total += size
    return total


def test_status_json_against_a_running_node(make_cluster):
    cluster = make_cluster(start=False, extra_hosts=GHOST,
                           config={"auto_sync": {"strategy": "hybrid"},
                                   "cache": {"max_size": "3G"}})
    node = cluster["n1"]
    files = {"games/a_square8_2p.db": 1000, "games/sub/b.db": 2 * MiB + 1,
             "models/m.pth": 4 * MiB + 5, "training/t.npz": 333}
    total = _populate(node, files)
    cluster.start()

    def own(report):
        return next(x for x in report["hosts"] if x["name"] == "n1")

    report = wait_until(lambda: (lambda r: r if own(r)["files"] == len(files) else None)(
        node.status_json()), PUBLISH_WITHIN * 2, message="status counting every file")
    for key in ("node", "strategy", "health_score", "hosts", "stale_hosts", "critical_hosts",
                "recommendations", "cache", "queue"):
        assert key in report, key
    assert report["node"] == "n1"
    assert report["strategy"] == "hybrid"
    assert isinstance(report["health_score"], int) and 0 <= report["health_score"] <= 100
    assert sorted(x["name"] for x in report["hosts"]) == ["ghost", "n1"]
    for host in report["hosts"]:
        for key in ("name", "state", "circuit", "lag_s", "files", "bytes",
                    "unreplicated_bytes"):
            assert key in host, (host["name"], key)
        assert host["state"] in ("up", "degraded", "down")
        assert host["circuit"] in ("closed", "open", "half-open")
    me = own(report)
    assert me["state"] == "up"
    assert me["files"] == len(files)
    assert me["bytes"] == total
    assert me["unreplicated_bytes"] == total  # replication_target 2, no copy elsewhere
    assert isinstance(me["lag_s"], int) and 0 <= me["lag_s"] < 60
    ghost = next(x for x in report["hosts"] if x["name"] == "ghost")
    assert ghost["lag_s"] is None
    assert ghost["files"] == 0 and ghost["bytes"] == 0
    assert ghost["state"] == "down"
    for key in ("stale_hosts", "critical_hosts"):
        assert isinstance(report[key], list)
        assert "n1" not in report[key]
    assert isinstance(report["recommendations"], list)
    for rec in report["recommendations"]:
        assert rec["action"] in ("sync_now", "schedule")
        assert rec["priority"] in ("low", "normal", "high", "critical")
        assert rec["host"] != "n1"
    assert report["cache"]["max"] == 3 * 1024 ** 3
    assert report["cache"]["used"] == 0
    assert report["queue"] == 0

    # The human output names both hosts and exits 0.
    r = node.meshfs("status")
    assert r.returncode == 0, r.stderr
    assert "n1" in r.stdout and "ghost" in r.stdout

    # A file added later is counted.
    h.write_file(node.local("games", "later.db"), b"12345")
    wait_until(lambda: own(node.status_json())["bytes"] == total + 5, PUBLISH_WITHIN,
               message="status counting the new file")


SYNC_FILES = {
    # 3 of 7 are hex8 2-player, 4 are hex8 (any players), 5 are 2-player (any board)
    "games/canonical_hex8_2p.db": 100,
    "games/selfplay_hex8_2p.db": 100,
    "models/model_hex8_2p_v3.pth": 100,
    "games/canonical_hex8_4p.db": 100,
    "games/selfplay_square8_4p.db": 100,
    "games/canonical_square8_2p.db": 100,
    "training/square19_2p.npz": 100,
}


@pytest.fixture
def sync_node(make_cluster):
    cluster = make_cluster(start=False)
    node = cluster["n1"]
    _populate(node, SYNC_FILES)
    cluster.start()
    wait_until(lambda: node.health()["indexer"]["files"] == len(SYNC_FILES),
               PUBLISH_WITHIN * 2, message="every file published")
    return node


def test_sync_reports_the_files(sync_node):
    r = sync_node.meshfs("sync")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert len(SYNC_FILES) in numbers_in(r.stdout), r.stdout
    r = sync_node.meshfs("sync", "games")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert 5 in numbers_in(r.stdout), r.stdout
    assert len(SYNC_FILES) not in numbers_in(r.stdout), r.stdout
    r = sync_node.meshfs("sync", "models", "--priority", "critical")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert 1 in numbers_in(r.stdout), r.stdout


@pytest.mark.parametrize("args,count", [
    (["--board-type", "hex8", "--num-players", "2"], 3),
    (["--board-type", "hex8"], 4),
    (["--num-players", "2"], 5),
    (["games", "--board-type", "hex8", "--num-players", "2"], 2),
])
def test_sync_filters_by_board_and_players(sync_node, args, count):
    r = sync_node.meshfs("sync", *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    numbers = numbers_in(r.stdout)
    assert count in numbers, r.stdout
    assert not {c for c in (2, 3, 4, 5, 7) if c != count} & numbers, r.stdout


@pytest.mark.parametrize("args", [
    ["--priority", "urgent"],
    ["--priority"],
    ["--num-players", "many"],
    ["no-such-category"],
])
def test_sync_bad_usage_exits_2(sync_node, args):
    r = sync_node.meshfs("sync", *args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error says what is wrong"
    if args[0] == "--priority" and len(args) > 1:
        assert "priority" in r.stderr
