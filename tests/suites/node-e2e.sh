#!/usr/bin/env bash
# The chart, the operator, the authorization servers and an injected MCP pod running on a real node beside the
# test control plane (tests/node/e2e.sh; the first run builds the node's binaries, about 15 minutes).
exec bash "$(dirname "$0")/../node/e2e.sh"
