"""The checked-in stubs are what generate.sh makes from proto/ now: a proto change that was not
regenerated fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHECKED_IN = HERE / "src/credbroker/_proto/credbroker/v1"


def test_the_checked_in_stubs_match_a_fresh_generation(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(HERE / "generate.sh"), str(tmp_path)], check=True, env=env)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == ["broker_pb2.py", "broker_pb2.pyi", "broker_pb2_grpc.py", "types_pb2.py", "types_pb2.pyi"]
    kept = sorted(p.name for p in CHECKED_IN.iterdir() if p.is_file() and p.name != "__init__.py")
    assert kept == fresh, "the checked-in stub directory holds other files"
    for name in fresh:
        assert (tmp_path / name).read_text() == (CHECKED_IN / name).read_text(), (
            f"{name} is stale: run clients/python/generate.sh"
        )


def test_the_stubs_import_inside_the_package():
    from credbroker._proto.credbroker.v1 import broker_pb2, broker_pb2_grpc

    assert broker_pb2.BeginTaskRequest.DESCRIPTOR.full_name == "credbroker.v1.BeginTaskRequest"
    assert hasattr(broker_pb2_grpc, "BrokerStub")
