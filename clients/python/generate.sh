#!/usr/bin/env bash
# Generates the gRPC stubs of the workload API (proto/credbroker/v1/{broker,types}.proto) into
# src/credbroker/_proto/credbroker/v1 (or into OUT_DIR), with the pinned grpcio-tools.
#
#   clients/python/generate.sh [OUT_DIR]
#
# The stubs are checked in; tests/test_stubs.py runs this into a temp dir and diffs, so a proto
# change that was not regenerated fails the tests. PYTHON picks the interpreter (default: the
# project's .deps/venv, where scripts/deps.sh installs grpcio-tools==1.85.0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.deps/venv/bin/python}"
out="${1:-$here/src/credbroker/_proto/credbroker/v1}"

want="1.85.0"
have="$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [ "$have" != "$want" ]; then
  echo "error: grpcio-tools $want is required, $python has $have (scripts/deps.sh installs it)" >&2
  exit 2
fi

includes="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$repo/proto" && "$python" -m grpc_tools.protoc -I. "-I$includes" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  credbroker/v1/broker.proto credbroker/v1/types.proto)

mkdir -p "$out"
for f in broker_pb2.py broker_pb2.pyi broker_pb2_grpc.py types_pb2.py types_pb2.pyi; do
  # protoc writes imports for the proto package (`from credbroker.v1 import types_pb2`), which
  # inside this package would name credbroker.v1 of the client itself: point them at _proto.
  sed -e 's/^from credbroker\.v1 import /from credbroker._proto.credbroker.v1 import /' \
    "$tmp/credbroker/v1/$f" >"$out/$f"
done
