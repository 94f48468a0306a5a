"""Generates docs/reference.md from the registry, so the docs cannot drift from the code.

Run ``python -m aexp_relay_mcp.adapters.reference > docs/reference.md``; a test checks it
is current.
"""

from __future__ import annotations

from ..model.config import ENV_VARS
from ..model.errors import render_hint
from ..remote.failures import GIT_FAILURES, GUARD_FAILURES
from ..remote.ops import OPS
from ..ssh.failures import SSH_FAILURES
from ..ssh.login_shell import login_shell_failure

LOGIN_SHELL = login_shell_failure(None, 1, "")

OTHER_KINDS: tuple[tuple[str, str, str, str], ...] = (
    (
        "RelayValidationError",
        "invalid_request",
        "Bad op, argument, host, repo or timeout. Nothing ran.",
        "The message says what is allowed.",
    ),
    (
        "ConsentError",
        "consent_required",
        "wandb_sync without approval. Nothing was uploaded; `preview` lists runs, sizes, command.",
        "Show the preview to the user; only with their yes, call again with approve=true.",
    ),
    (
        "RelayTimeoutError",
        "timeout",
        "The call ran past its timeout; local and remote processes were stopped.",
        "Retry with a larger timeout, or check the connection with `status`.",
    ),
    (
        "RelayDownError",
        "ssh_missing",
        "The local ssh program was not found.",
        "Install the OpenSSH client, or set AEXP_RELAY_SSH_BIN.",
    ),
    (
        "RemoteCommandError",
        "killed",
        "The remote command was stopped on the login node before it reported its status (a "
        "signal there, or its time limit there), while the connection lived on. A dropped "
        "connection is always `connection_dropped`.",
        "Run `repo_status` to see the checkout's state, then retry.",
    ),
    (
        "RemoteCommandError",
        LOGIN_SHELL.kind,
        LOGIN_SHELL.message,
        render_hint(LOGIN_SHELL.hint).replace("{host}", "<host>"),
    ),
    (
        "any read-only call",
        "(warning) ran again",
        "The connection dropped under `status`, `repo_status`, `fetch` or the wandb preview: "
        "it ran once more over a new connection, within its timeout (one new login however "
        "many calls saw the drop). The result's `warnings` say so; the audit log has a "
        "`retrying` line under the same request id.",
        "Nothing to do. On a host whose new login needs a person (MFA), it is not run again: "
        "`connection_dropped`, with the `connect` hint.",
    ),
    (
        "pull, rebase, push, wandb_sync",
        "(details) after a drop",
        "`connection_dropped` from an op that changes things: never run again. pull and "
        "rebase say `checkout` and `head`; push says `push_landed` (true, false, or null when "
        "`git ls-remote` could not tell), `local_head` and `remote_head`; an upload says "
        "`uploaded`, `left` and `continue_with`.",
        "Follow the hint: it names what is left to do, if anything.",
    ),
    (
        "RemoteCommandError",
        "unparseable_output",
        "The command finished, but its output did not have the expected shape; nothing is "
        "reported as a result (never a guess). `stderr_tail` has the raw tail.",
        "Run `repo_status` to see the state, and `status` to see whether the login shell prints.",
    ),
    (
        "ConsentError",
        "consent_declined",
        "Elicit mode: the user declined the upload. Nothing was uploaded.",
        "Do not retry unless the user asks for it.",
    ),
    (
        "ConsentError",
        "consent_cancelled",
        "Elicit mode: the question was dismissed, or nobody could answer (a non-interactive "
        "client answers cancel). Nothing was uploaded.",
        "Ask the user in the conversation; they can upload with `wandb-sync --approve`.",
    ),
    (
        "ConsentError",
        "consent_unavailable",
        "Elicit mode: the client cannot show a question (no MCP elicitation). Nothing was "
        "uploaded.",
        "Ask the user; or set AEXP_RELAY_CONSENT=agent so that approve from the agent is enough.",
    ),
    (
        "RemoteCommandError",
        "origin_needs_proxy",
        "origin was unreachable, and an rc file sets a proxy that non-interactive shells "
        "never get (it is below the interactive-only guard).",
        "`git config --global http.proxy <that proxy>` on the login node, as the hint says.",
    ),
    (
        "any, for pull and rebase",
        "(details) checkout",
        "When the op was cut short or failed: `as_before` (undone), `completed` (it had "
        "finished), `undo_failed` or `unknown`, with `head`; `restore_commands` when it is not "
        "as before or as after.",
        "as_before: retry as the hint says; undo_failed: run restore_commands on the login node.",
    ),
    (
        "RemoteCommandError",
        "conflict",
        "rebase hit conflicts; it was aborted in the same call and the repo is as before. "
        "`conflicted_files` and `restored` are in the error.",
        "Resolve by hand on the login node; nothing was pushed.",
    ),
)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def render_reference_markdown() -> str:
    lines = [
        "# Reference",
        "",
        "Generated from the code by `python -m aexp_relay_mcp.adapters.reference`; do not edit by "
        "hand.",
        "",
        "## Ops",
        "",
        'Every op runs as one `ssh <host> "cd -- <repo> && ..."` call, bounded on the login',
        "node by `timeout`, with `GIT_TERMINAL_PROMPT=0`, `GIT_SSH_COMMAND='ssh -o BatchMode=yes'`",
        "and `LC_ALL=C`. The command is a POSIX sh script, handed to any login shell (bash, zsh,",
        "tcsh, fish...) as one line that `/bin/sh` decodes and runs.",
        "",
        _row("op", "arguments", "mutating", "consent", "timeout", "runs in the repo", "what"),
        _row("---", "---", "---", "---", "---", "---", "---"),
    ]
    for spec in OPS.values():
        args = ", ".join(spec.args_model.model_fields) or "none"
        commands = "<br>".join(f"`{c}`" for c in spec.commands)
        lines.append(
            _row(
                f"`{spec.name}`",
                args,
                "yes" if spec.mutating else "no",
                "yes" if spec.consent else "no",
                f"{spec.default_timeout:g} s",
                commands,
                spec.summary,
            )
        )
    lines += [
        "",
        "## Environment variables",
        "",
        _row("variable", "meaning"),
        _row("---", "---"),
    ]
    lines += [_row(f"`{name}`", meaning) for name, meaning in ENV_VARS.items()]
    lines += [
        "",
        "## Error kinds",
        "",
        "Every error carries `kind`, `message` and `hint`, plus `exit_code` and",
        "`stderr_tail` when a command ran. Hints name the next op to call.",
        "",
        _row("error", "kind", "meaning", "hint"),
        _row("---", "---", "---", "---"),
    ]
    for kind, _, message, hint in SSH_FAILURES:
        lines.append(_row("RelayDownError", f"`{kind}`", message, render_hint(hint)))
    lines.append(
        _row(
            "RelayDownError",
            "`unreachable`",
            "ssh could not run the command for another reason.",
            "Run `status`; set AEXP_RELAY_SSH_VERBOSE=1 for an ssh debug log.",
        )
    )
    for kind, (message, hint) in GUARD_FAILURES.items():
        lines.append(_row("RemoteCommandError", f"`{kind}`", message, render_hint(hint)))
    for kind, _, message, hint in GIT_FAILURES:
        lines.append(_row("RemoteCommandError", f"`{kind}`", message, render_hint(hint)))
    lines.append(
        _row(
            "RemoteCommandError",
            "`command_failed`",
            "Any other failure of the remote command.",
            "Read stderr_tail for git's own message.",
        )
    )
    for error, kind, message, hint in OTHER_KINDS:
        lines.append(_row(error, f"`{kind}`", message, hint))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference_markdown(), end="")
