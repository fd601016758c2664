"""Writes the API reference: one page per public class and function of keras_mtl.

    python scripts/gen_api_pages.py          # (re)write docs/api/ and mkdocs.yml's API nav
    python scripts/gen_api_pages.py --check  # exit 1 if they are not up to date

The public API is each module of `PUBLIC_MODULES` with its `__all__`; the pages
are found by reading the source with griffe (the engine mkdocstrings renders
them with), so nothing is imported and TensorFlow does not start. Each page is
a mkdocstrings `:::` block: the text itself comes from the docstrings at build
time. The pages and the nav block are committed; `scripts/docs.sh` runs the
check before building, so a class added to an `__all__` without its page fails
the docs build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "docs" / "api"
MKDOCS_YML = ROOT / "mkdocs.yml"
NAV_BEGIN = "  # BEGIN API pages (written by scripts/gen_api_pages.py)"
NAV_END = "  # END API pages"

# Module -> its heading in the reference. `keras_mtl` itself contributes
# MultiTaskModel and raise_malloc_limits; the subpackages are the rest of
# the public API.
PUBLIC_MODULES = {
    "keras_mtl": "Top level",
    "keras_mtl.weighting": "Weighting",
    "keras_mtl.aggregation": "Aggregation",
    "keras_mtl.callbacks": "Callbacks",
    "keras_mtl.layers": "Layers",
    "keras_mtl.datasets": "Datasets",
}


def public_objects() -> dict[str, list[tuple[str, str]]]:
    """Module -> [(name, first docstring line)] of its exported classes and functions."""
    package = griffe.load("keras_mtl", search_paths=[str(ROOT)])
    found: dict[str, list[tuple[str, str]]] = {}
    for module_path in PUBLIC_MODULES:
        module = package if module_path == "keras_mtl" else package[module_path[10:]]
        if module.exports is None:
            raise SystemExit(
                f"{module_path} has no __all__: its public API is unknown."
            )
        entries = []
        for name in sorted(module.exports, key=str.lower):
            target = module[name]
            target = target.final_target if target.is_alias else target
            if target.kind.value not in ("class", "function"):
                continue  # submodules, constants, the alias dicts
            doc = (
                target.docstring.value.strip().splitlines()[0]
                if target.docstring
                else ""
            )
            entries.append((name, doc))
        found[module_path] = entries
    return found


def page_path(module_path: str, name: str) -> Path:
    """docs/api/<subpackage>/<name>.md; the top level's at docs/api/<name>.md."""
    sub = module_path.split(".")[1:]
    return API_DIR.joinpath(*sub, f"{name}.md")


def render(found: dict[str, list[tuple[str, str]]]) -> tuple[dict[Path, str], str]:
    """The pages' text by path, and the nav block for mkdocs.yml."""
    header = "<!-- Written by scripts/gen_api_pages.py: do not edit. -->\n\n"
    pages: dict[Path, str] = {}
    index = [header, "# API reference\n\n", "One page per public class and function.\n"]
    nav = [NAV_BEGIN, "  - API reference:", "      - api/index.md"]
    for module_path, entries in found.items():
        index.append(f"\n## {PUBLIC_MODULES[module_path]}: `{module_path}`\n\n")
        index.append("| name | summary |\n|---|---|\n")
        nav.append(f"      - {PUBLIC_MODULES[module_path]}:")
        for name, doc in entries:
            path = page_path(module_path, name)
            rel = path.relative_to(API_DIR).as_posix()
            pages[path] = (
                f"{header}# {module_path}.{name}\n\n::: {module_path}.{name}\n"
            )
            summary = doc.replace("|", "\\|")
            index.append(f"| [`{name}`]({rel}) | {summary} |\n")
            nav.append(f"          - {name}: api/{rel}")
    nav.append(NAV_END)
    pages[API_DIR / "index.md"] = "".join(index)
    lower = [p.as_posix().lower() for p in pages]
    if len(set(lower)) != len(lower):
        raise SystemExit("Two API pages differ only in case (case-insensitive disks).")
    return pages, "\n".join(nav)


def with_nav(text: str, nav: str) -> str:
    """mkdocs.yml's text with the block between the markers replaced by `nav`."""
    start, end = text.find(NAV_BEGIN), text.find(NAV_END)
    if start < 0 or end < start:
        raise SystemExit(f"mkdocs.yml lacks the lines {NAV_BEGIN!r} ... {NAV_END!r}.")
    return text[:start] + nav + text[end + len(NAV_END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the files are up to date"
    )
    args = parser.parse_args(argv)
    pages, nav = render(public_objects())
    yml = MKDOCS_YML.read_text()
    new_yml = with_nav(yml, nav)
    existing = set(API_DIR.rglob("*.md")) if API_DIR.exists() else set()
    stale = sorted(existing - set(pages))
    changed = sorted(
        p for p, t in pages.items() if not p.exists() or p.read_text() != t
    )
    if args.check:
        problems = [f"missing or outdated: {p.relative_to(ROOT)}" for p in changed]
        problems += [f"not in the public API: {p.relative_to(ROOT)}" for p in stale]
        if new_yml != yml:
            problems.append("mkdocs.yml's API nav is outdated")
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print("Run: python scripts/gen_api_pages.py", file=sys.stderr)
            return 1
        print(f"API pages up to date ({len(pages)} pages).")
        return 0
    for path in stale:
        path.unlink()
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[path])
    if new_yml != yml:
        MKDOCS_YML.write_text(new_yml)
    print(f"Wrote {len(changed)} of {len(pages)} API pages, removed {len(stale)}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
