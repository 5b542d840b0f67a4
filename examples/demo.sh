#!/usr/bin/env bash
# demo.sh - the run command of the README: for now, the log demo.
exec "$(dirname "${BASH_SOURCE[0]}")/log-demo/run.sh" "$@"
