"""A cache that is too small: a full disk never produces a partial file (issue 4).

Node b has a tiny cache (`cache: {max_size: 8M}`) and is asked for a 20 MiB file that only
node a holds: read, `meshfs sync`, `user.meshfs.prefetch`, and AutoSync (b a replica target of
an ephemeral node). Checked as a user sees it: the read fails with EIO, never with short or
zero-filled data, `user.meshfs.last_error` and `meshfs status --json` (recent_failures) say the
cache has no room, `meshfs sync` exits 1 listing the file, the state never becomes `cached`,
other nodes never count b as a holder of the file, and files that do fit still work without
raising the limit.

Every node runs on its own loopback address with its own dirs (see meshfs_harness).
"""

import errno
import re
import time

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until
from test_cluster import read_in_child, sha256

MiB = 1 << 20
P = "user.meshfs."
WITHIN = 30 * h.SLOW    # publish, manifest pulls, an AutoSync pass and the fetch
SPACE = re.compile(r"cache space|no room|No space left", re.I)
TINY = {"cache": {"max_size": "8M"}}


def xattr(path, name):
    return h.getxattr(path, P + name)


def state_of(path):
    return xattr(path, "state")


def sources_of(path):
    return set(filter(None, xattr(path, "sources").split(",")))


def put(node, rel, data):
    cat, _, path = rel.partition("/")
    return h.write_file(node.local(cat, path), data)


def mount_hash(path):
    try:
        return xattr(path, "hash")
    except OSError:
        return None


def wait_shown(node, rel, data, timeout=WITHIN):
    want = h.xxh128_bytes(data)
    wait_until(lambda: mount_hash(node.path(rel)) == want, timeout,
               message=f"{node.name} showing {rel} with hash {want}")


def status_failures(node):
    return {f["path"]: f["error"] for f in node.status_json()["recent_failures"]}


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_never_complete(path, size):
    """What b has of @path is not complete, and reading any of it past what the cache can hold
    fails with EIO: no short read, no zeros."""
    assert state_of(path) != "cached", state_of(path)
    assert xattr(path, "synced_at") == ""
    assert int(xattr(path, "cached_bytes")) <= 8 * MiB
    # The part that cannot be here: an error, not the holes of a sparse cache file.
    out = read_in_child(path, 16 * MiB, 64 * 1024, 20)
    assert out["errno"] == errno.EIO, f"read at 16 MiB of a file that cannot fit: {out}"
    # The whole file: an error, not a short read that looks like the end of the file.
    out = read_in_child(path, 0, size, 30)
    assert out["errno"] == errno.EIO, f"whole read of a file that cannot fit: {out}"


@pytest.mark.meshfs_timeout(240)
def test_a_file_larger_than_the_cache_fails_cleanly_read_sync_prefetch(make_cluster):
    """a holds a 20 MiB file; b1, b2 and b3 have 8 MiB caches. b1 reads it, b2 runs
    `meshfs sync models`, b3 prefetches it: each fails cleanly (EIO, exit 1 with the file
    listed, the reason in last_error and in status recent_failures), none ever shows it
    cached, and no read of it returns short or zero-filled data."""
    tiny = {n: {"config": h.deep_merge(TINY, {"auto_sync": {"read_deadline_seconds": 5}})}
            for n in ("b1", "b2", "b3")}
    cluster = make_cluster(["a", "b1", "b2", "b3"], start=False, nodes=tiny)
    a, b1, b2, b3 = (cluster[n] for n in ("a", "b1", "b2", "b3"))
    size = 20 * MiB + 5
    big = h.random_bytes(size, seed="too-big")
    rel = "models/big_hex8_2p.pth"
    put(a, rel, big)
    cluster.start()
    for b in (b1, b2, b3):
        wait_shown(b, rel, big)
        assert state_of(b.path(rel)) == "remote"

    # b1 reads it: EIO within a bound, and the reason is the cache's room.
    path = b1.path(rel)
    out = read_in_child(path, 0, size, 30)
    assert out["errno"] == errno.EIO, f"reading a 20 MiB file through an 8 MiB cache: {out}"
    err = xattr(path, "last_error")
    print("b1 last_error after the read:", err)
    assert SPACE.search(err), err
    assert_never_complete(path, size)
    # Any byte it does hand out is the file's.
    out = read_in_child(path, 0, 4096, 20)
    assert out["errno"] in (0, errno.EIO), out
    if out["errno"] == 0:
        assert out["sha256"] == sha256(big[:4096]), out
    failures = status_failures(b1)
    assert SPACE.search(failures.get(rel, "")), failures
    human = b1.meshfs("status")
    assert human.returncode == 0, human.stderr
    assert any(ln.startswith(f"  {rel}: ") and SPACE.search(ln)
               for ln in human.stdout.splitlines()), human.stdout
    hl = b1.health()
    assert hl["cache"]["max"] == 8 * MiB and hl["cache"]["used"] <= 8 * MiB, hl["cache"]

    # b2: meshfs sync exits 1, the file listed with the reason, within a bound.
    t0 = time.monotonic()
    r = b2.meshfs("sync", "models", timeout=120)
    took = time.monotonic() - t0
    print(r.stdout)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1, r.stdout
    assert failed[0].startswith(f"FAILED {rel} (from a): "), failed[0]
    assert SPACE.search(failed[0]), failed[0]
    assert "0 of 1 files local and verified" in r.stdout, r.stdout
    assert took < 60 * h.SLOW, took
    assert SPACE.search(xattr(b2.path(rel), "last_error"))
    assert_never_complete(b2.path(rel), size)
    assert SPACE.search(status_failures(b2).get(rel, "")), b2.status_json()

    # b3: the prefetch is accepted and ends the same way, never cached on the way.
    path = b3.path(rel)
    h.setxattr(path, P + "prefetch", "high")
    seen = set()

    def failed_for_space():
        seen.add(state_of(path))
        return SPACE.search(xattr(path, "last_error"))
    wait_until(failed_for_space, WITHIN, interval=0.05, message="prefetch failing for space")
    for _ in range(30):                 # and stays so for a while
        seen.add(state_of(path))
        time.sleep(0.1)
    assert "cached" not in seen, seen
    assert_never_complete(path, size)
    assert SPACE.search(status_failures(b3).get(rel, "")), b3.status_json()
    for b in (b1, b2, b3):
        assert b.health()["cache"]["used"] <= 8 * MiB
        assert b.running()


@pytest.mark.meshfs_timeout(120)
def test_after_a_file_that_does_not_fit_smaller_files_still_work(make_cluster):
    """b (8 MiB cache) fails to read a 20 MiB file; without raising the limit, a 3 MiB file
    then reads and is cached (the failed partial copy must not hold the cache), and the
    failed copy can be evicted."""
    cluster = make_cluster(["a", "b"], start=False,
                           nodes={"b": {"config": h.deep_merge(
                               TINY, {"auto_sync": {"read_deadline_seconds": 5}})}})
    a, b = cluster["a"], cluster["b"]
    big = h.random_bytes(20 * MiB + 5, seed="too-big")
    small = h.random_bytes(3 * MiB + 1, seed="fits")
    put(a, "models/big.pth", big)
    put(a, "games/small.db", small)
    cluster.start()
    wait_shown(b, "models/big.pth", big)
    wait_shown(b, "games/small.db", small)
    out = read_in_child(b.path("models/big.pth"), 0, len(big), 30)
    assert out["errno"] == errno.EIO, out
    assert SPACE.search(xattr(b.path("models/big.pth"), "last_error"))

    def small_reads():
        return read_in_child(b.path("games/small.db"), 0, len(small), 20)["sha256"] == \
            sha256(small)
    wait_until(small_reads, 15, interval=1, message="games/small.db readable on b")
    wait_until(lambda: state_of(b.path("games/small.db")) == "cached", WITHIN,
               message="games/small.db cached on b")
    assert b.health()["cache"]["used"] <= 8 * MiB
    assert h.xattr_errno(b.path("models/big.pth"), P + "evict", "1") in (0, errno.ENOENT)


@pytest.mark.meshfs_timeout(240)
def test_a_replica_that_does_not_fit_is_never_advertised(make_cluster):
    """e is ephemeral with replication_target 2: p1 (8 MiB cache) and p2 are the persistent
    hosts that could take its 20 MiB file. p2 does; p1 has no room, says so in its manifest
    header, and is passed over: no node ever lists p1 as a source of the file, p1's manifest
    has no entry for it, p1 never shows it cached nor uses its cache, and e keeps counting the
    file as unreplicated (critical in its status): there is no third host to take it."""
    cluster = make_cluster(["e", "p1", "p2"], start=False,
                           config={"sync_routing": {"replication_target": 2}},
                           nodes={"e": {"host": {"is_ephemeral": True},
                                        "config": {"auto_sync": {"shutdown_flush_seconds": 0}}},
                                  "p1": {"config": TINY}})
    e, p1, p2 = cluster["e"], cluster["p1"], cluster["p2"]
    size = 20 * MiB + 11
    data = h.random_bytes(size, seed="replica-too-big")
    rel = "games/selfplay_hex8_4p.db"
    put(e, rel, data)
    cluster.start()
    wait_until(lambda: state_of(p2.path(rel)) == "cached", WITHIN,
               message=f"{rel} cached on p2")
    assert read_bytes(p2.path(rel)) == data
    wait_until(lambda: sources_of(e.path(rel)) == {"e", "p2"}, WITHIN,
               message=f"e counting p2 as a source of {rel}")
    # For a while (several AutoSync passes): p1 is never a source anywhere.
    t_end = time.monotonic() + 8 * h.SLOW
    while time.monotonic() < t_end:
        for n in (e, p1, p2):
            assert "p1" not in sources_of(n.path(rel)), (n.name, sources_of(n.path(rel)))
        assert state_of(p1.path(rel)) != "cached"
        time.sleep(0.2)
    assert not [x for x in h.catalog_entries(p1.state_dir, host="p1", category="games",
                                             path=rel.partition("/")[2])
                if not x["deleted"]], "p1's manifest lists a copy it does not have"
    rep = e.status_json()
    me = next(x for x in rep["hosts"] if x["name"] == "e")
    assert me["unreplicated_bytes"] == size, me
    assert "e" in rep["critical_hosts"], rep
    assert p1.health()["cache"]["used"] == 0


@pytest.mark.meshfs_timeout(180)
def test_replica_targets_pass_over_a_host_without_room(make_cluster):
    """e (ephemeral, replication_target 2) writes six 10 MiB files; p1's cache holds 8 MiB, so
    each file goes to p2 and p3 instead, whatever the rendezvous order says (p1 would be among
    the first two for some of six files), and e has nothing unreplicated left."""
    cluster = make_cluster(["e", "p1", "p2", "p3"],
                           config={"sync_routing": {"replication_target": 2}},
                           nodes={"e": {"host": {"is_ephemeral": True}},
                                  "p1": {"config": TINY}})
    e, p1, p2, p3 = (cluster[n] for n in ("e", "p1", "p2", "p3"))
    rels = [f"games/eph_{i}_hex8_2p.db" for i in range(6)]
    for i, rel in enumerate(rels):
        put(e, rel, h.random_bytes(10 * MiB, seed=f"room{i}"))
    for rel in rels:
        wait_until(lambda rel=rel: sources_of(e.path(rel)) == {"e", "p2", "p3"}, 2 * WITHIN,
                   message=f"{rel} held by p2 and p3")
    wait_until(lambda: e.health()["unreplicated_bytes"] == 0, WITHIN,
               message="e's unreplicated_bytes 0")
    for rel in rels:
        assert state_of(p1.path(rel)) == "remote", rel
        assert state_of(p2.path(rel)) == "cached", rel
    assert p1.health()["cache"]["used"] == 0
