"""A checkout shared by a lab stays shared: with `core.sharedRepository=group`, every file a
relay op writes is writable by the group, whatever the member's umask, so the next lab mate
can fetch, commit and rebase, with plain git and with the relay.

Two accounts in one group, both with umask 022 (the default that bites: plain git leaves
FETCH_HEAD, the index and refs that lab mates cannot write).
"""

from __future__ import annotations

import grp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.model.results import FetchResult, PullResult, RebaseResult
from aexp_relay_mcp.sandbox import Sandbox
from aexp_relay_mcp.sandbox.account import accounts_lock

from .conftest import running_sandbox

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.sshd,
    pytest.mark.skipif(os.geteuid() != 0, reason="two accounts and a group need root"),
]
LAB = "aexp-lab"


def lab_gid(*members: str) -> int:
    """The lab's group, with these accounts in it (created once)."""
    with accounts_lock():
        try:
            gid = grp.getgrnam(LAB).gr_gid
        except KeyError:
            subprocess.run(["groupadd", "--system", LAB], check=True, capture_output=True)
            gid = grp.getgrnam(LAB).gr_gid
        for member in members:
            subprocess.run(["usermod", "-aG", LAB, member], check=True, capture_output=True)
    return gid


def as_member(
    sb: Sandbox, gid: int, checkout: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Plain git in checkout, as sb's login user would run it in a terminal: umask 022."""
    return subprocess.run(
        ["git", *args],
        cwd=checkout,
        env={**sb.git_env(), "HOME": str(sb.account.home)},
        user=sb.user.uid,
        group=sb.user.gid,
        extra_groups=[gid],
        umask=0o022,
        capture_output=True,
        text=True,
    )


def share(checkout: Path) -> None:
    """The lab's group on everything in the checkout, writable by it (as `chgrp -R` and
    `chmod -R g+w` after `git init --shared=group` leave it)."""
    gid = grp.getgrnam(LAB).gr_gid
    for dirpath, _, files in os.walk(checkout):
        for path in (Path(dirpath), *(Path(dirpath, f) for f in files)):
            if not path.is_symlink():
                os.chown(path, -1, gid)
                os.chmod(path, path.stat().st_mode | 0o060)


def not_group_writable(checkout: Path) -> list[str]:
    """Files under .git the group cannot do with what their owner can (objects are
    read-only for everyone, by git's design: that is shared too)."""
    found = []
    for path in (checkout / ".git").rglob("*"):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        owner, group = (mode >> 6) & 0o7, (mode >> 3) & 0o7
        if owner & ~group:
            found.append(str(path.relative_to(checkout)))
    return sorted(found)


@pytest.fixture
def lab() -> Iterator[tuple[Sandbox, Sandbox, int]]:
    """Two login nodes' accounts of one lab (bash and zsh users), the first one's checkout
    shared with the group as `git init --shared=group` and `chgrp -R` leave it."""
    with running_sandbox() as one, running_sandbox(shell="zsh") as two:
        gid = lab_gid(one.user.name, two.user.name)
        for sb in (one, two):
            for rc in (".bashrc", ".zshenv"):  # the member's own umask: the default
                (sb.account.home / rc).write_text("umask 022\n")
        checkout = one.cluster
        one.git(checkout, "config", "core.sharedRepository", "group")
        for dirpath, _, _ in os.walk(checkout):
            os.chown(dirpath, -1, gid)
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o2000)  # setgid: the group stays
        share(checkout)
        # the mate trusts the lab's checkout, as `git config --global --add safe.directory`
        # (and "GitHub", here a bare repo of the first account's)
        trusted = "".join(f"    directory = {p}\n" for p in (checkout, one.origin))
        (two.account.home / ".gitconfig").write_text(f"[safe]\n{trusted}")
        yield one, two, gid


async def test_a_lab_mate_can_fetch_commit_and_rebase_after_the_relay_ran_as_another(
    lab: tuple[Sandbox, Sandbox, int],
) -> None:
    one, two, gid = lab
    checkout = one.cluster
    # What the relay must do better than plain git: as one, with umask 022, git leaves
    # files the mate cannot write.
    plain = as_member(one, gid, checkout, "fetch", "-q", "origin")
    assert plain.returncode == 0, plain.stderr
    assert ".git/FETCH_HEAD" in not_group_writable(checkout)
    os.chmod(checkout / ".git" / "FETCH_HEAD", 0o664)

    # the relay, as one: fetch, pull (index, work tree, ORIG_HEAD, reflogs), a rebase
    relay_one = RelayClient(config=one.config())
    one.push_from_other("from-upstream.txt", "1\n")
    assert isinstance(await relay_one.request("fetch"), FetchResult)
    assert isinstance(await relay_one.request("pull"), PullResult)
    one.push_from_other("more-upstream.txt", "2\n")
    one.commit(checkout, "one.txt", "one's work\n", "one's commit")
    share(checkout)  # what one's own terminal wrote is not the relay's to answer for
    rebased = await relay_one.request("rebase")
    assert isinstance(rebased, RebaseResult) and rebased.after.ahead == 1
    assert not_group_writable(checkout) == []  # every file the relay wrote, the group may

    # the mate, with plain git: fetch, commit, rebase
    one.push_from_other("third.txt", "3\n")
    for args in (
        ("fetch", "-q", "origin"),
        ("-c", "user.name=Mate", "-c", "user.email=mate@example.invalid",
         "commit", "-q", "--allow-empty", "-m", "the mate's commit"),
        ("-c", "user.name=Mate", "-c", "user.email=mate@example.invalid",
         "rebase", "-q", "origin/main"),
    ):  # fmt: skip
        done = as_member(two, gid, checkout, *args)
        assert done.returncode == 0, (args, done.stderr)

    # ... and with the relay, logged in as the mate
    one.push_from_other("fourth.txt", "4\n")
    relay_two = RelayClient(config=two.config(remote_repo=str(checkout)))
    assert isinstance(await relay_two.request("fetch"), FetchResult)
    again = await relay_two.request("rebase")
    assert isinstance(again, RebaseResult) and again.after.behind == 0
    assert not_group_writable(checkout) == []
