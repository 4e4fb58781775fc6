"""YAML that Kubernetes reads back exactly as written.

PyYAML writes YAML 1.1, Kubernetes reads YAML 1.2: a string such as ``1234e5678`` (a possible spec hash) or
``0o17`` goes out unquoted from PyYAML and comes back as a number, which the API server then refuses
("cannot unmarshal number into ... of type string"). Every string that a YAML 1.2 or 1.1 reader could take for
a number, a boolean or null is quoted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

_NOT_A_STRING = re.compile(
    r"""^(?:
      [-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?   # ints and floats, with or without exponent
    | [-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?
    | 0x[0-9a-fA-F_]+ | 0o[0-7_]+ | 0b[01_]+
    | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
    | true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|y|Y|n|N
    | null|Null|NULL|~
    )$""",
    re.X,
)


class KubeDumper(yaml.SafeDumper):
    """A SafeDumper that quotes strings a YAML 1.2 reader would not read as strings."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "'" if data == "" or _NOT_A_STRING.match(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


KubeDumper.add_representer(str, _represent_str)


def dump_all(docs: Iterable[Any]) -> str:
    """Documents as multi-document YAML, key order kept."""
    return yaml.dump_all(list(docs), Dumper=KubeDumper, sort_keys=False)
