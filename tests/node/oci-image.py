#!/usr/bin/env python3
"""Writes an OCI image layout tarball (what `ctr images import` takes) from files on this machine, without a
base image, a registry or a container engine.

The image has one layer: the files given with --file, the shared libraries `ldd` says each executable needs
(with the dynamic loader), and the few files a distroless `cc` image has that our programs use: /etc/passwd and
/etc/group naming `nonroot` (65532), the CA bundle, an empty /tmp. The config carries the user, entrypoint and
working directory, so an image built here keeps the production Dockerfiles' contract (user 65532, binary in
/usr/local/bin, no shell). Everything is written deterministically (mtime 0, owner root), so the same inputs
give the same digest.

    oci-image.py --name ghcr.io/mcp-authz/mcp-authz-sidecar:test --output sidecar.tar \\
        --file /path/to/mcp-authz-sidecar:/usr/local/bin/mcp-authz-sidecar \\
        --entrypoint /usr/local/bin/mcp-authz-sidecar
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt"]


def shared_libraries(path):
    """The absolute paths `ldd` resolves for an ELF executable (empty for a static one or a script)."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return []
    result = subprocess.run(["ldd", path], capture_output=True, text=True)
    if result.returncode != 0:
        if "not a dynamic executable" in result.stdout + result.stderr:
            return []
        sys.exit(f"oci-image: ldd {path} failed: {result.stderr.strip()}")
    libraries = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            sys.exit(f"oci-image: {path} needs a library this machine lacks: {line.strip()}")
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libraries.append(match.group(1))
    return libraries


class Layer:
    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _info(self, name, kind, mode):
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        info.uname = info.gname = "root"
        return info

    def directory(self, name, mode=0o755):
        name = name.rstrip("/")
        if not name or name in self.seen:
            return
        self.directory(os.path.dirname(name))
        self.seen.add(name)
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        if name in self.seen:
            return
        self.directory(os.path.dirname(name))
        self.seen.add(name)
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def copy(self, source, name):
        """Copies a host file (following symlinks) to `name`; executables stay executable."""
        with open(source, "rb") as f:
            data = f.read()
        self.file(name, data, 0o755 if os.access(source, os.X_OK) else 0o644)

    def symlink(self, name, target):
        if name in self.seen:
            return
        self.directory(os.path.dirname(name))
        self.seen.add(name)
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self):
        self.tar.close()
        return self.buffer.getvalue()


def blob(blobs, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="full image reference, e.g. ghcr.io/mcp-authz/mcp-authz:test")
    parser.add_argument("--output", required=True, help="the OCI layout tarball to write")
    parser.add_argument("--file", action="append", default=[], metavar="HOST:IMAGE",
                        help="a file to copy; ELF executables bring their shared libraries")
    parser.add_argument("--tree", action="append", default=[], metavar="HOST_DIR:IMAGE_DIR",
                        help="a directory copied whole (symlinks inside it are kept as symlinks)")
    parser.add_argument("--entrypoint", required=True, action="append", help="entrypoint word (repeat for more)")
    parser.add_argument("--cmd", action="append", default=[], help="default argument (repeat for more)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--user", default="65532:65532")
    parser.add_argument("--workdir", default="/")
    args = parser.parse_args()

    layer = Layer()
    for directory, mode in [("/tmp", 0o1777), ("/home/nonroot", 0o700), ("/etc", 0o755)]:
        layer.directory(directory, mode)
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    for bundle in CA_BUNDLES:
        if os.path.exists(bundle):
            layer.copy(bundle, bundle)
    libraries = []
    for spec in args.file:
        source, _, target = spec.partition(":")
        if not target:
            sys.exit(f"oci-image: --file wants HOST:IMAGE, got {spec!r}")
        layer.copy(source, target)
        libraries += shared_libraries(source)
    for spec in args.tree:
        source, _, target = spec.partition(":")
        for root, directories, files in os.walk(source):
            relative = os.path.relpath(root, source)
            into = os.path.normpath(os.path.join(target, relative))
            layer.directory(into)
            for name in sorted(directories + files):
                path = os.path.join(root, name)
                if os.path.islink(path):
                    layer.symlink(os.path.join(into, name), os.readlink(path))
                elif os.path.isfile(path):
                    layer.copy(path, os.path.join(into, name))
                    if os.access(path, os.X_OK):
                        libraries += shared_libraries(path)
            directories.sort()
    for library in sorted(set(libraries)):
        # The path ldd printed is the one the loader searches (e.g. /lib/x86_64-linux-gnu/libc.so.6); the
        # interpreter must sit at the path written in the binary (/lib64/ld-linux-x86-64.so.2).
        layer.copy(os.path.realpath(library), library)
    tar = layer.close()
    compressed = gzip.compress(tar, compresslevel=1, mtime=0)

    blobs = {}
    layer_descriptor = blob(blobs, compressed, "application/vnd.oci.image.layer.v1.tar+gzip")
    image_config = {
        "User": args.user,
        "Entrypoint": args.entrypoint,
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", *args.env],
        "WorkingDir": args.workdir,
    }
    if args.cmd:
        image_config["Cmd"] = args.cmd
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "tests/node/oci-image.py"}],
    }
    config_descriptor = blob(blobs, json.dumps(config, sort_keys=True).encode(),
                             "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor, "layers": [layer_descriptor]}
    manifest_descriptor = blob(blobs, json.dumps(manifest, sort_keys=True).encode(),
                               "application/vnd.oci.image.manifest.v1+json")
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    manifest_descriptor["annotations"] = {
        "io.containerd.image.name": args.name,
        "org.opencontainers.image.ref.name": tag,
    }
    manifest_descriptor["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_descriptor]}

    outer = tarfile.open(args.output, mode="w", format=tarfile.PAX_FORMAT)

    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        outer.addfile(info, io.BytesIO(data))

    add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    add("index.json", json.dumps(index, sort_keys=True).encode())
    for digest, data in sorted(blobs.items()):
        add("blobs/sha256/" + digest.split(":", 1)[1], data)
    outer.close()
    print(f"{args.name} {manifest_descriptor['digest']} ({len(compressed)} bytes compressed)", file=sys.stderr)


if __name__ == "__main__":
    main()
