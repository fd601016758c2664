#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml: the docs/ pages plus an API
# reference rendered from the docstrings) into site/, strictly: a broken link,
# a missing page or an unresolved reference fails the build. First checks that
# the committed API pages (docs/api/) match the package's public API
# (regenerate them with `.venv/bin/python scripts/gen_api_pages.py`).
#   bash scripts/docs.sh            # build into site/ (a few seconds)
#   bash scripts/docs.sh serve      # serve on http://127.0.0.1:8000, rebuilt on edits
# Extra arguments go to `mkdocs build` / `mkdocs serve`. Sets up ./.venv first
# if needed. Works offline: the theme and its assets ship with mkdocs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/gen_api_pages.py --check
if [ "${1:-}" = "serve" ]; then
  shift
  exec .venv/bin/mkdocs serve --strict "$@"
fi
.venv/bin/mkdocs build --strict --quiet "$@"
echo "Documentation built: site/index.html"
