"""`meshfs sync` brings other nodes' data here (../shared/INTERFACE.md, `meshfs sync`).

Each test starts two real nodes on loopback (`meshfs mount -f`, each on its own 127.0.<k>.<n>
with its own root, state dir and mount; see meshfs_harness.py), puts files into node a's data
dirs and runs `meshfs sync` on node b. Checked as a user sees it: what was asked for ends up
`cached` with the right bytes, what was not stays `remote`; the board/player filters and
--host choose the files; a category on shared storage counts as local and is not fetched; an
unknown host is a usage error (exit 2); a source that is killed or frozen makes the command
exit 1 with the file listed, within a bounded time; --no-wait returns at once and the file
arrives later; progress is plain lines when stdout is not a terminal and one redrawn line
when it is.

Where a test needs a transfer that lasts a few seconds, b reaches a through the throttling
HTTP proxy of test_cluster.py (HttpProxy, closed and joined at the end of the test).
"""

import os
import pty
import select
import signal
import subprocess
import time

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until
from test_cluster import HttpProxy, served

MiB = 1 << 20
P = "user.meshfs."
PUBLISH_WITHIN = 5   # a node's own file: publish_quiet_seconds is 0.5 in the harness config
REMOTE_WITHIN = 6    # another node's: manifests are pulled every ~2 s, and at once on notify
SHOWN_WITHIN = PUBLISH_WITHIN + REMOTE_WITHIN


# --- helpers ------------------------------------------------------------------------------------

def put(node, rel, data):
    """Writes @data as @rel ("games/x.db") into @node's own data dir (not through a mount)."""
    cat, _, path = rel.partition("/")
    return h.write_file(node.local(cat, path), data)


def state_of(path):
    return h.getxattr(path, P + "state")


def mount_hash(path):
    try:
        return h.getxattr(path, P + "hash")
    except OSError:
        return None


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def wait_shown(node, files, timeout=SHOWN_WITHIN):
    """Waits until @node's mount shows every {rel: data} of @files with its hash."""
    for rel, data in files.items():
        want = h.xxh128_bytes(data)
        wait_until(lambda: mount_hash(node.path(rel)) == want, timeout,
                   message=f"{node.name} showing {rel} with hash {want}")


def assert_cached(node, files):
    for rel, data in files.items():
        path = node.path(rel)
        assert state_of(path) == "cached", (rel, state_of(path))
        assert h.getxattr(path, P + "cached_bytes") == str(len(data)), rel
        assert read_bytes(path) == data, f"{rel}: the bytes read differ from the source's"


def assert_remote(node, rels):
    for rel in rels:
        assert state_of(node.path(rel)) == "remote", (rel, state_of(node.path(rel)))


def assert_plain(text):
    """Output for a pipe or a file: whole lines, no carriage returns, no terminal escapes."""
    assert "\r" not in text, repr(text)
    assert "\x1b" not in text, repr(text)


@pytest.fixture
def proxies():
    """Factory for throttling proxies (test_cluster.HttpProxy); see test_cluster.served()."""
    with served(HttpProxy) as (make,):
        yield make


def route_via(node, host, proxy):
    """Makes @node reach @host's data server through @proxy."""
    node.config_extra = h.deep_merge(node.config_extra,
                                     {"hosts": {host.name: proxy.host_entry()}})


def run_in_pty(argv, timeout):
    """Runs @argv with stdout and stderr on a new pseudo-terminal. Returns (exit code, output
    as text). Fails the test if it runs longer than @timeout seconds."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout * h.SLOW
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    piece = os.read(master, 65536)
                except OSError:     # EIO: the child closed the terminal
                    piece = b""
                if not piece:
                    break
                out += piece
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"`{' '.join(map(str, argv))}` still running after {timeout} s; "
                        f"output so far: {out!r}")
        rc = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, out.decode(errors="replace")


# --- fetching what was asked for ---------------------------------------------------------------

def test_sync_models_fetches_them_verified_and_leaves_the_rest_remote(make_cluster):
    cluster = make_cluster(["a", "b"], start=False)
    a, b = cluster["a"], cluster["b"]
    models = {
        "models/big_hex8_2p.pth": h.random_bytes(9 * MiB + 3, seed="big"),  # 3 chunks
        "models/small_square8_4p.pth": h.random_bytes(1000, seed="small"),
        "models/sub/deep.pth": h.random_bytes(200 * 1024, seed="deep"),
        "models/empty.pth": b"",
    }
    others = {
        "games/g_hex8_2p.db": h.random_bytes(50 * 1024, seed="g"),
        "training/t.npz": h.random_bytes(3000, seed="t"),
    }
    for rel, data in {**models, **others}.items():
        put(a, rel, data)
    mine = h.random_bytes(500, seed="mine")
    put(b, "models/mine.pth", mine)
    cluster.start()
    wait_shown(b, {**models, **others})
    wait_until(lambda: state_of(b.path("models/mine.pth")) == "local", PUBLISH_WITHIN)
    assert_remote(b, list(models) + list(others))

    r = b.meshfs("sync", "models", timeout=90)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert_plain(r.stdout)
    # a's four models and b's own one, all local and verified.
    assert "5 of 5 files local and verified" in r.stdout, r.stdout
    assert "FAILED" not in r.stdout, r.stdout
    assert_cached(b, models)
    assert h.getxattr(b.path("models/big_hex8_2p.pth"), P + "synced_at") != ""
    assert state_of(b.path("models/mine.pth")) == "local"
    assert_remote(b, others)

    # Everything is here now: nothing left to fetch, at once.
    t0 = time.monotonic()
    r = b.meshfs("sync", "models", timeout=30)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "5 of 5 files local and verified" in r.stdout, r.stdout
    assert time.monotonic() - t0 < 5 * h.SLOW
    assert_remote(b, others)


def test_board_players_and_host_choose_the_files(make_cluster):
    cluster = make_cluster(["a", "b"], start=False)
    a, b = cluster["a"], cluster["b"]
    wanted = {
        "models/m_hex8_2p.pth": h.random_bytes(5000, seed="m1"),
        "games/c_hex8_2p.db": h.random_bytes(7000, seed="c1"),
        "training/t_hex8_2p_v2.npz": h.random_bytes(3000, seed="t1"),
    }
    unwanted = {
        "models/m_hex8_4p.pth": h.random_bytes(5000, seed="m2"),
        "games/c_square8_2p.db": h.random_bytes(7000, seed="c2"),
        "games/c_hex8x_2p.db": h.random_bytes(100, seed="c3"),
    }
    for rel, data in {**wanted, **unwanted}.items():
        put(a, rel, data)
    cluster.start()
    wait_shown(b, {**wanted, **unwanted})

    r = b.meshfs("sync", "--board-type", "hex8", "--num-players", "2", timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert_plain(r.stdout)
    assert "3 of 3 files local and verified" in r.stdout, r.stdout
    assert_cached(b, wanted)
    assert_remote(b, unwanted)

    # An unknown host is a usage error: one line naming it, exit 2, nothing fetched.
    r = b.meshfs("sync", "games", "--host", "nosuchhost", timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nosuchhost" in lines[0], r.stderr
    assert_remote(b, ["games/c_square8_2p.db"])

    # --host H: only versions H holds. b holds none of a's games.
    r = b.meshfs("sync", "games", "--host", "b", timeout=30)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert_remote(b, ["games/c_square8_2p.db"])
    r = b.meshfs("sync", "games", "--host", "a", "--priority", "critical", timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "3 of 3 files local and verified" in r.stdout, r.stdout
    assert_cached(b, {rel: data for rel, data in unwanted.items() if rel.startswith("games/")})
    assert_remote(b, ["models/m_hex8_4p.pth"])


def test_a_shared_storage_category_counts_as_local(make_cluster, tmp_path):
    """training lives on storage both nodes share (passthrough): nothing of it is fetched,
    and it counts as local and verified; a's models are still fetched."""
    shared = tmp_path / "nfs"
    (shared / "training").mkdir(parents=True)
    host = {"shared_storage": [str(shared)],
            "storage_paths": {"training": str(shared / "training")}}
    cluster = make_cluster(["a", "b"], start=False,
                           nodes={"a": {"host": host}, "b": {"host": host}})
    a, b = cluster["a"], cluster["b"]
    npz = h.random_bytes(300 * 1024, seed="npz")
    h.write_file(shared / "training" / "t_hex8_2p.npz", npz)
    model = {"models/m_hex8_2p.pth": h.random_bytes(5 * MiB, seed="model")}
    put(a, "models/m_hex8_2p.pth", model["models/m_hex8_2p.pth"])
    cluster.start()
    wait_shown(b, {**model, "training/t_hex8_2p.npz": npz})
    assert state_of(b.path("training/t_hex8_2p.npz")) == "passthrough"

    r = b.meshfs("sync", "training", timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "1 of 1 files local and verified" in r.stdout, r.stdout
    assert state_of(b.path("training/t_hex8_2p.npz")) == "passthrough"
    assert_remote(b, model)

    r = b.meshfs("sync", "--board-type", "hex8", timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "2 of 2 files local and verified" in r.stdout, r.stdout
    assert_cached(b, model)
    assert read_bytes(b.path("training/t_hex8_2p.npz")) == npz


# --- failures -----------------------------------------------------------------------------------

@pytest.mark.meshfs_timeout(150)
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_stopped_source_fails_listed_within_a_bounded_time(make_cluster, how):
    """The only holder of a file is killed (connections refused) or frozen with SIGSTOP
    (connections accepted by the kernel, never answered): the sync exits 1 listing the file
    with the fetcher's reason, well within its bounds, and the file is not cached."""
    deadline = 3
    cluster = make_cluster(["a", "b"], start=False,
                           nodes={"b": {"config": {
                               "auto_sync": {"read_deadline_seconds": deadline}}}})
    a, b = cluster["a"], cluster["b"]
    lost = h.random_bytes(6 * MiB + 1, seed="lost")
    here = h.random_bytes(4000, seed="here")
    put(a, "models/lost.pth", lost)
    put(b, "models/here.pth", here)
    cluster.start()
    wait_shown(b, {"models/lost.pth": lost, "models/here.pth": here})

    if how == "killed":
        a.kill(signal.SIGKILL)
    else:
        os.kill(a.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = b.meshfs("sync", "models", timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if how == "frozen":
            os.kill(a.pid, signal.SIGCONT)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert_plain(r.stdout)
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, r.stdout
    assert failed[0].startswith("FAILED models/lost.pth (from a): "), failed[0]
    assert len(failed[0]) > len("FAILED models/lost.pth (from a): ") + 5, \
        f"no reason given: {failed[0]!r}"
    assert "1 of 2 files local and verified" in r.stdout, r.stdout
    # The fetcher drops a dead or stalled source within seconds; the sync's own bound
    # (no data for twice read_deadline_seconds) would end it soon after.
    assert elapsed <= (2 * deadline + 10) * h.SLOW, (elapsed, r.stdout)
    assert state_of(b.path("models/lost.pth")) != "cached"
    assert h.getxattr(b.path("models/lost.pth"), P + "last_error") != ""


def test_bad_usage_and_a_host_never_reached(make_cluster):
    cluster = make_cluster(["a", "b"], start=False)
    b = cluster["b"]
    cluster.start("b")
    for args in (["--priority", "soon"], ["nosuchcategory"], ["--num-players", "0"]):
        r = b.meshfs("sync", *args, timeout=30)
        assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
        assert r.stderr.strip(), args
    # a was never reached: syncing from it cannot succeed, and says why.
    r = b.meshfs("sync", "--host", "a", timeout=30)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "never reached" in r.stdout, r.stdout


# --- --no-wait and progress ---------------------------------------------------------------------

@pytest.mark.meshfs_timeout(200)
def test_no_wait_returns_at_once_and_progress_is_shown(proxies, make_cluster):
    cluster = make_cluster(["a", "b"], start=False)
    a, b = cluster["a"], cluster["b"]
    # b gets a's file bodies at 2 MiB/s each: 40 MiB in ten 4 MiB chunks, at most eight at
    # a time, take about 4 s, and the first eight arrive half way.
    proxy = proxies(a.address.rsplit(".", 1)[0] + ".100", a, rate=2 * MiB)
    route_via(b, a, proxy)
    rel = "models/slow_hex8_2p.pth"
    data = h.random_bytes(40 * MiB, seed="slow")
    put(a, rel, data)
    cluster.start()
    wait_shown(b, {rel: data})
    path = b.path(rel)

    t0 = time.monotonic()
    r = b.meshfs("sync", "models", "--no-wait", timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert took < 3 * h.SLOW, took
    assert "1 file (40.0 MiB) queued" in r.stdout, r.stdout
    assert_plain(r.stdout)
    assert state_of(path) != "cached"
    wait_until(lambda: state_of(path) == "cached", 60, message=f"{rel} becoming cached")
    assert_cached(b, {rel: data})
    assert proxy.file_requests(rel), "b did not fetch the file through the proxy"

    # Waiting, not a terminal: plain progress lines every few seconds, then the summary.
    h.setxattr(path, P + "evict", "1")
    wait_until(lambda: state_of(path) == "remote", 10, message=f"{rel} evicted")
    r = b.meshfs("sync", "models", timeout=90)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert_plain(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("sync models: 1 of 1 files local and verified"), r.stdout
    progress = [line for line in lines if line.startswith("sync models: 0/1 files")]
    assert progress, f"no progress line during a ~4 s sync: {r.stdout!r}"
    assert_cached(b, {rel: data})

    # On a terminal: one line redrawn in place (carriage returns), with rate and ETA.
    h.setxattr(path, P + "evict", "1")
    wait_until(lambda: state_of(path) == "remote", 10, message=f"{rel} evicted")
    rc, out = run_in_pty([h.meshfs_bin(), "sync", "models", "-c", b.config_path], 90)
    assert rc == 0, out
    assert out.count("\r") >= 3, repr(out)
    assert "/s, ETA" in out, repr(out)
    assert "1 of 1 files local and verified" in out, repr(out)
    assert_cached(b, {rel: data})
