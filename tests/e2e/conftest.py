"""Fixtures for the meshfs end-to-end tests (see meshfs_harness.py for the machinery).

  meshfs_bin      the binary under test ($MESHFS_BIN, else build/meshfs); fails if missing
  make_cluster    factory: make_cluster(["a", "b"], config={...}, nodes={"a": {"host": {...}}},
                  extra_hosts={...}, start=True) -> Cluster of nodes on 127.0.<k>.2, .3, ...
  node            one started node called "n1" (a one-node cluster)
  make_config     factory for config files that are only loaded, never run:
                  make_config(text=None, **cfg) -> Path

Every test runs under a watchdog (default 300 s, MESHFS_E2E_TEST_TIMEOUT, or
@pytest.mark.meshfs_timeout(seconds)): when it fires, every live node is killed (its FUSE
connection aborted first), so a test stuck on a hung mount fails instead of hanging the suite.
At teardown every node is unmounted, stopped and reaped, and the test fails if a daemon log has
a sanitizer report or an `error:` line the test did not declare with node.expect_log(regex).
Last, anything still mounted or running under the test's tmp_path (say a daemon that a test's
own `run_meshfs("mount", ...)` started) is cleaned up, and the test fails for it.
"""

import os
import signal

import pytest

import meshfs_harness as h

DEFAULT_TEST_TIMEOUT = float(os.environ.get("MESHFS_E2E_TEST_TIMEOUT", "300"))


def _sigterm_to_interrupt(signum, frame):
    # Turns `timeout`'s (or CI's) SIGTERM into an interrupt, so pytest runs the fixture
    # teardowns and the daemons get unmounted and reaped instead of orphaned.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "meshfs_timeout(seconds): watchdog budget for this test (default 300 s)")
    h.become_subreaper()
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def pytest_sessionfinish(session, exitstatus):
    h.cleanup_all()


@pytest.fixture(scope="session")
def meshfs_bin():
    return h.require_meshfs_bin()


@pytest.fixture(autouse=True)
def _meshfs_watchdog(request, tmp_path):
    marker = request.node.get_closest_marker("meshfs_timeout")
    seconds = float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT
    with h.Watchdog(seconds) as dog:
        yield dog
    # Runs after every other fixture's teardown: whatever is still mounted or running under
    # this test's temp dir was not cleaned up by a Node, e.g. a daemon that a mount which
    # should have failed left behind. Clean it up and say so.
    leftovers = h.cleanup_leftovers(tmp_path)
    if dog.fired:
        pytest.fail(f"test exceeded its {dog.seconds:g} s budget: the watchdog killed its "
                    "meshfs nodes", pytrace=False)
    if leftovers:
        pytest.fail("left behind after the test (now cleaned up):\n  " + "\n  ".join(leftovers),
                    pytrace=False)


@pytest.fixture
def make_cluster(tmp_path, meshfs_bin):
    clusters = []

    def make(names=("n1",), *, start=True, **kwargs):
        base = tmp_path if not clusters else tmp_path / f"c{len(clusters) + 1}"
        cluster = h.Cluster(base, list(names), **kwargs)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make

    problems = []
    for cluster in reversed(clusters):
        problems += cluster.finish()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def node(make_cluster):
    return make_cluster(["n1"])["n1"]


@pytest.fixture
def make_config(tmp_path):
    """Writes a config file for CLI tests that only load it. With @text, writes it verbatim;
    else builds a valid one-node config (node "n1" on a fresh loopback address, with its
    root and state dir under tmp_path) and merges **cfg into it."""
    counter = iter(range(1, 1000))

    def make(text=None, name=None, **cfg):
        path = tmp_path / (name or f"meshfs-{next(counter)}.yaml")
        if text is None:
            node = h.Node(tmp_path / "cfg", "n1", f"127.0.{h.next_subnet()}.2")
            text = h.to_yaml(h.deep_merge(node.config_dict(), cfg))
        path.write_text(text)
        return path

    return make
