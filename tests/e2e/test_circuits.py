"""Per-host circuit breakers (INTERFACE.md: auto_sync.circuit_failure_threshold,
circuit_recovery_seconds; `circuit` in user.meshfs.health and `meshfs status --json`).

Two nodes, a and b, with circuit_failure_threshold 2 and circuit_recovery_seconds 1. b is
stopped: after two failed manifest pulls a opens b's circuit and shows it "open" (state "down")
in the health xattr at its mount root and in `meshfs status --json`. Then a small counting HTTP
listener takes b's address and port and answers every request with 503: while the circuit is
open a sends it nothing at all — no manifest pull every 2 s, no announcement of a's own new
files — only the half-open probe (the manifest pull itself), each one failing and doubling the
wait (1 s × 2^k ± 10%, capped at 16×). The listener goes away and b comes back: the next probe
succeeds and the circuit is "closed" again, with b "up" and b's news (a file it got while it
was away) visible on a's mount.

The listener is one thread that accepts with a timeout and answers each connection in turn;
it is stopped and joined at the end of the test, whatever happens.
"""

import json
import socket
import subprocess
import threading
import time

import pytest

import meshfs_harness as h
from meshfs_harness import wait_until

CONFIG = {"auto_sync": {"circuit_failure_threshold": 2, "circuit_recovery_seconds": 1}}
RECOVERY = 1.0


def host_of(doc, name):
    for entry in doc["hosts"]:
        if entry["name"] == name:
            return entry
    raise AssertionError(f"no host {name} in {doc}")


def health_via_getfattr(node):
    """user.meshfs.health of @node's mount root, read with getfattr(1) as a user would."""
    r = subprocess.run(["getfattr", "--absolute-names", "--only-values", "-n",
                        "user.meshfs.health", str(node.mnt)],
                       capture_output=True, text=True, timeout=10 * h.SLOW)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class CountingListener:
    """Listens on @address:@port and answers every HTTP request with 503, recording
    (monotonic time, method, path) of each. One thread, bounded waits; close() joins it."""

    def __init__(self, address, port):
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._run, name=f"listener-{port}")
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn):
        conn.settimeout(2)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                piece = conn.recv(4096)
                if not piece:
                    break
                data += piece
            line = data.split(b"\r\n", 1)[0].decode(errors="replace").split()
            if len(line) >= 2:
                with self.lock:
                    self.requests.append((time.monotonic(), line[0], line[1]))
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except OSError:
            pass

    def seen(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive(), "listener thread did not stop"


@pytest.fixture
def listeners():
    made = []

    def make(address, port):
        lst = CountingListener(address, port)
        made.append(lst)
        return lst

    yield make
    for lst in made:
        if lst.thread.is_alive() or lst.sock.fileno() >= 0:
            lst.close()


@pytest.mark.meshfs_timeout(180)
def test_stopped_peer_opens_its_circuit_backs_off_and_closes_when_back(listeners,
                                                                     make_cluster):
    cluster = make_cluster(["a", "b"], config=CONFIG)
    a, b = cluster["a"], cluster["b"]

    # Both up: b's circuit on a is closed.
    wait_until(lambda: host_of(a.health(), "b")["state"] == "up", 15,
               message="a seeing b up")
    assert host_of(a.health(), "b")["circuit"] == "closed"
    assert host_of(a.status_json(), "b")["circuit"] == "closed"

    # b stops: two failed pulls (every 2 s) open its circuit.
    b.stop()
    t_stop = time.monotonic()
    wait_until(lambda: host_of(a.health(), "b")["circuit"] == "open", 20,
               interval=0.05, message="b's circuit on a opening")
    print(f"circuit open {time.monotonic() - t_stop:.1f} s after b stopped")

    # Take b's address while it is away: count what a still sends there.
    lst = listeners(b.address, b.port)
    t_listen = time.monotonic()

    hv = health_via_getfattr(a)
    entry = host_of(hv, "b")
    assert entry["circuit"] in ("open", "half-open") and entry["state"] == "down", entry
    assert host_of(hv, "a")["circuit"] == "closed"
    st = a.status_json()
    entry = host_of(st, "b")
    assert entry["circuit"] in ("open", "half-open") and entry["state"] == "down", entry
    assert entry["lag_s"] is not None
    if entry["circuit"] == "open":
        assert isinstance(entry["next_probe_s"], int) and 0 <= entry["next_probe_s"] <= 17, entry
    assert host_of(st, "a")["next_probe_s"] is None
    human = a.meshfs("status")
    assert human.returncode == 0, human.stderr
    line = next(ln for ln in human.stdout.splitlines() if ln.split()[:1] == ["b"])
    assert line.split()[1:3] in (["down", "open"], ["down", "half-open"]), human.stdout
    # Down but not behind yet: nothing to sync with it now.
    assert not [r for r in st["recommendations"] if r["host"] == "b"], st["recommendations"]
    assert st["health_score"] <= 60, st

    # a publishes a file while b's circuit is open: the announcement skips b.
    h.write_file(a.local("games", "while_b_away.db"), b"a's news")

    # Three probes, each after a wait twice the one before, sampling the circuit meanwhile.
    circuits = []

    def three_probes():
        circuits.append(host_of(a.health(), "b")["circuit"])
        return len(lst.seen()) >= 3

    wait_until(three_probes, 30, interval=0.1, message="three probes reaching the listener")
    seen = lst.seen()
    print("requests after the listener started (s):",
          [f"{t - t_listen:.2f} {m} {p}" for t, m, p in seen])
    for _, method, path in seen:
        # the probe is the manifest pull itself; no announcement reaches an open host
        assert method == "GET" and path.startswith("/v1/manifest?since="), seen
    times = [t for t, _, _ in seen[:3]]
    gaps = [times[1] - times[0], times[2] - times[1]]
    # Wait k is 1 s × 2^k ± 10%: at least k = 1 by the time the listener saw a probe, and the
    # next doubles it (ratio 2 × 0.9/1.1 .. 2 × 1.1/0.9, with room for scheduling).
    assert gaps[0] >= 2 * RECOVERY * 0.9 - 0.15, gaps
    assert 1.5 <= gaps[1] / gaps[0] <= 2.7, gaps
    # In between, nothing: had a pulled every 2 s regardless, the listener would have seen
    # a request every 2 s (or more, from the announcement).
    assert times[2] - times[0] >= 5.0, gaps
    # The breaker was open (half-open only for the moment of a probe) the whole time.
    assert circuits and set(circuits) <= {"open", "half-open"}, circuits
    assert circuits.count("open") >= len(circuits) // 2, circuits

    # b gets news while away, then comes back: the next probe succeeds and closes the
    # circuit; the probe being the manifest pull, a learns b's news at once.
    lst.close()
    h.write_file(b.local("models", "back.pth"), b"b is back")
    b.start()
    t_back = time.monotonic()
    # At the latest the next timed probe (the wait is capped at 16 s + 10%); sooner when b's
    # announcement of its new file reaches a (a notification cuts the wait short).
    wait_until(lambda: host_of(a.health(), "b")["circuit"] == "closed", 16 * 1.1 + 15,
               interval=0.1, message="b's circuit on a closing")
    print(f"circuit closed {time.monotonic() - t_back:.1f} s after b was back")
    wait_until(lambda: host_of(a.health(), "b")["state"] == "up", 10, message="b up on a")
    assert host_of(a.status_json(), "b")["circuit"] == "closed"
    assert host_of(health_via_getfattr(a), "b")["circuit"] == "closed"
    wait_until(lambda: (a.path("models/back.pth")).exists(), 10,
               message="b's new file on a's mount")
    wait_until(lambda: (b.path("games/while_b_away.db")).exists(), 10,
               message="a's file on b's mount")

    log = a.log_text()
    assert "peer b: circuit open after 2 failures in a row" in log
    assert "peer b: circuit closed" in log


@pytest.mark.meshfs_timeout(120)
def test_restarted_peer_says_hello_and_is_seen_before_the_recovery_wait(make_cluster):
    """b stops long enough for a to open its circuit (recovery 60 s), then starts again with
    nothing new to publish. Its hello (POST /v1/notify once its data server listens) lets a
    probe it at once: a shows b's circuit closed within seconds, not after the 60 s wait, and
    a's next file is announced to b again."""
    cluster = make_cluster(["a", "b"], config={
        "auto_sync": {"circuit_failure_threshold": 2, "circuit_recovery_seconds": 60}})
    a, b = cluster["a"], cluster["b"]
    wait_until(lambda: host_of(a.health(), "b")["state"] == "up", 15, message="a seeing b up")

    b.stop()
    wait_until(lambda: host_of(a.health(), "b")["circuit"] == "open", 20, interval=0.05,
               message="b's circuit on a opening")
    entry = host_of(a.status_json(), "b")
    assert entry["circuit"] == "open" and entry["next_probe_s"] >= 40, entry

    b.start()
    t_back = time.monotonic()
    # Without the hello, a would wait out the 60 s (± 10%) before its probe.
    wait_until(lambda: host_of(a.health(), "b")["circuit"] == "closed", 30, interval=0.1,
               message="b's circuit on a closing after b's hello")
    print(f"circuit closed {time.monotonic() - t_back:.1f} s after b was started")
    assert host_of(a.health(), "b")["state"] == "up"
    assert "peer b: circuit closed" in a.log_text()

    h.write_file(a.local("games", "after_hello.db"), b"a's news for b")
    wait_until(lambda: b.path("games/after_hello.db").exists(), 10,
               message="a's new file on b's mount")
    assert b.path("games/after_hello.db").read_bytes() == b"a's news for b"
