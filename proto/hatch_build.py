"""Put src/hm_proto and src/hm_proto_client into halton-meter-proto's sdist and wheel.

In the repository they live in ../src (shared with the application); inside
an sdist they are in ./src. An editable install uses dev-mode-dirs instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGES = ("hm_proto", "hm_proto_client")


class SourceTreeHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "editable":
            return
        root = Path(self.root)
        for name in PACKAGES:
            source = next(
                (base / name for base in (root / "src", root.parent / "src") if (base / name).is_dir()),
                None,
            )
            if source is None:
                raise FileNotFoundError(f"cannot find the {name} package next to {root}")
            dest = f"src/{name}" if self.target_name == "sdist" else name
            build_data["force_include"][str(source)] = dest
