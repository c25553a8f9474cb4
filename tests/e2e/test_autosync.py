"""End-to-end tests of AutoSync (sync/autosync.c, sync/router.c): replicas of an ephemeral
node's data, the shutdown flush, broadcast of new models, and what a role fetches ahead.

Every node runs on its own loopback address with its own dirs (see meshfs_harness). Nobody
reads the files these tests check: what arrives, arrives because AutoSync fetched it.
"""

import json
import os
import re
import signal
import time
import urllib.request

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until

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
