"""Pure: what ssh said on stderr -> an error kind, a message and a hint."""

from __future__ import annotations

from ..model.errors import Failure

SSH_FAILURES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "host_key_changed",
        ("REMOTE HOST IDENTIFICATION HAS CHANGED",),
        "The host's key differs from the one in known_hosts; ssh refused to connect.",
        "This can be an attack, and the relay never bypasses host key checks. Verify the new "
        "key with your cluster's admins, then remove the old one (`ssh-keygen -R` with the "
        "host's name, as ssh printed it).",
    ),
    (
        "host_key_unknown",
        ("Host key verification failed", "host key is known", "No ED25519 host key"),
        "The host's key is not in known_hosts, and the relay does not accept new keys.",
        "Run `ssh {host}` once in a terminal, check the fingerprint, and accept it.",
    ),
    (
        "unresolvable_host",
        ("Could not resolve hostname", "Name or service not known", "nodename nor servname"),
        "The host name does not resolve.",
        "Check the host / AEXP_RELAY_SSH_HOST, and HostName in ~/.ssh/config for an alias.",
    ),
    (
        "connection_refused",
        ("Connection refused",),
        "Nothing accepts ssh connections at the host and port.",
        "Check the host name and Port in ~/.ssh/config, and that the login node is up.",
    ),
    (
        "auth_failed",
        ("Permission denied", "Too many authentication failures", "Authentication failed"),
        "ssh could not log in without a prompt.",
        "Load your key into ssh-agent (ssh-add). For password, MFA or Duo logins, run "
        "`aexp-relay-mcp connect` once in a terminal to open a shared connection.",
    ),
    (
        "connection_timeout",
        ("Connection timed out", "Operation timed out", "timed out during banner"),
        "The connection to the host timed out.",
        "Check the network path (VPN, ProxyJump) and AEXP_RELAY_CONNECT_TIMEOUT.",
    ),
    (
        "connection_dropped",
        (
            "closed by remote host",
            "Connection reset",
            "Broken pipe",
            "Connection closed by",
            "not responding",  # ServerAlive gave up: the network went away
            "ControlMaster) closed before the command finished",
        ),
        "The ssh connection dropped before the command finished.",
        "Retry; {op:repo_status} shows whether anything changed. If it keeps dropping, check "
        "the network path (VPN, Wi-Fi, sleep) and the login node.",
    ),
)


def classify_ssh_failure(stderr: str) -> Failure:
    for kind, needles, message, hint in SSH_FAILURES:
        if any(n in stderr for n in needles):
            return Failure(kind, message, hint)
    return Failure(
        "unreachable",
        "ssh could not run the command on the host.",
        "Run {op:status}: it says whether the host is reachable and what is wrong.",
    )
