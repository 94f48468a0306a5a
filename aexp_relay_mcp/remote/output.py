"""Pure: remote output cut at the markers (see ``script``).

Whatever the login shell prints before the start marker is set aside, and only text
between a step's begin and end markers reaches a parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .script import marker


class UnparseableOutput(Exception):
    """Remote output did not have the shape a parser needs. Never papered over with a
    guess: the relay reports kind ``unparseable_output`` with the raw tail."""


@dataclass(frozen=True)
class Section:
    name: str
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ScriptOutput:
    """Remote output cut at the markers.

    | field          | meaning                                                    |
    |----------------|------------------------------------------------------------|
    | started        | the start marker arrived (the login shell ran our command) |
    | remote_pid     | the remote process group, from the start marker            |
    | login_shell    | the account's login shell ($SHELL), from the start marker  |
    | exit_code      | the script's own status; None: it never reported (killed, dropped) |
    | kind           | a guard's failure kind                                     |
    | sections       | each step's stdout and stderr, between its begin and end   |
    | stdout, stderr | everything after the start marker, markers removed         |
    | shell_stdout, shell_stderr | what the login shell printed before our command |
    """

    started: bool
    exit_code: int | None
    remote_pid: int | None
    kind: str | None
    sections: dict[str, Section] = field(default_factory=dict)
    login_shell: str | None = None
    stdout: str = ""
    stderr: str = ""
    shell_stdout: str = ""
    shell_stderr: str = ""

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def require(self, name: str) -> Section:
        """The step's section, or UnparseableOutput: a parser never guesses a missing one."""
        found = self.sections.get(name)
        if found is None:
            raise UnparseableOutput(f"the output of step {name!r} is missing")
        return found


@dataclass
class _Stream:
    pre: str = ""  # before the start marker
    body: list[str] = field(default_factory=list)  # after it, markers removed
    sections: dict[str, tuple[str, int]] = field(default_factory=dict)
    started: bool = False
    pid: int | None = None
    shell: str | None = None
    exit_code: int | None = None
    kind: str | None = None


# Compiled once (a per-call pattern with the nonce in it cost a compile per call); the
# nonce is matched as a group and compared.
_MARKER_LINE = re.compile(r"\n@AEXP-([0-9a-f]{8,64})@ (start|begin|end|exit|kind)((?: \S+)*)\n")


def _read_stream(text: str, nonce: str) -> _Stream:
    stream = _Stream()
    # A marker line always starts with a newline of its own; one is added in front of the
    # text so a marker on the very first line matches too.
    text = "\n" + text
    pos = 1
    open_name: str | None = None
    open_at = 0
    for match in _MARKER_LINE.finditer(text):
        if match.group(1) != nonce:
            continue  # another call's marker, or a look-alike: plain text
        word, args = match.group(2), match.group(3).split()
        if not stream.started:
            if word != "start":
                continue  # a marker look-alike printed by the login shell: part of its text
            stream.started = True
            stream.pre = text[1 : match.start()]
            stream.pid = int(args[0]) if args and args[0].isdigit() else None
            stream.shell = " ".join(args[1:]) or None
            pos = match.end()
            continue
        chunk = text[pos : match.start()]
        pos = match.end()
        stream.body.append(chunk)
        if word == "begin" and args:
            open_name, open_at = args[0], len(stream.body)
        elif word == "end" and len(args) == 2 and open_name is not None and args[0] == open_name:
            code = int(args[1]) if args[1].lstrip("-").isdigit() else -1
            stream.sections[open_name] = ("".join(stream.body[open_at:]), code)
            open_name = None
        elif word == "exit" and args and args[0].lstrip("-").isdigit():
            stream.exit_code = int(args[0])
        elif word == "kind" and args:
            stream.kind = args[0]
    if stream.started:
        stream.body.append(text[pos:])
    else:
        stream.pre = text[1:]
    return stream


def parse_script_output(stdout: str, stderr: str, nonce: str) -> ScriptOutput:
    """Cut both streams at the markers. Output before the start marker (the login shell's)
    and output outside any step's begin/end never reaches a section."""
    marker(nonce)  # validates it
    out = _read_stream(stdout, nonce)
    err = _read_stream(stderr, nonce)
    sections: dict[str, Section] = {}
    for name in list(out.sections) + [n for n in err.sections if n not in out.sections]:
        o, e = out.sections.get(name), err.sections.get(name)
        code = o[1] if o is not None else e[1] if e is not None else -1
        sections[name] = Section(name, code, o[0] if o else "", e[0] if e else "")
    return ScriptOutput(
        started=err.started or out.started,
        exit_code=err.exit_code if err.exit_code is not None else out.exit_code,
        remote_pid=err.pid if err.pid is not None else out.pid,
        kind=err.kind,
        sections=sections,
        login_shell=err.shell or out.shell,
        stdout="".join(out.body),
        stderr="".join(err.body).strip("\n"),
        shell_stdout=out.pre,
        shell_stderr=err.pre,
    )
