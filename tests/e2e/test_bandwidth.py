"""End-to-end tests of the bandwidth limits (sync/fetch.c with sync/bucket.c): background
transfers (here `meshfs sync`) hold auto_sync.bandwidth_limit_mbps and per-host limits within
20%, and a reader is not held to them.

These are the rare tests that time something: the limit *is* a rate. The lower bound only
asks for 80% of a rate far below what loopback does, so a busy machine does not break them.
"""

import os
import subprocess
import time

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until

MiB = 1 << 20
P = "user.meshfs."


def state_of(path):
    return os.getxattr(path, P + "state").decode()


def synced_rate(node, what, size):
    """Runs `meshfs sync WHAT` on @node; returns bytes/s over the whole run."""
    t0 = time.monotonic()
    r = node.meshfs("sync", what, "--priority", "low", timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    return size / took, took


@pytest.mark.meshfs_timeout(120)
@pytest.mark.parametrize("limit", ["global", "host"])
def test_background_transfers_hold_the_bandwidth_limit(make_cluster, limit):
    mbps = 40                                   # 5,000,000 bytes/s
    config = ({"auto_sync": {"bandwidth_limit_mbps": mbps}} if limit == "global" else
              {"auto_sync": {"host_bandwidth_overrides": {"sr*": mbps}}})
    cluster = make_cluster(["src", "dst"], config=config)
    src, dst = cluster["src"], cluster["dst"]
    size = 30 * MiB
    h.write_file(src.local("training", "big.npz"), h.random_bytes(size, seed="bw"))
    wait_until(lambda: os.path.exists(dst.path("training/big.npz")), 20,
               message="big.npz shown on dst")
    rate, took = synced_rate(dst, "training", size)
    want = mbps * 1e6 / 8
    assert state_of(dst.path("training/big.npz")) == "cached"
    assert 0.8 * want <= rate <= 1.2 * want, \
        f"{rate / 1e6:.2f} MB/s over {took:.1f} s with a {mbps} Mbit/s ({want / 1e6:.1f} MB/s) limit"


@pytest.mark.meshfs_timeout(120)
def test_a_reader_is_not_held_to_the_background_limit(make_cluster):
    # 8 Mbit/s = 1 MB/s for background work; the reader reads 24 MiB far faster.
    cluster = make_cluster(["src", "dst"], config={"auto_sync": {"bandwidth_limit_mbps": 8}})
    src, dst = cluster["src"], cluster["dst"]
    size = 24 * MiB
    data = h.random_bytes(size, seed="reader")
    h.write_file(src.local("models", "m.pth"), data)
    path = dst.path("models/m.pth")
    wait_until(lambda: os.path.exists(path), 20, message="m.pth shown on dst")
    t0 = time.monotonic()
    with open(path, "rb") as f:
        got = f.read()
    took = time.monotonic() - t0
    assert got == data
    # At the background limit this would take 25 s.
    assert took < 12 * h.SLOW, f"a reader took {took:.1f} s for {size} bytes"


@pytest.mark.meshfs_timeout(120)
def test_health_and_status_count_the_fetch_queue(make_cluster):
    # Held to 1 MB/s, three 3 MiB files stay queued for a few seconds.
    cluster = make_cluster(["src", "dst"], config={"auto_sync": {"bandwidth_limit_mbps": 8}})
    src, dst = cluster["src"], cluster["dst"]
    for i in range(3):
        h.write_file(src.local("games", f"g{i}.db"), h.random_bytes(3 * MiB, seed=f"q{i}"))
    wait_until(lambda: all(os.path.exists(dst.path(f"games/g{i}.db")) for i in range(3)), 20,
               message="the games shown on dst")
    assert dst.health()["queue"] == 0
    r = dst.meshfs("sync", "games", "--no-wait", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: dst.health()["queue"] >= 2, 10, interval=0.05,
               message="queue counting the files being fetched")
    assert dst.status_json()["queue"] >= 1
    wait_until(lambda: all(state_of(dst.path(f"games/g{i}.db")) == "cached" for i in range(3)),
               60, message="the games cached")
    wait_until(lambda: dst.health()["queue"] == 0, 10, message="queue empty again")
