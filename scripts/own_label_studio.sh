#!/usr/bin/env bash
# The README's "Use your own Label Studio", step by step, against the embedded server set up
# like an external one (personal access token, images through image_url_prefix from a static
# server on 127.0.0.1). About a minute; stops what it started. Options: --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/own_label_studio.py "$@"
