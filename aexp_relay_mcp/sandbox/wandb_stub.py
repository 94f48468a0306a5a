"""A stub ``wandb`` on the login node, and offline runs for it to upload."""

from __future__ import annotations

from pathlib import Path

from .repos import Repos

WANDB_STUB = """#!/bin/sh
# Stub wandb for the aexp sandbox: records its argv (in {log}, joined; in {log}.argv, exactly:
# each word NUL-terminated, one call a line, its own name first), marks synced runs as wandb
# does, and records each run it finished ("done <dir>" in {log}.done). An upload takes as
# long as the file {log}.delay says (seconds), when it exists: a real run's upload.
printf '%s\\n' "$*" >> "{log}"
{{ printf '%s\\0' "$0" "$@"; echo; }} >> "{log}.argv"
[ "$1" = sync ] || exit 0
shift
for d in "$@"; do
  case "$d" in -*) continue ;; esac
  [ -d "$d" ] || {{ echo "wandb: no such run directory: $d" >&2; exit 1; }}
  [ -f "{log}.delay" ] && sleep "$(cat "{log}.delay")"
  id=${{d##*-}}
  : > "$d/run-$id.wandb.synced"
  printf 'done %s\\n' "$d" >> "{log}.done"
  echo "Syncing: $d ... done."
done
"""


def received(log: Path) -> list[list[str]]:
    """Every call the stub got, each its exact argv (its own name first)."""
    try:
        lines = Path(f"{log}.argv").read_text().split("\n")
    except OSError:
        return []
    return [line.split("\0")[:-1] for line in lines if line]


def install_wandb(program: Path, log: Path, repos: Repos) -> None:
    repos.write(program, WANDB_STUB.format(log=log))
    program.chmod(0o755)


def make_runs(directory: Path, count: int, repos: Repos, *, synced_last: bool = True) -> list[str]:
    """``count`` offline runs in directory (the last one already synced)."""
    names = []
    for i in range(count):
        name = f"offline-run-20260101_12000{i}-run{i}"
        run = directory / name
        run.mkdir(parents=True)
        repos.write(run / f"run-run{i}.wandb", "x" * (4096 * (i + 1)))
        if synced_last and i == count - 1:
            repos.write(run / f"run-run{i}.wandb.synced", "")
        names.append(name)
    repos.own(directory)
    return names


def make_sweep(directory: Path, count: int, repos: Repos, *, size: int = 1024) -> list[str]:
    """A hyperparameter sweep: ``count`` offline runs of ``size`` bytes, none synced."""
    names = []
    for i in range(count):
        name = f"offline-run-20260301_{i // 60:04d}{i % 60:02d}-sweep{i:05d}"
        run = directory / name
        run.mkdir(parents=True)
        (run / f"run-sweep{i:05d}.wandb").write_bytes(b"x" * size)
        names.append(name)
    repos.own(directory)
    return names
