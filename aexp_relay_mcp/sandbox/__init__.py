"""A built-in sandbox: a login node on 127.0.0.1, as real clusters have them.

Used by ``--selftest``, the test suite, the benchmarks and ``aexp-relay-mcp sandbox``.
One module per thing it builds: ``sshd`` (the server, and optionally a bastion and an
MFA stand-in), ``account`` (the login user, its home and rc-file profile), ``repos``
(origin and clones), ``wandb_stub``.

Layout (``<root>`` is a short ``mkdtemp`` path, so ControlPath sockets fit)::

    <root>/ssh/       host and client keys, server configs and logs, ssh_config, known_hosts
    <root>/home/      the login user's home for this sandbox (rc files of the profile)
    <root>/remote/    owned by the login user
        origin.git    bare "GitHub"
        cluster/      the checkout on the login node (with wandb/offline-run-*)
        other/        a second clone: "someone else pushed"
        bin/wandb     stub wandb that records its argv in wandb-calls.log

Profiles (``profile=``): ``clean`` (empty rc files) or ``noisy`` (a banner on stdout,
notices on stderr, a 0.3 s start-up: see ``account``). ``bastion=True`` adds a jump host
(alias ``aexp-sandbox-jump`` reaches the login node through it); ``mfa=True`` adds a
login node that wants a key and then a password (alias ``aexp-sandbox-mfa``; root only).
When run as root, the sandbox logs in a dedicated user (``aexp-sbx``).
"""

from __future__ import annotations

from .account import MFA_PASSWORD, LoginUser, intruder
from .login_node import (
    BADKEY_ALIAS,
    BASTION_ALIAS,
    CLOSED_ALIAS,
    HANG_ALIAS,
    HOST_ALIAS,
    JUMP_ALIAS,
    MFA_ALIAS,
    NOAUTH_ALIAS,
    SHARED_CP_ALIAS,
    UNKNOWNKEY_ALIAS,
    Sandbox,
)
from .sshd import SandboxError, sshd_available

__all__ = [
    "BADKEY_ALIAS",
    "BASTION_ALIAS",
    "CLOSED_ALIAS",
    "HANG_ALIAS",
    "HOST_ALIAS",
    "JUMP_ALIAS",
    "MFA_ALIAS",
    "MFA_PASSWORD",
    "NOAUTH_ALIAS",
    "SHARED_CP_ALIAS",
    "UNKNOWNKEY_ALIAS",
    "LoginUser",
    "Sandbox",
    "SandboxError",
    "intruder",
    "sshd_available",
]
