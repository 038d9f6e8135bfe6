#!/usr/bin/env python3
"""Build a tiny OCI image tarball from Debian's static busybox.

The image has one uncompressed layer: /bin/busybox with a symlink per
applet, a minimal /etc/passwd and /etc/group, and empty /tmp, /proc,
/sys, /dev and /root.  Every tar entry has a fixed owner and mtime and the
entries are sorted, so the same busybox binary always gives the same
digests.  The output is what ``ctr images import`` takes: oci-layout,
index.json (annotated with the image name) and blobs/sha256/*, as laid
out by the OCI image-layout spec.

    python3 tools/mkimage.py OUT.tar [--busybox PATH] [--name REF]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BUSYBOX = Path("/bin/busybox")
DEFAULT_NAME = "docker.io/library/rebootshim-busybox:latest"
# The tests and the demo call these; the build fails loudly if the busybox
# at hand lacks one, rather than the container failing later.
APPLETS_NEEDED = """
sh sleep echo cat reboot poweroff halt ip ls date adjtimex touch seq mkdir
hostname ps true false kill printf head dd wc id
"""
REQUIRED_APPLETS = frozenset(APPLETS_NEEDED.split())
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
# uname -m -> GOARCH, the spelling OCI platforms use.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclass(frozen=True, slots=True)
class Blob:
    """One content-addressed blob of the image layout."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a tar archive, with everything that varies by name."""

    name: str
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    data: bytes = b""
    target: str = ""


def list_applets(busybox: Path) -> list[str]:
    """The applets this busybox answers to; all the required ones or exit."""
    out = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout
    names = sorted(set(out.split()) - {"busybox"})
    missing = REQUIRED_APPLETS.difference(names)
    if missing:
        raise SystemExit(f"{busybox} lacks applets: {' '.join(sorted(missing))}")
    return names


def rootfs_entries(busybox: Path, applets: Iterable[str]) -> list[Entry]:
    """The layer's members, sorted by name."""
    entries = [Entry(d, tarfile.DIRTYPE, 0o755) for d in ("bin", "dev", "etc")]
    entries += [Entry(d, tarfile.DIRTYPE, 0o555) for d in ("proc", "sys")]
    entries += [Entry("root", tarfile.DIRTYPE, 0o700)]
    entries += [Entry("tmp", tarfile.DIRTYPE, 0o1777)]
    entries += [Entry("etc/passwd", data=PASSWD), Entry("etc/group", data=GROUP)]
    entries += [Entry("bin/busybox", mode=0o755, data=busybox.read_bytes())]
    entries += [
        Entry(f"bin/{name}", tarfile.SYMTYPE, 0o777, target="busybox")
        for name in applets
    ]
    return sorted(entries, key=lambda e: e.name)


def write_tar(entries: Iterable[Entry]) -> bytes:
    """A tar of the entries with owner root and mtime 0, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type, info.mode, info.mtime = entry.kind, entry.mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.linkname, info.size = entry.target, len(entry.data)
            tar.addfile(info, io.BytesIO(entry.data) if entry.data else None)
    return buf.getvalue()


def to_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_blobs(layer: Blob, arch: str) -> tuple[Blob, Blob]:
    """The config and manifest for a single-layer image."""
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    config_blob = Blob(MEDIA_CONFIG, to_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor()],
    }
    return config_blob, Blob(MEDIA_MANIFEST, to_json(manifest))


def layout_entries(name: str, arch: str, blobs: list[Blob]) -> list[Entry]:
    """The image-layout members; the last blob is the manifest."""
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    annotations = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": tag,
    }
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            blobs[-1].descriptor(
                annotations=annotations, platform={"architecture": arch, "os": "linux"}
            )
        ],
    }
    entries = [
        Entry("oci-layout", data=to_json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", data=to_json(index)),
        Entry("blobs", tarfile.DIRTYPE, 0o755),
        Entry("blobs/sha256", tarfile.DIRTYPE, 0o755),
    ]
    entries += [Entry(f"blobs/sha256/{b.digest[7:]}", data=b.data) for b in blobs]
    return entries


def build(busybox: Path, name: str, out: Path) -> str:
    """Write the image tarball to out; return the manifest digest."""
    arch = GOARCH.get(platform.machine(), platform.machine())
    layer = Blob(MEDIA_LAYER, write_tar(rootfs_entries(busybox, list_applets(busybox))))
    config, manifest = image_blobs(layer, arch)
    data = write_tar(layout_entries(name, arch, [layer, config, manifest]))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return manifest.digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the busybox test image")
    parser.add_argument("output", type=Path, help="where to write the tarball")
    parser.add_argument("--busybox", type=Path, default=DEFAULT_BUSYBOX)
    parser.add_argument("--name", default=DEFAULT_NAME, help="image reference")
    args = parser.parse_args(argv)
    print(build(args.busybox, args.name, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
