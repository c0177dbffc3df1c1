"""Reading YAML strictly: scenario files and `--set` values.

PyYAML's safe loader silently keeps the last of two equal keys, overflows the stack on deeply
nested input and decodes bytes only once asked; here each is one clear `YamlError` instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class YamlError(ValueError):
    """YAML that cannot be a scenario (or a --set value), with where and why."""


class _DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice (raised while composing, turned into a YamlError)."""


MAX_DEPTH = 64  # a scenario is about 5 levels deep; PyYAML slows quadratically, then overflows the stack


class _TooDeep(yaml.YAMLError):
    """Nesting beyond MAX_DEPTH (raised while composing, turned into a YamlError)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses a mapping with the same key twice (PyYAML keeps the last) and
    nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(f"line {self.peek_event().start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges may repeat keys by design
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {seen[key]}); "
                                        "YAML would silently keep only the last")
                seen[key] = line
            except TypeError:
                pass  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e9 and 1.5e-3 as strings, so `prompt_tokens: 1e9`
# failed as "not an integer" and `rate: 1e3` only worked by pydantic parsing the string.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python objects; `YamlError` naming `source` for bad syntax, duplicate keys,
    or nesting too deep to read."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooDeep as e:
        raise YamlError(f"{source}: YAML nested more than {MAX_DEPTH} levels deep ({e}); a scenario is a few") from None
    except _DuplicateKey as e:
        raise YamlError(f"{source}: {e}") from None
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark
        where = f"line {m.line + 1}, column {m.column + 1}: " if m is not None else ""
        what = ", ".join(x for x in (e.context, e.problem) if x)
        raise YamlError(f"{source}: not valid YAML: {where}{what}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlError(f"{source}: YAML nested too deeply to read (a scenario is a few levels deep)") from None


def read_yaml_file(path: Path) -> Any:
    """A YAML file -> Python objects; `YamlError` for unreadable, binary or non-UTF-8 files too."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlError(f"{path}: cannot read: {e.strerror or e}") from None
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise YamlError(f"{path}: UTF-16/32 text, not UTF-8; save it as UTF-8")
    if b"\x00" in data:
        raise YamlError(f"{path}: a binary file, not a YAML scenario")
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a YAML scenario?") from None
    return parse_yaml(text, str(path))
