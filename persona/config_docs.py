"""docs/configuration.md, generated from the settings files: every key with its default and its comment.

``conf/*.yaml`` hold every default once (the settings models declare types and bounds, no defaults), and their
comments say what each key means; this page is those files as tables, with each key's environment override
(``persona.settings.ENV_OVERRIDES``). A test checks that the page is current and names every model field:
``python -m persona.config_docs`` writes it again.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import BaseModel

from persona.settings import ENV_OVERRIDES, ROOT, GeneratorSettings, JobSettings, StackSettings

PAGE = ROOT / "docs" / "configuration.md"
FILES: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("job.yaml", JobSettings, "the streaming job (`--set key=value` overrides any key)"),
    ("stack.yaml", StackSettings, "the local stack: Kafka, Redis and the standalone Flink cluster"),
    ("generator.yaml", GeneratorSettings, "the synthetic shoppers (`persona generate`)"),
)
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


def rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) of every leaf of a commented YAML file; a comment-only line under a key
    continues its comment.

    >>> rows("a:            # section\\n  b: 1        # one\\n              # more\\n  c: x\\n")
    [('a.b', '1', 'one more'), ('a.c', 'x', '')]
    """
    out: list[tuple[str, str, str]] = []
    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if out and line.index("#") > 0 and out[-1][2] and not line.startswith("#"):
                key, default, comment = out[-1]
                out[-1] = (key, default, f"{comment} {stripped.lstrip('#').strip()}")
            continue
        m = _KEY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        path = [(i, k) for i, k in path if i < indent]
        value = m["value"].strip()
        if not value:
            path.append((indent, m["key"]))
            continue
        out.append((".".join([k for _, k in path] + [m["key"]]), value, (m["comment"] or "").strip()))
    return out


def fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf field of a settings model, dotted; a free-form mapping (e.g. consent regions) is one leaf."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        sub: Any = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= fields(sub, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    env = {file: {key: var for var, key in ENV_OVERRIDES.get(file, {}).items()} for file, _, _ in FILES}
    lines = ["# Configuration", "",
             "Generated from `conf/*.yaml` by `python -m persona.config_docs` (a test checks that it is current): "
             "the files hold every default once, and their comments are the meanings below. Relative paths are "
             "relative to the project root. Environment variables override hosts, ports and secrets; "
             "`--set key=value` overrides any key of the job. A bad value is one line naming the file and the "
             "key, e.g. `conf/job.yaml: redis.flush_interval_ms: Input should be greater than 0`.", ""]
    for file, _, what in FILES:
        lines += [f"## `conf/{file}`: {what}", "", "| key | default | environment | meaning |", "|---|---|---|---|"]
        for key, default, comment in rows((ROOT / "conf" / file).read_text()):
            var = env[file].get(key, "")
            lines.append(f"| `{key}` | `{_cell(default)}` | {f'`{var}`' if var else ''} | {_cell(comment)} |")
        lines.append("")
    return "\n".join(lines)


def missing() -> dict[str, set[str]]:
    """Per file: model fields that the file does not set (their default would live nowhere)."""
    out = {}
    for file, model, _ in FILES:
        documented = {k for k, _, _ in rows((ROOT / "conf" / file).read_text())}
        lacking = {f for f in fields(model) if f not in documented
                   and not any(d.startswith(f + ".") or f.startswith(d + ".") for d in documented)}
        if lacking:
            out[file] = lacking
    return out


def main(argv: list[str] | None = None) -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    lacking = missing()
    for file, keys in lacking.items():
        print(f"conf/{file} does not set: {', '.join(sorted(keys))}", file=sys.stderr)
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
