"""The command line without a running mount: version, help, config errors, no daemon.

Each test checks what ../shared/INTERFACE.md promises a user: exit codes and what the
messages name (the file and line of a config error, the missing mountpoint, the control socket).
"""

import os
import re
import socket
import time
from pathlib import Path

import pytest

import meshfs_harness as h
from meshfs_harness import run_meshfs

COMMANDS = ["mount", "serve", "sync", "status", "check"]


def project_version():
    text = (h.REPO_ROOT / "meson.build").read_text()
    return re.search(r"version\s*:\s*'([^']+)'", text).group(1)


def nonempty_lines(text):
    return [line for line in text.splitlines() if line.strip()]


def no_daemon_left(config_path):
    """True once no process runs with @config_path in its argv (a failed mount must not leave
    a daemon behind)."""
    return not h.find_pids([str(config_path)])


# --- version and help ---------------------------------------------------------------------------

def test_version_prints_the_project_version(meshfs_bin):
    r = run_meshfs("--version")
    assert r.returncode == 0, r.stderr
    assert project_version() in r.stdout, (r.stdout, r.stderr)


def test_help_lists_every_command(meshfs_bin):
    r = run_meshfs("help")
    assert r.returncode == 0, r.stderr
    for cmd in COMMANDS:
        assert re.search(rf"\b{cmd}\b", r.stdout), f"`meshfs help` does not mention {cmd}:\n" \
            + r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_each_command(meshfs_bin, cmd):
    r = run_meshfs("help", cmd)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"\b{cmd}\b", r.stdout), r.stdout
    # Every command takes the config file.
    assert "-c" in r.stdout, r.stdout


def test_unknown_command_fails(meshfs_bin):
    r = run_meshfs("frobnicate")
    assert r.returncode != 0
    assert "frobnicate" in r.stderr, r.stderr


# --- config errors ------------------------------------------------------------------------------

def _cmd_args(cmd, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    return {
        "mount": ["mount", mnt],
        "mount-f": ["mount", mnt, "-f"],
        "serve": ["serve"],
        "sync": ["sync"],
        "status": ["status"],
        "check": ["check"],
    }[cmd]


CONFIG_COMMANDS = ["mount", "mount-f", "serve", "sync", "status", "check"]


@pytest.mark.parametrize("cmd", CONFIG_COMMANDS)
def test_missing_config_file_is_named(meshfs_bin, tmp_path, cmd):
    missing = tmp_path / "no-such-dir" / "meshfs.yaml"
    r = run_meshfs(*_cmd_args(cmd, tmp_path), "-c", missing)
    assert r.returncode != 0
    assert str(missing) in r.stderr, r.stderr
    assert not h.is_mounted(tmp_path / "mnt")


# Each text has a YAML syntax error that libyaml reports on line 5.
SYNTAX_ERRORS = {
    "mapping-value": (
        "node: n1\n"
        "state_dir: {state}\n"
        "hosts:\n"
        "  n1:\n"
        "    address: 127.0.0.2: 8766\n"
        "    root: {root}\n"),
    "tab-indent": (
        "node: n1\n"
        "state_dir: {state}\n"
        "hosts:\n"
        "  n1:\n"
        "\troot: {root}\n"),
}


@pytest.mark.parametrize("case", sorted(SYNTAX_ERRORS))
@pytest.mark.parametrize("cmd", ["status", "mount"])
def test_yaml_syntax_error_names_file_and_line(meshfs_bin, tmp_path, make_config, case, cmd):
    cfg = make_config(SYNTAX_ERRORS[case].format(state=tmp_path / "state",
                                                 root=tmp_path / "root"))
    r = run_meshfs(*_cmd_args(cmd, tmp_path), "-c", cfg)
    assert r.returncode != 0
    assert f"{cfg}:5" in r.stderr, r.stderr
    assert not h.is_mounted(tmp_path / "mnt")


def test_bad_value_names_file_line_and_key(meshfs_bin, tmp_path, make_config):
    cfg = make_config(
        "node: n1\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "publish_quiet_seconds: soon\n"
        "hosts:\n"
        "  n1:\n"
        "    address: 127.0.0.2\n"
        f"    root: {tmp_path / 'root'}\n")
    r = run_meshfs("status", "-c", cfg)
    assert r.returncode != 0
    assert f"{cfg}:3" in r.stderr, r.stderr
    assert "publish_quiet_seconds" in r.stderr, r.stderr


def test_bad_host_value_names_file_line_and_key(meshfs_bin, tmp_path, make_config):
    cfg = make_config(
        "node: n1\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "hosts:\n"
        "  n1:\n"
        "    address: 127.0.0.2\n"
        "    data_server_port: lots\n"
        f"    root: {tmp_path / 'root'}\n")
    r = run_meshfs("status", "-c", cfg)
    assert r.returncode != 0
    assert f"{cfg}:6" in r.stderr, r.stderr
    assert "data_server_port" in r.stderr, r.stderr


def test_missing_hosts_is_an_error(meshfs_bin, tmp_path, make_config):
    cfg = make_config(f"node: n1\nstate_dir: {tmp_path / 'state'}\n")
    r = run_meshfs("status", "-c", cfg)
    assert r.returncode != 0
    assert str(cfg) in r.stderr, r.stderr
    assert "hosts" in r.stderr, r.stderr


def test_node_must_be_one_of_the_hosts(meshfs_bin, make_config):
    cfg = make_config(node="ghost-node")
    r = run_meshfs("status", "-c", cfg)
    assert r.returncode != 0
    assert "ghost-node" in r.stderr, r.stderr


# --- mount problems -----------------------------------------------------------------------------

@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_missing_mountpoint_is_named(meshfs_bin, tmp_path, make_config, foreground):
    cfg = make_config()
    mnt = tmp_path / "does-not-exist" / "mnt"
    r = run_meshfs("mount", "-c", cfg, mnt, *(["-f"] if foreground else []))
    assert r.returncode != 0
    assert str(mnt) in r.stderr, r.stderr
    assert not h.is_mounted(mnt)
    h.wait_until(lambda: no_daemon_left(cfg), 10, message="no daemon left behind")


# --- no daemon ----------------------------------------------------------------------------------

NO_DAEMON_ARGS = {
    "status": ["status"],
    "status-json": ["status", "--json"],
    "sync": ["sync"],
    "sync-games": ["sync", "games", "--no-wait"],
}


def _stale_socket(path):
    """Leaves a socket file at @path that nobody listens on (a daemon that crashed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize("state", ["empty-state-dir", "stale-socket", "no-state-dir"])
@pytest.mark.parametrize("args", sorted(NO_DAEMON_ARGS))
def test_no_daemon_one_line_error_naming_the_socket(meshfs_bin, tmp_path, make_config, args,
                                                    state):
    state_dir = tmp_path / "st"
    if state != "no-state-dir":
        state_dir.mkdir()
    if state == "stale-socket":
        _stale_socket(state_dir / "control.sock")
    cfg = make_config(state_dir=str(state_dir))
    started = time.monotonic()
    r = run_meshfs(*NO_DAEMON_ARGS[args], "-c", cfg)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = nonempty_lines(r.stderr)
    assert len(lines) == 1, f"expected a one-line error, got:\n{r.stderr}"
    assert str(state_dir / "control.sock") in lines[0], lines[0]
    assert r.stdout.strip() == "", r.stdout
    # Nobody listens: the answer is immediate, not the 5 s request deadline.
    assert time.monotonic() - started < 5


def test_example_cluster_hosts_file_loads_unchanged(meshfs_bin):
    """../shared/examples/distributed_hosts.yaml is an existing cluster's hosts file: it must
    load as-is (unknown keys only warned about); with no daemon, status names the socket in
    the default state dir."""
    example = h.REPO_ROOT.parent / "shared" / "examples" / "distributed_hosts.yaml"
    example = Path(os.environ.get("MESHFS_EXAMPLE_HOSTS", example))
    assert example.is_file(), f"missing {example} (shared/ should sit beside the repo)"
    r = run_meshfs("status", "-c", example, env={"MESHFS_NODE": "lambda-gh200-a"})
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    sock = "/var/lib/meshfs/lambda-gh200-a/control.sock"
    assert sock in r.stderr, r.stderr
    # Nothing in the file is an error: the only error line is the one about the socket.
    errors = [line for line in nonempty_lines(r.stderr) if "warning" not in line.lower()]
    assert len(errors) == 1 and sock in errors[0], r.stderr
