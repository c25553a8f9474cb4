"""End-to-end tests of AutoSync (sync/autosync.c, sync/router.c): replicas of an ephemeral
node's data, the shutdown flush, broadcast of new models, and what a role fetches ahead; a
source that accepts connections and never answers (cut off by the fetcher's stall watchdog);
and what `meshfs status --json` reports about strategies, unreplicated data, critical hosts,
lag, circuits, recommendations and recent fetch failures.

Every node runs on its own loopback address with its own dirs (see meshfs_harness). Nobody
reads the files the AutoSync tests check: what arrives, arrives because AutoSync fetched it.
The stalled-source test puts a proxy (test_cluster.HttpProxy, made to hold file requests
unanswered) between the reader and one source; it is closed and joined at the end.
"""

import errno
import json
import os
import re
import signal
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until
from test_cluster import HttpProxy, read_in_child, served, sha256

MiB = 1 << 20
P = "user.meshfs."
WITHIN = 30 * h.SLOW    # publish, manifest pulls, an AutoSync pass and the fetch


def xattr(path, name):
    return os.getxattr(path, P + name).decode()


def state_of(path):
    return xattr(path, "state")


def sources_of(path):
    return set(filter(None, xattr(path, "sources").split(",")))


def health(node):
    return json.loads(os.getxattr(node.mnt, P + "health"))


def put(node, rel, data):
    h.write_file(node.local(*rel.split("/", 1)), data)


def wait_state(node, rel, want, timeout=WITHIN):
    path = node.path(rel)

    def ok():
        try:
            return state_of(path) == want
        except OSError:
            return False
    wait_until(ok, timeout, message=f"{rel} {want} on {node.name}")


def cached_on(nodes, rel):
    out = []
    for n in nodes:
        try:
            if state_of(n.path(rel)) == "cached":
                out.append(n.name)
        except OSError:
            pass
    return out


def metric(node, name):
    """A counter of @node's /metrics (sum over labels)."""
    with urllib.request.urlopen(f"http://{node.address}:{node.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


EPHEMERAL = {"sync_routing": {"replication_target": 2}}


@pytest.mark.meshfs_timeout(120)
def test_ephemeral_node_data_reaches_replication_target_peers(make_cluster):
    cluster = make_cluster(["e", "p1", "p2", "p3"], config=EPHEMERAL,
                           nodes={"e": {"host": {"is_ephemeral": True}}})
    e, peers = cluster["e"], [cluster[n] for n in ("p1", "p2", "p3")]
    data = h.random_bytes(9 * MiB + 123, seed="eph")
    rel = "games/selfplay_hex8_2p.db"
    put(e, rel, data)

    # Two of the three persistent peers take a copy; nobody reads it.
    wait_until(lambda: len(cached_on(peers, rel)) >= 2, WITHIN,
               message=f"{rel} cached on two peers")
    holders = cached_on(peers, rel)
    assert len(holders) == 2, f"{rel} cached on {holders}, replication_target is 2"
    # The origin sees them as sources, and has nothing unreplicated left.
    wait_until(lambda: sources_of(e.path(rel)) == {"e", *holders}, WITHIN,
               message=f"sources of {rel} on e")
    wait_until(lambda: health(e)["unreplicated_bytes"] == 0, WITHIN,
               message="e's unreplicated_bytes 0")
    for n in peers:
        if n.name in holders:
            with open(n.path(rel), "rb") as f:
                assert f.read() == data
    # The third peer sees the two replicas as sources too.
    other = next(n for n in peers if n.name not in holders)
    wait_until(lambda: sources_of(other.path(rel)) == {"e", *holders}, WITHIN,
               message=f"sources of {rel} on {other.name}")
    assert state_of(other.path(rel)) == "remote"


@pytest.mark.meshfs_timeout(120)
def test_sigterm_on_ephemeral_node_replicates_what_it_just_wrote(make_cluster):
    cluster = make_cluster(["e", "p1", "p2"],
                           config=dict(EPHEMERAL, auto_sync={"shutdown_flush_seconds": 40}),
                           nodes={"e": {"host": {"is_ephemeral": True}}})
    e, p1, p2 = cluster["e"], cluster["p1"], cluster["p2"]
    data = h.random_bytes(6 * MiB + 7, seed="last-words")
    rel = "games/canonical_square8_4p.db"
    put(e, rel, data)
    # Published on e (it has a hash), and straight away e is told to stop.
    wait_until(lambda: xattr(e.path(rel), "hash").startswith("xxh3-128:"), WITHIN,
               message=f"{rel} published on e")
    t0 = time.monotonic()
    rc = e.kill(signal.SIGTERM)
    took = time.monotonic() - t0
    assert rc == 0, f"e exited with {rc} after SIGTERM"
    assert took < 40 * h.SLOW, f"e took {took:.1f} s to stop"
    log = e.log_text()
    assert re.search(r"every own file has 2 copies elsewhere", log), log[-2000:]
    # Both persistent peers hold verified copies, and read them with e gone.
    for n in (p1, p2):
        wait_state(n, rel, "cached", 10)
        with open(n.path(rel), "rb") as f:
            assert f.read() == data


@pytest.mark.meshfs_timeout(120)
def test_broadcast_model_reaches_every_node_and_the_origin_uploads_about_two_copies(
        make_cluster):
    names = ["t", "r1", "r2", "r3", "r4"]
    cluster = make_cluster(names, nodes={"t": {"host": {"role": "gpu_training_primary"}}})
    t, receivers = cluster["t"], [cluster[n] for n in names[1:]]
    size = 24 * MiB + 5
    data = h.random_bytes(size, seed="model")
    rel = "models/model_v7.pth"
    sent0 = metric(t, "meshfs_http_bytes_sent_total")
    put(t, rel, data)
    wait_until(lambda: len(cached_on(receivers, rel)) == len(receivers), 2 * WITHIN,
               message=f"{rel} cached on every receiver")
    uploaded = metric(t, "meshfs_http_bytes_sent_total") - sent0
    for n in receivers:
        with open(n.path(rel), "rb") as f:
            assert f.read() == data
    # Two receivers fetch from t, the others from their copies: not one copy per receiver.
    print(f"origin upload for {len(receivers)} receivers: {uploaded / size:.2f} x the model")
    assert uploaded < 2.5 * size, \
        f"t uploaded {uploaded / size:.2f} x the model for {len(receivers)} receivers"
    assert health(t)["strategy"] == "broadcast"


@pytest.mark.meshfs_timeout(120)
def test_training_node_fetches_training_data_and_games_ahead(make_cluster):
    cluster = make_cluster(["src", "tr", "plain"],
                           nodes={"tr": {"host": {"role": "gpu_training"}}})
    src, tr, plain = cluster["src"], cluster["tr"], cluster["plain"]
    npz = h.random_bytes(5 * MiB, seed="npz")
    db = h.random_bytes(MiB, seed="db")
    put(src, "training/batch_0001.npz", npz)
    put(src, "games/selfplay_hex8_2p.db", db)
    wait_state(tr, "training/batch_0001.npz", "cached")
    wait_state(tr, "games/selfplay_hex8_2p.db", "cached")
    with open(tr.path("training/batch_0001.npz"), "rb") as f:
        assert f.read() == npz
    # A node without a role fetches nothing ahead; it still sees the files.
    assert state_of(plain.path("training/batch_0001.npz")) == "remote"
    assert state_of(plain.path("games/selfplay_hex8_2p.db")) == "remote"
    assert health(tr)["strategy"] == "hybrid"


def test_auto_sync_disabled_fetches_nothing_ahead(make_cluster):
    cluster = make_cluster(["src", "tr"], config={"auto_sync": {"enabled": False}},
                           nodes={"tr": {"host": {"role": "gpu_training"}}})
    src, tr = cluster["src"], cluster["tr"]
    put(src, "training/batch_0002.npz", h.random_bytes(MiB, seed="off"))
    wait_state(tr, "training/batch_0002.npz", "remote")
    time.sleep(3 * h.SLOW)      # passes would have run: still nothing fetched
    assert state_of(tr.path("training/batch_0002.npz")) == "remote"


# --- a source that accepts and never answers ------------------------------------------------------

class StallingProxy(HttpProxy):
    """HttpProxy that, while @stall is set, takes every GET /v1/files request (reads it) and
    then sends nothing at all until the proxy is closed: a source that accepts connections
    and never answers. Manifests and chunk lists still pass, so the host stays "up" and a
    source. Counts the requests it held in `stalled`."""

    def __init__(self, address, upstream, **kwargs):
        self.stall = True
        self.stalled = 0
        super().__init__(address, upstream, **kwargs)

    def handle(self, hd):
        if self.stall and hd.command == "GET" and \
                urlsplit(hd.path).path.startswith("/v1/files/"):
            self._add("stalled")
            hd.close_connection = True
            self.stopping.wait()        # until close(): the client must give up on its own
            return
        super().handle(hd)


@pytest.fixture
def stalling_proxies():
    """Factory for StallingProxy; see test_cluster.served()."""
    with served(StallingProxy) as (make,):
        yield make


def status_failures(node):
    return {f["path"]: f["error"] for f in node.status_json()["recent_failures"]}


STALL_WORDS = re.compile(r"too slow|stall|timed? ?out|no data within", re.I)


@pytest.mark.meshfs_timeout(180)
def test_a_stalled_source_is_cut_off_and_the_read_completes_from_another(stalling_proxies,
                                                                          make_cluster):
    """a and c hold the same file; b reaches a through a proxy that accepts every file
    request and never answers (while a's manifests keep flowing, so a stays a source). A
    read on b returns the right bytes, from c, within a bound: the stalled transfers are cut
    off after a few seconds. A file that only a holds fails with EIO within
    read_deadline_seconds (+ slack), and user.meshfs.last_error and the status's
    recent_failures say why; once a answers again, it reads and the failure is cleared."""
    deadline = 5
    cluster = make_cluster(["a", "b", "c"], start=False,
                           nodes={"b": {"config": {
                               "auto_sync": {"read_deadline_seconds": deadline,
                                             "circuit_recovery_seconds": 2}}}})
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    proxy = stalling_proxies(a.address.rsplit(".", 1)[0] + ".100", a)
    b.config_extra = h.deep_merge(b.config_extra, {"hosts": {"a": proxy.host_entry()}})
    mtime = time.time_ns() - 3600 * 10**9
    both = h.random_bytes(6 * 4 * MiB + 321, seed="stall-both")
    only_a = h.random_bytes(5 * MiB + 7, seed="stall-only-a")
    h.write_file(a.local("models", "both.pth"), both, mtime_ns=mtime)
    h.write_file(c.local("models", "both.pth"), both, mtime_ns=mtime)
    h.write_file(a.local("models", "only_a.pth"), only_a, mtime_ns=mtime)
    cluster.start()
    both_path, only_path = b.path("models/both.pth"), b.path("models/only_a.pth")
    wait_until(lambda: sources_of(both_path) == {"a", "c"}, WITHIN,
               message="b: both.pth held by a and c")
    wait_until(lambda: sources_of(only_path) == {"a"}, WITHIN,
               message="b: only_a.pth held by a")

    # Two sources, one stalled: the read completes with the right bytes, from c.
    out = read_in_child(both_path, 0, len(both), 60)
    assert out["errno"] == 0, out
    assert out["len"] == len(both) and out["sha256"] == sha256(both), out
    print(f"read of {len(both)} bytes with a stalled: {out['elapsed']:.1f} s, "
          f"{proxy.stalled} requests to a held unanswered")
    assert proxy.stalled >= 1, "b never asked the stalled source: nothing was tested"
    # The stall watchdog cuts a transfer off after 3 s without a byte; a few rounds of that,
    # and the rest from c at loopback speed.
    assert out["elapsed"] <= 20 * h.SLOW, out
    wait_until(lambda: state_of(both_path) == "cached", WITHIN,
               message="both.pth cached on b")
    assert xattr(both_path, "hash") == h.xxh128_bytes(both)
    assert "models/both.pth" not in status_failures(b)

    # Only the stalled source: EIO within the read deadline, and the reason is recorded.
    stalled_before = proxy.stalled
    out = read_in_child(only_path, 0, len(only_a), deadline + 10)
    assert out["errno"] == errno.EIO, out
    assert out["elapsed"] <= deadline + 3 * h.SLOW, out
    assert proxy.stalled > stalled_before or \
        host_of(b.health(), "a")["circuit"] != "closed", \
        "b neither asked a for only_a.pth nor had a's circuit open"
    err = xattr(only_path, "last_error")
    print("last_error:", err)
    assert STALL_WORDS.search(err) or "no source left" in err, err
    assert state_of(only_path) in ("remote", "partial", "error"), state_of(only_path)
    assert int(xattr(only_path, "cached_bytes")) == 0
    failures = status_failures(b)
    assert failures.get("models/only_a.pth") == err, failures
    human = b.meshfs("status")
    assert human.returncode == 0, human.stderr
    assert f"  models/only_a.pth: {err}" in human.stdout.splitlines(), human.stdout
    assert b.running()

    # a answers again: the file reads (once a is back in favour) and the failure is gone.
    proxy.stall = False
    wait_until(lambda: read_in_child(only_path, 0, len(only_a), deadline + 10)["sha256"] ==
               sha256(only_a), 60, interval=1, message="only_a.pth readable once a answers")
    wait_until(lambda: "models/only_a.pth" not in status_failures(b), WITHIN,
               message="only_a.pth gone from recent_failures")
    assert xattr(only_path, "last_error") == ""


# --- meshfs status --json -------------------------------------------------------------------------

def host_of(report, name):
    for entry in report["hosts"]:
        if entry["name"] == name:
            return entry
    raise AssertionError(f"no host {name} in {report}")


@pytest.mark.meshfs_timeout(150)
def test_status_json_strategies_unreplicated_critical_lag_circuits_recommendations(
        make_cluster):
    """Three nodes: e ephemeral (strategy auto: ephemeral), t the training primary (auto:
    broadcast), s a self-play node configured `strategy: hybrid`. While e runs alone, its own
    data has no copy elsewhere: `meshfs status --json` on e shows all of it unreplicated, e
    among critical_hosts with a sync_now/critical recommendation, and t and s never reached
    (lag_s null, down). Once t and s run, they take replicas: e's unreplicated_bytes drops to
    0, nothing is critical, and every host is up with a closed circuit and a small lag."""
    cluster = make_cluster(
        ["e", "t", "s"], start=False,
        config={"sync_routing": {"replication_target": 2},
                "auto_sync": {"circuit_recovery_seconds": 1}},
        nodes={"e": {"host": {"is_ephemeral": True}},
               "t": {"host": {"role": "gpu_training_primary"}},
               "s": {"host": {"role": "gpu_selfplay"},
                     "config": {"auto_sync": {"strategy": "hybrid"}}}})
    e, t, s = cluster["e"], cluster["t"], cluster["s"]
    size = 3 * MiB + 17
    put(e, "games/selfplay_sq8_2p.db", h.random_bytes(size, seed="status-eph"))
    cluster.start("e")

    def e_report_with(pred, message):
        return wait_until(lambda: (lambda r: r if pred(r) else None)(e.status_json()),
                          WITHIN, message=message)

    rep = e_report_with(lambda r: host_of(r, "e")["bytes"] == size, "e counting its file")
    assert rep["node"] == "e"
    assert rep["strategy"] == "ephemeral"
    me = host_of(rep, "e")
    assert me["unreplicated_bytes"] == size, me
    assert me["state"] == "up" and me["circuit"] == "closed", me
    assert isinstance(me["lag_s"], int) and 0 <= me["lag_s"] < 60, me
    assert rep["critical_hosts"] == ["e"], rep
    assert "e" not in rep["stale_hosts"], rep
    assert {"host": "e", "action": "sync_now", "priority": "critical"} in \
        rep["recommendations"], rep["recommendations"]
    for name in ("t", "s"):
        other = host_of(rep, name)
        assert other["lag_s"] is None and other["state"] == "down", other
        assert other["circuit"] in ("closed", "open", "half-open"), other
        assert not [r for r in rep["recommendations"] if r["host"] == name], rep
    assert rep["health_score"] < 100, rep
    assert rep["recent_failures"] == [], rep
    assert health(e)["unreplicated_bytes"] == size

    cluster.start("t", "s")
    rep = e_report_with(lambda r: host_of(r, "e")["unreplicated_bytes"] == 0 and
                        all(host_of(r, n)["state"] == "up" for n in ("t", "s")),
                        "e's data replicated and t, s up on e")
    assert rep["critical_hosts"] == [] and rep["stale_hosts"] == [], rep
    assert rep["recommendations"] == [], rep
    for name in ("e", "t", "s"):
        entry = host_of(rep, name)
        assert entry["circuit"] == "closed", entry
        assert isinstance(entry["lag_s"], int) and 0 <= entry["lag_s"] < 30, entry
    assert health(e)["unreplicated_bytes"] == 0
    assert rep["health_score"] == 100, rep
    # Each node names its own strategy; t and s see e's file and nothing critical.
    for node, want in ((t, "broadcast"), (s, "hybrid")):
        r = node.status_json()
        assert r["node"] == node.name and r["strategy"] == want, (node.name, r["strategy"])
        assert health(node)["strategy"] == want
        entry = host_of(r, "e")
        assert entry["files"] >= 1 and entry["bytes"] >= size, entry
        assert entry["state"] == "up" and entry["circuit"] == "closed", entry
        assert isinstance(entry["lag_s"], int) and entry["lag_s"] < 30, entry
        assert r["critical_hosts"] == [], r
        assert host_of(r, node.name)["unreplicated_bytes"] == 0, r
