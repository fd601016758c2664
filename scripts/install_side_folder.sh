# Sourced by scripts/test_floor.sh and scripts/setup_torch.sh: installs
# packages with pip --target and --no-deps into a folder beside ./.venv,
# which the tests put in front with PYTHONPATH (./.venv is not changed).
#
#   install_side_folder FOLDER EXPECTED PACKAGE...
#
# Installs into FOLDER.partial and moves it to FOLDER when FOLDER.partial/
# EXPECTED exists, so an interrupted install is never taken for a finished
# one; writes the packages' list to FOLDER/.installed (see
# side_folder_is_current). Exits with a message naming the caller if the
# install failed.
install_side_folder() {
  local folder=$1 expected=$2
  shift 2
  rm -rf "$folder" "$folder.partial"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --no-compile --target "$folder.partial" "$@" 2>&1 |
    grep -v "is ignored" >&2 || true
  [ -e "$folder.partial/$expected" ] || {
    echo "$(basename "$0"): installing $* into $folder failed" >&2
    exit 1
  }
  printf '%s\n' "$@" >"$folder.partial/.installed"
  mv "$folder.partial" "$folder"
}

# Whether FOLDER holds exactly PACKAGE... (installed by install_side_folder).
side_folder_is_current() {
  local folder=$1
  shift
  [ "$(cat "$folder/.installed" 2>/dev/null)" = "$(printf '%s\n' "$@")" ]
}
