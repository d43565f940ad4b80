"""Compile toolkit/serve/inference.proto into toolkit/serve/inference_descriptor.py (a serialized FileDescriptorProto).

Run with grpcio-tools installed (any version; its protoc only parses the file):
    python tools/gen_inference_descriptor.py
The server builds its message classes from these bytes in a private descriptor pool
(google.protobuf.message_factory), so no generated _pb2 code ties it to one protobuf runtime, and a
process that also imports tritonclient's own `inference.*` messages sees no duplicate symbols.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "toolkit" / "serve" / "inference.proto"
OUT = ROOT / "toolkit" / "serve" / "inference_descriptor.py"


def main() -> None:
    import grpc_tools

    with tempfile.TemporaryDirectory() as tmp:
        desc = Path(tmp) / "inference.desc"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                        f"--descriptor_set_out={desc}", PROTO.name], check=True)
        from google.protobuf import descriptor_pb2

        files = descriptor_pb2.FileDescriptorSet.FromString(desc.read_bytes())
        (file,) = files.file
        data = file.SerializeToString()
    version = getattr(grpc_tools, "__version__", None) or _dist_version("grpcio-tools")
    chunks = "\n".join(f"    {data[i:i + 64]!r}" for i in range(0, len(data), 64))
    OUT.write_text(
        '"""inference.proto compiled to a serialized FileDescriptorProto (generated; do not edit).\n\n'
        f"Made by tools/gen_inference_descriptor.py with grpcio-tools {version}.\n"
        '"""\n\n'
        f"FILE_DESCRIPTOR = (\n{chunks}\n)\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(data)} bytes of descriptor)")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
