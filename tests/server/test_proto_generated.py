"""The committed *_pb2 files are what grpc_tools generates from the .proto files now."""

from __future__ import annotations

import filecmp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "proto" / "zerotrace" / "v1"


def test_generated_code_is_up_to_date(tmp_path):
    from grpc_tools import protoc

    protos = sorted(p.relative_to(ROOT).as_posix() for p in V1.glob("*.proto"))
    assert protos, "no .proto files found"
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            "-I",
            str(ROOT),
            "-I",
            include,
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *[str(ROOT / p) for p in protos],
        ]
    )
    assert rc == 0
    fresh = sorted((tmp_path / "proto" / "zerotrace" / "v1").glob("*.py"))
    committed = sorted(p.name for p in V1.glob("*_pb2*.py"))
    assert [p.name for p in fresh] == committed, "generated file set differs"
    stale = [p.name for p in fresh if not filecmp.cmp(p, V1 / p.name, shallow=False)]
    assert not stale, (
        f"stale generated code {stale}: run `.venv/bin/python -m grpc_tools.protoc -I . "
        "--python_out=. --grpc_python_out=. proto/zerotrace/v1/*.proto` from the repo root"
    )
