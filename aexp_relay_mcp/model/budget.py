"""Every result fits the agent's context: the budget, and the one way lists are cut to it.

Claude Code shows the model at most 25,000 tokens of one tool result and saves anything
larger to a file; the model pays for every token below that. A tool's whole result (its
``structuredContent`` plus the same JSON as text) stays under ``RESULT_CHARS``, about
8,000 tokens, whatever the repo, the origin or the wandb directory holds.

Lists are cut, never counts: every list a result carries has an exact total beside it, and
a flag that says it was cut. Lists come in the order that matters (the caller's), and are
cut from their end, the longest first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

# A whole tool result, structuredContent and its text together (~4 characters a token).
RESULT_CHARS = 32_000
# The JSON of one result: it is sent twice (structuredContent, and the same as text).
JSON_CHARS = RESULT_CHARS // 2 - 1_000

M = TypeVar("M", bound=BaseModel)


def json_size(data: Any) -> int:
    """Characters of data as the adapters send it."""
    return len(json.dumps(data, ensure_ascii=False, default=str))


def _cut(lists: dict[str, list[Any]], size: int, budget: int) -> dict[str, int]:
    """How many items of each list to keep so that size falls within budget: drop the
    last item of the list that is largest now, again and again."""
    sizes = {name: [json_size(item) + 2 for item in items] for name, items in lists.items()}
    keep = {name: len(items) for name, items in lists.items()}
    weight = {name: sum(s) for name, s in sizes.items()}
    while size > budget:
        name = max(weight, key=lambda n: weight[n] if keep[n] else -1)
        if not keep[name]:
            break
        keep[name] -= 1
        dropped = sizes[name][keep[name]]
        weight[name] -= dropped
        size -= dropped
    return keep


def fit(model: M, *, budget: int = JSON_CHARS) -> M:
    """The model with its ``BUDGET_LISTS`` cut so that its JSON fits, and its
    ``BUDGET_FLAG`` set when anything was cut."""
    names: Sequence[str] = getattr(model, "BUDGET_LISTS", ())
    data = model.model_dump(mode="json")
    size = json_size(data)
    if size <= budget or not names:
        return model
    keep = _cut({name: data[name] for name in names}, size, budget)
    update: dict[str, Any] = {name: getattr(model, name)[: keep[name]] for name in names}
    flag = getattr(model, "BUDGET_FLAG", None)
    if flag:
        update[flag] = True
    return model.model_copy(update=update)


def fit_data(data: dict[str, Any], *, budget: int = JSON_CHARS) -> dict[str, Any]:
    """A plain JSON object (an error's) with its lists, at any depth, cut so that it fits;
    ``lists_truncated: true`` says so. Text fields are bounded where they are made."""
    size = json_size(data)
    if size <= budget:
        return data
    found: dict[str, list[Any]] = {}
    owners: dict[str, tuple[dict[str, Any], str]] = {}

    def collect(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, list) and value:
                    found[f"{path}/{key}"] = value
                    owners[f"{path}/{key}"] = (node, key)
                collect(value, f"{path}/{key}")

    data = json.loads(json.dumps(data, ensure_ascii=False, default=str))  # a copy to cut
    collect(data, "")
    for path, keep in _cut(found, size, budget).items():
        owner, key = owners[path]
        owner[key] = owner[key][:keep]
    data["lists_truncated"] = True
    return data
