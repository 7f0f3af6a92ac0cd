#!/usr/bin/env bash
# One command on a fresh machine: install, generate sample shards with planted duplicates,
# and run dedupdask on them on a local Dask cluster. Extra arguments go to `dedupdask demo`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m dedupdask demo --out demo "$@"
