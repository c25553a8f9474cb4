"""The data server over real HTTP: manifest, chunk lists, file content, notify, metrics, auth.

Each test runs one real node (`meshfs serve`, no mount) on its own loopback address and talks to
its data server with http.client, which sends the request target exactly as written (curl
would normalise `../` away), and checks what docs/protocol.md promises: NDJSON manifests with a
header and a trailer, chunk hashes equal to XXH3-128 of each 4 MiB slice (computed by xxhsum),
bytes and ranges equal to the file's, ETag equal to the version hash, 401 without the token, and
never a byte from outside a category root whatever the path says.
"""

import errno
import http.client
import json
import os
import re
import socket
import time

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until

MiB = 1 << 20
CHUNK = 4 * MiB
PUBLISH_WITHIN = 10
TOKEN = "s3cret-token-for-tests"


# --- helpers ------------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {self.body[:200]!r}>"


def request(node, method, target, headers=None, body=None, token=None, source=None,
            timeout=60):
    """Sends one request to @node's data server with @target written as is; returns a Resp
    (header names lowercased)."""
    conn = http.client.HTTPConnection(node.address, node.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def get(node, target, **kw):
    return request(node, "GET", target, **kw)


def manifest(node, since=0, token=None):
    """(header, entries, trailer) of GET /v1/manifest?since=SINCE."""
    r = get(node, f"/v1/manifest?since={since}", token=token)
    assert r.status == 200, r
    assert r.header("content-type") == "application/x-ndjson", r
    lines = r.body.decode().splitlines()
    assert len(lines) >= 2, r
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    entries = [json.loads(line) for line in lines[1:-1]]
    assert header.get("manifest") == 1 and trailer.get("end") is True, lines
    return header, entries, trailer


def entry_map(entries):
    return {(e["category"], e["path"]): e for e in entries}


def wait_manifest(node, want, since=0, token=None, timeout=PUBLISH_WITHIN):
    """Waits until the manifest since @since has an entry for every (category, path) of @want
    ({key: hash}, or {key: None} for a deleted entry); returns (header, entries, trailer)."""
    def ready():
        got = manifest(node, since, token)
        m = entry_map(got[1])
        for key, hsh in want.items():
            e = m.get(key)
            if e is None:
                return None
            if hsh is None and not e.get("deleted"):
                return None
            if hsh is not None and e.get("hash") != hsh:
                return None
        return got
    return wait_until(ready, timeout, message=f"manifest of {node.name} listing {list(want)}")


def chunk_hashes(data):
    return [h.xxh128_bytes(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]


# Not the default port: the harness keeps clusters of one pytest process apart by subnet, but
# another suite running at the same time starts from the same subnets, and a node of its on our
# address would answer for ours.
PORT = 28766


def serve(make_cluster, names=("n1",), **kwargs):
    return make_cluster(list(names), start=False, port=PORT, **kwargs)


def start(cluster, *names):
    cluster.start(*names, mode="serve")
    return cluster


# --- manifest -----------------------------------------------------------------------------------

def test_manifest_lists_every_published_file(make_cluster):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    files = {
        ("games", "canonical_hex8_2p.db"): h.random_bytes(70_000, seed=1),
        ("models", "m.pth"): h.random_bytes(5 * MiB + 17, seed=2),
        ("training", "sub/dir/x.npz"): h.random_bytes(1234, seed=3),
        ("games", "empty.db"): b"",
        ("games", "ünïcode name.db"): b"utf-8 names travel",
    }
    for (cat, rel), data in files.items():
        h.write_file(n1.local(cat, rel), data)
    start(cluster)
    want = {key: h.xxh128_bytes(data) for key, data in files.items()}
    header, entries, trailer = wait_manifest(n1, want)

    assert header["node"] == "n1" and header["since"] == 0
    assert trailer["seq"] == header["seq"]
    assert trailer["count"] == len(entries) == len(files)
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(0 < s <= header["seq"] for s in seqs)
    m = entry_map(entries)
    for (cat, rel), data in files.items():
        e = m[(cat, rel)]
        st = os.stat(n1.local(cat, rel))
        assert e["size"] == len(data) == st.st_size
        assert e["mtime_ns"] == st.st_mtime_ns
        assert e["hash"] == h.xxh128(n1.local(cat, rel))
        assert e["origin"] == "n1"
        assert "deleted" not in e
    # The catalog agrees.
    rows = {(r["category"], r["path"]): r for r in h.catalog_entries(n1.state_dir, host="n1")}
    assert {k: rows[k]["seq"] for k in m} == {k: e["seq"] for k, e in m.items()}

    # Nothing changed since the header's seq: header and trailer only.
    head = header["seq"]
    h2, e2, t2 = manifest(n1, head)
    assert e2 == [] and h2["seq"] == head and h2["since"] == head
    assert t2 == {"end": True, "seq": head, "count": 0}

    # One new file: exactly one entry.
    new = h.random_bytes(4096, seed=4)
    h.write_file(n1.local("models", "new.pth"), new)
    h3, e3, t3 = wait_manifest(n1, {("models", "new.pth"): h.xxh128_bytes(new)}, since=head)
    assert [(e["category"], e["path"]) for e in e3] == [("models", "new.pth")]
    assert e3[0]["seq"] > head and h3["seq"] == t3["seq"] == e3[0]["seq"]
    assert t3["count"] == 1

    # A deleted file: one tombstone.
    head = h3["seq"]
    os.unlink(n1.local("games", "canonical_hex8_2p.db"))
    _, e4, t4 = wait_manifest(n1, {("games", "canonical_hex8_2p.db"): None}, since=head)
    assert e4 == [{"seq": e4[0]["seq"], "category": "games", "path": "canonical_hex8_2p.db",
                   "deleted": True}]
    assert t4["count"] == 1 and e4[0]["seq"] > head
    # ... which a full pull shows too, with the rest unchanged.
    _, e5, _ = manifest(n1, 0)
    m5 = entry_map(e5)
    assert m5[("games", "canonical_hex8_2p.db")].get("deleted") is True
    assert m5[("models", "m.pth")]["hash"] == want[("models", "m.pth")]

    # HEAD: the headers, no body.
    r = request(n1, "HEAD", "/v1/manifest?since=0")
    assert r.status == 200 and r.body == b""
    assert r.header("content-type") == "application/x-ndjson"


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "", "99999999999999999999", "0x10",
                                   "1%20"])
def test_manifest_bad_since_is_400(make_cluster, since):
    cluster = start(serve(make_cluster))
    r = get(cluster["n1"], f"/v1/manifest?since={since}")
    assert r.status == 400, r
    assert "since" in r.json()["error"]


@pytest.mark.meshfs_timeout(240)
def test_manifest_pages_through_many_entries(make_cluster):
    """More entries than one page (1000): all of them, in seq order, and `since` in the middle
    of a page gives exactly the later ones."""
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    n = 2500
    for i in range(n):
        h.write_file(n1.local("games", f"g{i // 500}/f{i:05d}.db"), f"file {i}\n")
    start(cluster)

    def all_there():
        header, entries, trailer = manifest(n1)
        return (header, entries, trailer) if len(entries) == n else None
    header, entries, trailer = wait_until(all_there, 120, message=f"{n} entries in the manifest")
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == n
    assert trailer == {"end": True, "seq": header["seq"], "count": n}
    assert {e["path"] for e in entries} == {f"g{i // 500}/f{i:05d}.db" for i in range(n)}
    for e in entries[:50]:
        i = int(e["path"][-8:-3])
        assert e["hash"] == h.xxh128_bytes(f"file {i}\n")

    mid = seqs[1234]
    _, later, t = manifest(n1, mid)
    assert [e["seq"] for e in later] == seqs[1235:]
    assert t["count"] == n - 1235 and t["seq"] == header["seq"]


# --- chunks -------------------------------------------------------------------------------------

def test_chunks_match_the_file(make_cluster):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    big = h.random_bytes(2 * CHUNK + 123_457, seed=5)
    exact = h.random_bytes(CHUNK, seed=6)
    h.write_file(n1.local("models", "dir/big.pth"), big)
    h.write_file(n1.local("models", "exact.pth"), exact)
    h.write_file(n1.local("games", "empty.db"), b"")
    start(cluster)
    wait_manifest(n1, {("models", "dir/big.pth"): h.xxh128_bytes(big),
                       ("models", "exact.pth"): h.xxh128_bytes(exact),
                       ("games", "empty.db"): h.xxh128_bytes(b"")})

    r = get(n1, "/v1/chunks/models/dir/big.pth")
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    doc = r.json()
    whole = h.xxh128(n1.local("models", "dir/big.pth"))
    assert doc["category"] == "models" and doc["path"] == "dir/big.pth"
    assert doc["size"] == len(big)
    assert doc["mtime_ns"] == os.stat(n1.local("models", "dir/big.pth")).st_mtime_ns
    assert doc["hash"] == whole
    assert doc["chunk_size"] == CHUNK
    assert len(doc["chunks"]) == 3 == -(-len(big) // CHUNK)
    assert doc["chunks"] == chunk_hashes(big)
    assert r.header("etag") == f'"{whole}"'

    doc = get(n1, "/v1/chunks/models/exact.pth").json()
    assert doc["chunks"] == chunk_hashes(exact) and len(doc["chunks"]) == 1
    doc = get(n1, "/v1/chunks/games/empty.db").json()
    assert doc["size"] == 0 and doc["chunks"] == []

    # Percent-encoded segments are decoded.
    assert get(n1, "/v1/chunks/models/dir/%62ig.pth").json()["hash"] == whole

    # If-Match
    assert get(n1, "/v1/chunks/models/dir/big.pth",
               headers={"If-Match": f'"{whole}"'}).status == 200
    assert get(n1, "/v1/chunks/models/dir/big.pth",
               headers={"If-Match": f'"xxh3-128:{"0" * 32}", "{whole}"'}).status == 200
    r = get(n1, "/v1/chunks/models/dir/big.pth", headers={"If-Match": f'"xxh3-128:{"0" * 32}"'})
    assert r.status == 412 and r.header("etag") == f'"{whole}"'
    assert get(n1, "/v1/chunks/models/dir/big.pth",
               headers={"If-Match": f'W/"{whole}"'}).status == 412

    assert get(n1, "/v1/chunks/models/nope.pth").status == 404
    assert get(n1, "/v1/chunks/nosuchcat/big.pth").status == 404
    assert get(n1, "/v1/chunks/models/../models/exact.pth").status == 400

    # Deleted: 404.
    os.unlink(n1.local("models", "exact.pth"))
    wait_manifest(n1, {("models", "exact.pth"): None})
    assert get(n1, "/v1/chunks/models/exact.pth").status == 404


def test_block_hashes_come_with_a_range_of_whole_blocks(make_cluster):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    BLOCK = 64 * 1024
    big = h.random_bytes(CHUNK + 3 * BLOCK + 100, seed=9)   # chunk 1: 4 blocks, the last short
    h.write_file(n1.local("models", "big.pth"), big)
    h.write_file(n1.local("models", "tiny.pth"), b"tiny")
    start(cluster)
    whole = h.xxh128_bytes(big)
    wait_manifest(n1, {("models", "big.pth"): whole})
    want = {"X-Meshfs-Want-Blocks": "1"}

    def blocks_of(first_block, n):
        return [h.xxh128_bytes(big[(first_block + i) * BLOCK:(first_block + i + 1) * BLOCK])
                for i in range(n)]

    def ask(first, last, headers=want):
        r = get(n1, "/v1/files/models/big.pth", headers=dict(headers, Range=f"bytes={first}-{last}"))
        assert r.status == 206 and r.body == big[first:last + 1], r
        return r.header("x-meshfs-blocks")

    # Three blocks in the middle of chunk 0.
    assert ask(5 * BLOCK, 8 * BLOCK - 1) == f"{BLOCK} 5 " + ",".join(blocks_of(5, 3))
    # Across the chunk boundary, to the end of the file (the last block is short).
    assert ask(63 * BLOCK, len(big) - 1) == f"{BLOCK} 63 " + ",".join(blocks_of(63, 5))
    # Not asked for, not whole blocks, or more than a chunk's worth: no hashes (the bytes
    # are served all the same).
    assert ask(0, BLOCK - 1, headers={}) is None
    assert ask(100, BLOCK - 1) is None
    assert ask(0, BLOCK) is None
    assert ask(0, CHUNK + BLOCK - 1) is None
    # A file of one block: its hash is the block's.
    r = get(n1, "/v1/files/models/tiny.pth", headers=dict(want, Range="bytes=0-3"))
    assert r.status == 206 and r.header("x-meshfs-blocks") == f"{BLOCK} 0 " + h.xxh128_bytes(b"tiny")


# --- files --------------------------------------------------------------------------------------

@pytest.mark.meshfs_timeout(240)
def test_files_content_ranges_and_etag(make_cluster):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    big = h.random_bytes(50 * MiB, seed=7)
    small = h.random_bytes(10_000, seed=8)
    h.write_file(n1.local("models", "big.pth"), big)
    h.write_file(n1.local("games", "sub/small.db"), small)
    h.write_file(n1.local("games", "empty.db"), b"")
    start(cluster)
    wait_manifest(n1, {("models", "big.pth"): h.xxh128_bytes(big),
                       ("games", "sub/small.db"): h.xxh128_bytes(small),
                       ("games", "empty.db"): h.xxh128_bytes(b"")}, timeout=60)
    etag_big = f'"{h.xxh128(n1.local("models", "big.pth"))}"'
    etag_small = f'"{h.xxh128_bytes(small)}"'

    # The whole 50 MiB file.
    r = get(n1, "/v1/files/models/big.pth")
    assert r.status == 200
    assert len(r.body) == len(big) and r.body == big
    assert r.header("content-length") == str(len(big))
    assert r.header("etag") == etag_big
    assert r.header("accept-ranges") == "bytes"
    assert r.header("content-type") == "application/octet-stream"

    def rng(target, spec, data, first, last, etag):
        r = get(n1, target, headers={"Range": spec})
        assert r.status == 206, (spec, r)
        assert r.body == data[first:last + 1], spec
        assert r.header("content-range") == f"bytes {first}-{last}/{len(data)}", spec
        assert r.header("content-length") == str(last - first + 1)
        assert r.header("etag") == etag

    size = len(big)
    rng("/v1/files/models/big.pth", "bytes=0-99", big, 0, 99, etag_big)
    rng("/v1/files/models/big.pth", "bytes=20000000-20999999", big, 20_000_000, 20_999_999,
        etag_big)
    rng("/v1/files/models/big.pth", f"bytes={CHUNK}-{2 * CHUNK - 1}", big, CHUNK,
        2 * CHUNK - 1, etag_big)
    rng("/v1/files/models/big.pth", "bytes=-4096", big, size - 4096, size - 1, etag_big)
    rng("/v1/files/models/big.pth", f"bytes={size - 10}-", big, size - 10, size - 1, etag_big)
    rng("/v1/files/models/big.pth", f"bytes={size - 1}-{size + 1000}", big, size - 1,
        size - 1, etag_big)
    rng("/v1/files/games/sub/small.db", "bytes=0-", small, 0, len(small) - 1, etag_small)
    rng("/v1/files/games/sub/small.db", "bytes=-999999", small, 0, len(small) - 1, etag_small)
    rng("/v1/files/games/sub/small.db", "bytes=9999-9999", small, 9999, 9999, etag_small)

    for spec in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0",
                 "bytes=99999999999999999999999-"):
        r = get(n1, "/v1/files/models/big.pth", headers={"Range": spec})
        assert r.status == 416, (spec, r)
        assert r.header("content-range") == f"bytes */{size}", spec
    # Not one well-formed byte range: ignored, the whole content.
    for spec in ("bytes=5-2", "bytes=0-1,5-6", "items=0-1", "bytes=x-"):
        r = get(n1, "/v1/files/games/sub/small.db", headers={"Range": spec})
        assert r.status == 200 and r.body == small, spec
    # If-Range with another version: the whole content; with this one: the range.
    r = get(n1, "/v1/files/games/sub/small.db",
            headers={"Range": "bytes=0-9", "If-Range": f'"xxh3-128:{"1" * 32}"'})
    assert r.status == 200 and r.body == small
    r = get(n1, "/v1/files/games/sub/small.db",
            headers={"Range": "bytes=0-9", "If-Range": etag_small})
    assert r.status == 206 and r.body == small[:10]

    # If-Match
    r = get(n1, "/v1/files/models/big.pth", headers={"If-Match": f'"xxh3-128:{"f" * 32}"'})
    assert r.status == 412 and r.header("etag") == etag_big and big[:64] not in r.body
    r = get(n1, "/v1/files/games/sub/small.db", headers={"If-Match": etag_small})
    assert r.status == 200 and r.body == small
    r = get(n1, "/v1/files/games/sub/small.db",
            headers={"If-Match": "*", "Range": "bytes=1-2"})
    assert r.status == 206 and r.body == small[1:3]

    # HEAD: the same headers, no body.
    r = request(n1, "HEAD", "/v1/files/models/big.pth")
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == str(size) and r.header("etag") == etag_big
    r = request(n1, "HEAD", "/v1/files/models/big.pth", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.header("content-range") == f"bytes 10-19/{size}"

    # An empty file.
    r = get(n1, "/v1/files/games/empty.db")
    assert r.status == 200 and r.body == b"" and r.header("content-length") == "0"
    assert r.header("etag") == f'"{h.xxh128_bytes(b"")}"'
    r = get(n1, "/v1/files/games/empty.db", headers={"Range": "bytes=0-"})
    assert r.status == 416 and r.header("content-range") == "bytes */0"

    # Unknown paths, wrong methods.
    assert get(n1, "/v1/files/games/nope.db").status == 404
    assert get(n1, "/v1/files/games/sub").status == 404
    assert get(n1, "/v1/files/games").status == 404
    r = request(n1, "POST", "/v1/files/games/sub/small.db", body=b"x")
    assert r.status == 405 and "GET" in r.header("allow")
    assert request(n1, "DELETE", "/v1/files/games/sub/small.db").status == 405
    assert get(n1, "/v1/nothing").status == 404


def test_client_that_goes_away_mid_transfer(make_cluster):
    """A client that drops the connection in the middle of a large file costs the server
    nothing lasting: it keeps serving (no SIGPIPE from sendfile), and the next full read is
    right."""
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    big = h.random_bytes(40 * MiB, seed=9)
    h.write_file(n1.local("models", "big.pth"), big)
    start(cluster)
    wait_manifest(n1, {("models", "big.pth"): h.xxh128_bytes(big)}, timeout=60)
    for _ in range(5):
        s = socket.create_connection((n1.address, n1.port), timeout=10)
        s.sendall(b"GET /v1/files/models/big.pth HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()   # RST with most of the body unsent
    assert get(n1, "/v1/health").status == 200
    r = get(n1, "/v1/files/models/big.pth")
    assert r.status == 200 and r.body == big
    assert n1.running()


def test_changed_file_is_not_served_under_the_old_etag(make_cluster):
    """A file changed after it was hashed is never sent with the old version's ETag: until
    the indexer has republished it the answer is 503 "version changed"."""
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    old = h.random_bytes(100_000, seed=10)
    h.write_file(n1.local("games", "a.db"), old)
    start(cluster)
    wait_manifest(n1, {("games", "a.db"): h.xxh128_bytes(old)})
    # Restart with a long quiet period, so the change below stays unpublished for the test.
    n1.stop()
    n1.config_extra["publish_quiet_seconds"] = 120
    n1.start(mode="serve")
    wait_manifest(n1, {("games", "a.db"): h.xxh128_bytes(old)})
    assert get(n1, "/v1/files/games/a.db").body == old

    # Same size, new bytes, new mtime.
    new = h.random_bytes(100_000, seed=11)
    h.write_file(n1.local("games", "a.db"), new)
    r = get(n1, "/v1/files/games/a.db")
    assert r.status == 503, r
    assert r.header("retry-after") and "version changed" in r.json()["error"]
    assert old[:64] not in r.body and new[:64] not in r.body
    r = request(n1, "HEAD", "/v1/files/games/a.db")
    assert r.status == 503 and r.header("etag") is None
    # Same size and mtime put back: the ctime still tells.
    st = os.stat(n1.local("games", "a.db"))
    entry = entry_map(manifest(n1)[1])[("games", "a.db")]
    os.utime(n1.local("games", "a.db"), ns=(st.st_atime_ns, entry["mtime_ns"]))
    r = get(n1, "/v1/files/games/a.db")
    assert r.status == 503 and new[:64] not in r.body
    r = get(n1, "/v1/files/games/a.db", headers={"Range": "bytes=0-9"})
    assert r.status == 503


# --- confinement ----------------------------------------------------------------------------------

def test_paths_are_confined_to_the_category_roots(make_cluster, tmp_path):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    secret = b"TOP-SECRET-" + h.random_bytes(64, seed=12).hex().encode()
    outside = h.write_file(n1.root / "secret.txt", secret)       # beside data/games
    elsewhere = tmp_path / "elsewhere"
    h.write_file(elsewhere / "victim.db", secret)
    h.write_file(elsewhere / "f.db", secret)
    h.write_file(n1.local("games", "ok.db"), b"fine")
    h.write_file(n1.local("games", "victim.db"), b"published first")
    h.write_file(n1.local("games", "sub/f.db"), b"in a subdir")
    os.symlink("/etc/passwd", n1.local("games", "passwd.db"))
    os.symlink(str(outside), n1.local("games", "secret.db"))
    os.symlink(str(n1.root), n1.local("games", "rootlink"))
    start(cluster)
    wait_manifest(n1, {("games", "ok.db"): h.xxh128_bytes(b"fine"),
                       ("games", "victim.db"): h.xxh128_bytes(b"published first"),
                       ("games", "sub/f.db"): h.xxh128_bytes(b"in a subdir")})
    assert get(n1, "/v1/files/games/ok.db").body == b"fine"
    keys = set(entry_map(manifest(n1)[1]))
    assert ("games", "passwd.db") not in keys and ("games", "secret.db") not in keys

    passwd = open("/etc/passwd", "rb").read()

    def never_leaks(r):
        assert secret not in r.body and passwd[:32] not in r.body and b"root:" not in r.body, r

    bad = [
        "/v1/files/games/../secret.txt",
        "/v1/files/games/../../../../../../etc/passwd",
        "/v1/files/games/%2e%2e/secret.txt",
        "/v1/files/games/%2E%2E/%2e%2e/etc/passwd",
        "/v1/files/games/..%2fsecret.txt",
        "/v1/files/games/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/files/games/sub/..%2f..%2fsecret.txt",
        "/v1/files//etc/passwd",
        "/v1/files/games//etc/passwd",
        "/v1/files/%2fetc%2fpasswd",
        "/v1/files/games/%2fetc%2fpasswd",
        "/v1/files/games/ok.db%00",
        "/v1/files/games/ok.db%00.txt",
        "/v1/files/games/%00/../secret.txt",
        "/v1/files/games/./ok.db",
        "/v1/files/games/%2e/ok.db",
        "/v1/files/games/sub/",
        "/v1/files/games/%0a.db",
        "/v1/files/games/%zz",
        "/v1/files/games/%2",
        "/v1/files/..",
        "/v1/files/",
    ]
    for target in bad:
        for endpoint in ("files", "chunks"):
            t = target.replace("/v1/files/", f"/v1/{endpoint}/", 1)
            r = get(n1, t)
            assert r.status == 400, (t, r)
            never_leaks(r)

    not_found = [
        "/v1/files/nosuchcat/ok.db",
        "/v1/files/etc/passwd",
        "/v1/files/games/passwd.db",          # symlink to /etc/passwd in the data dir
        "/v1/files/games/secret.db",          # symlink to a file beside the root
        "/v1/files/games/rootlink/secret.txt",
        "/v1/files/games/rootlink/data/games/ok.db",
        "/v1/files/games/secret.txt",
    ]
    for target in not_found:
        for endpoint in ("files", "chunks"):
            t = target.replace("/v1/files/", f"/v1/{endpoint}/", 1)
            r = get(n1, t)
            assert r.status == 404, (t, r)
            never_leaks(r)

    # A published file replaced by a symlink to outside, and a published file's directory
    # replaced by a symlink to a directory outside. Restarted with a long quiet period first,
    # so the catalog still lists both while we ask: it is the open beneath the category
    # directory that has to refuse them.
    n1.stop()
    n1.config_extra["publish_quiet_seconds"] = 120
    n1.start(mode="serve")
    wait_manifest(n1, {("games", "victim.db"): h.xxh128_bytes(b"published first"),
                       ("games", "sub/f.db"): h.xxh128_bytes(b"in a subdir")})
    os.replace(n1.local("games", "victim.db"), tmp_path / "victim.moved")
    os.symlink(str(elsewhere / "victim.db"), n1.local("games", "victim.db"))
    os.rename(n1.local("games", "sub"), n1.local("games", "sub.real"))
    os.symlink(str(elsewhere), n1.local("games", "sub"))
    for target in ("/v1/files/games/victim.db", "/v1/files/games/sub/f.db"):
        for headers in ({}, {"Range": "bytes=0-"}, {"Range": "bytes=-5"}):
            r = get(n1, target, headers=headers)
            assert r.status == 404, (target, r)
            never_leaks(r)
    m = entry_map(manifest(n1)[1])
    assert not m[("games", "victim.db")].get("deleted")
    assert not m[("games", "sub/f.db")].get("deleted")
    log = n1.log_text()
    assert "refused games/victim.db: a symlink on the way" in log
    assert "refused games/sub/f.db: a symlink on the way" in log


# --- auth ---------------------------------------------------------------------------------------

def test_token_is_required_except_for_health(make_cluster, tmp_path):
    token_file = h.write_file(tmp_path / "token", f"  {TOKEN}\n")
    cluster = serve(make_cluster, config={"cluster_token_file": str(token_file)})
    n1 = cluster["n1"]
    h.write_file(n1.local("games", "a.db"), b"hello")
    start(cluster)
    wait_manifest(n1, {("games", "a.db"): h.xxh128_bytes(b"hello")}, token=TOKEN)

    targets = ["/v1/manifest?since=0", "/v1/chunks/games/a.db", "/v1/files/games/a.db",
               "/metrics", "/v1/nothing", "/v1/files/games/../../etc/passwd"]
    for target in targets:
        for tok in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
            r = get(n1, target, token=tok)
            assert r.status == 401, (target, tok, r)
            assert r.header("www-authenticate") == "Bearer"
            assert b"hello" not in r.body
        r = get(n1, target, headers={"Authorization": TOKEN})   # no "Bearer "
        assert r.status == 401
    r = request(n1, "POST", "/v1/notify", body=b'{"node":"n1","seq":1}')
    assert r.status == 401
    r = request(n1, "HEAD", "/v1/files/games/a.db")
    assert r.status == 401

    assert get(n1, "/v1/files/games/a.db", token=TOKEN).body == b"hello"
    assert get(n1, "/v1/chunks/games/a.db", token=TOKEN).status == 200
    assert get(n1, "/metrics", token=TOKEN).status == 200
    # Health needs no token (and accepts one).
    assert get(n1, "/v1/health").status == 200
    assert get(n1, "/v1/health", token="wrong").status == 200
    assert get(n1, "/v1/health").json()["node"] == "n1"


# --- notify -------------------------------------------------------------------------------------

def test_notify(make_cluster):
    cluster = serve(make_cluster, extra_hosts={
        "peer2": {"address": "127.0.0.1", "data_server_port": 9, "root": "/nonexistent/p2"}})
    n1 = cluster["n1"]
    n1.expect_log(r"peer2|127\.0\.0\.1:9\b")   # the unreachable peer may be reported
    start(cluster)

    def notify(body, **kw):
        return request(n1, "POST", "/v1/notify", body=body,
                       headers={"Content-Type": "application/json"}, **kw)

    r = notify(b'{"node":"peer2","seq":5}')
    assert r.status == 204 and r.body == b""
    for bad in (b"", b"{", b"not json", b"[]", b'{"node":"peer2"}', b'{"seq":5}',
                b'{"node":5,"seq":5}', b'{"node":"peer2","seq":"5"}',
                b'{"node":"peer2","seq":-1}', b'{"node":"peer2","seq":1.5}',
                b'{"node":"peer2","node":"n1","seq":1}', b'{"node":"n1","seq":1}'):
        r = notify(bad)
        assert r.status == 400, (bad, r)
    r = notify(b'{"node":"nosuchhost","seq":1}')
    assert r.status == 404
    r = notify(b'{"node":"peer2","seq":1,"pad":"' + b"x" * 5000 + b'"}')
    assert r.status == 413
    assert get(n1, "/v1/notify").status == 405
    assert request(n1, "POST", "/v1/manifest", body=b"{}").status == 405
    # Still fine afterwards.
    assert notify(b'{"node":"peer2","seq":6}').status == 204


# --- metrics ------------------------------------------------------------------------------------

LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
                    rf'(?P<labels>\{{(?:{LABEL}(?:,{LABEL})*)?\}})? (?P<value>\S+)$')


def metrics(node):
    r = get(node, "/metrics")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    out, types = {}, {}
    for line in r.body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not Prometheus text: {line!r}"
        out[m.group("name") + (m.group("labels") or "")] = float(m.group("value"))
    for key in out:
        assert key.split("{")[0] in types, f"{key} has no TYPE line"
    return out


def test_metrics(make_cluster):
    cluster = serve(make_cluster)
    n1 = cluster["n1"]
    data = h.random_bytes(300_000, seed=13)
    h.write_file(n1.local("games", "a.db"), data)
    h.write_file(n1.local("models", "b.pth"), b"bbb")
    start(cluster)
    wait_manifest(n1, {("games", "a.db"): h.xxh128_bytes(data),
                       ("models", "b.pth"): h.xxh128_bytes(b"bbb")})
    m0 = metrics(n1)
    files_200 = 'meshfs_http_requests_total{endpoint="files",code="200"}'
    files_404 = 'meshfs_http_requests_total{endpoint="files",code="404"}'
    for name in ("meshfs_http_bytes_sent_total", "meshfs_http_errors_total",
                 "meshfs_namespace_files", "meshfs_namespace_bytes", "meshfs_uptime_seconds"):
        assert name in m0, name
    assert m0["meshfs_namespace_files"] >= 2
    assert m0["meshfs_namespace_bytes"] >= len(data) + 3
    assert m0['meshfs_http_requests_total{endpoint="manifest",code="200"}'] >= 1

    assert get(n1, "/v1/files/games/a.db").body == data
    assert get(n1, "/v1/files/games/a.db").body == data
    assert get(n1, "/v1/files/games/zzz.db").status == 404
    # Body bytes are counted once MHD reports the response complete, which may be a moment
    # after the client has read it.
    m1 = wait_until(lambda: (lambda m: m if m["meshfs_http_bytes_sent_total"] >=
                             m0["meshfs_http_bytes_sent_total"] + 2 * len(data) else None)(
                                 metrics(n1)), 5, message="bytes sent counted")
    assert m1.get(files_200, 0) == m0.get(files_200, 0) + 2
    assert m1.get(files_404, 0) == m0.get(files_404, 0) + 1
    assert m1['meshfs_http_requests_total{endpoint="metrics",code="200"}'] >= 1
    assert m1["meshfs_uptime_seconds"] >= m0["meshfs_uptime_seconds"]


# --- connection limits ----------------------------------------------------------------------------

def test_idle_connections_from_one_address_do_not_starve_others(make_cluster):
    """64 idle connections per client address at most: a client hogging connections does
    not keep others out, and once it lets go it can connect again."""
    cluster = start(serve(make_cluster))
    n1 = cluster["n1"]
    prefix = n1.address.rsplit(".", 1)[0]
    hog, other = f"{prefix}.200", f"{prefix}.201"
    socks = []
    try:
        for _ in range(64):
            s = socket.socket()
            s.bind((hog, 0))
            s.connect((n1.address, n1.port))
            socks.append(s)
        time.sleep(0.5)
        # The 65th from the same address is closed at once.
        extra = socket.socket()
        extra.bind((hog, 0))
        extra.settimeout(5)
        extra.connect((n1.address, n1.port))
        try:
            extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            got = extra.recv(100)
        except OSError as exc:
            got = exc.errno in (errno.ECONNRESET, errno.EPIPE) and b""
        finally:
            extra.close()
        assert got == b"", got
        # Another address is served.
        r = get(n1, "/v1/health", source=other)
        assert r.status == 200
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: get(n1, "/v1/health", source=hog).status == 200, 10,
               message="the hogging address served again", ignore=(OSError,
                                                                   http.client.HTTPException))
