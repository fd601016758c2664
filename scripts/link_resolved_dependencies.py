"""Fills a fresh environment with the wheel's resolved dependencies, as links.

    .venv/bin/python scripts/link_resolved_dependencies.py REPORT TARGET_SITE

REPORT is what the installer resolved for the wheel: pip's installation
report (``pip install --dry-run --report``, a .json file) or uv's pinned
requirements (``uv pip compile``, ``name==version`` lines); TARGET_SITE is
the site-packages folder of a fresh virtual environment. Every distribution
in the report but keras-mtl itself must be installed in this interpreter's
environment (./.venv) at the reported version; its files (from its RECORD, with their byte-compiled twins) are
hard-linked into TARGET_SITE (symbolic links across file systems).

Why: installing the wheel's dependencies for real writes TensorFlow's ~2.7 GB
a second time, and CI machines have run out of disk doing so. Links cost
nothing, and the fresh environment still holds only what the wheel declares,
so an import of an undeclared package fails the smoke test as it would for a
user. Prints one line; exits 1 with a message naming the distribution when
./.venv does not hold the resolved version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path

from packaging.utils import canonicalize_name


def resolved(report: Path) -> dict[str, str]:
    """{canonical name: version} of what the installer would install, but
    keras-mtl (itself a `keras-mtl @ file://...` line in uv's output)."""
    if report.suffix == ".json":
        entries = json.loads(report.read_text())["install"]
        pairs = [(e["metadata"]["name"], e["metadata"]["version"]) for e in entries]
    else:
        lines = [line.split("#")[0].strip() for line in report.read_text().splitlines()]
        # `name==version`, without an environment marker (`; ...`).
        pins = [line.split(";")[0] for line in lines if "==" in line]
        pairs = [tuple(pin.split("==")) for pin in pins]
    versions = {
        canonicalize_name(name.strip()): version.strip() for name, version in pairs
    }
    versions.pop("keras-mtl", None)
    return versions


def installed(site: Path) -> dict[str, importlib.metadata.Distribution]:
    """{canonical name: distribution} found in the folder ``site``."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def files_to_link(dist: importlib.metadata.Distribution, site: Path) -> list[Path]:
    """The distribution's files inside ``site`` (relative), with their .pyc."""
    if dist.files is None:
        sys.exit(
            f"link_resolved_dependencies.py: {dist.metadata['Name']} has no RECORD"
        )
    paths = []
    for record in dist.files:
        path = (site / record).resolve()
        if not path.is_relative_to(site) or not path.is_file():
            continue  # scripts and data outside site-packages: not imported
        paths.append(path.relative_to(site))
        if path.suffix == ".py":
            # scripts/setup.sh byte-compiles after pip, so RECORD omits these.
            pyc = Path(importlib.util.cache_from_source(str(path)))
            if pyc.is_file():
                paths.append(pyc.relative_to(site))
    return paths


def link(source: Path, target: Path) -> None:
    """Hard link, or a symbolic link where the two are on different devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        os.symlink(source, target)


def main() -> None:
    report, target_site = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    here = installed(site)
    wanted = resolved(report)
    count = 0
    for name, version in sorted(wanted.items()):
        dist = here.get(name)
        if dist is None or dist.version != version:
            have = "not installed" if dist is None else dist.version
            sys.exit(
                f"link_resolved_dependencies.py: the wheel resolves {name}=={version}"
                f" but {site} has {have}; run bash scripts/setup.sh"
            )
        for relative in files_to_link(dist, site):
            target = target_site / relative
            if not target.exists():
                link(site / relative, target)
                count += 1
    print(f"linked {len(wanted)} distributions ({count} files) from {site}")


if __name__ == "__main__":
    main()
