"""Build the project's container images here, without a registry, and load them into a node's containerd.

    python3 images/build.py build [NAME ...]   # build what changed (all by default); print the archives
    python3 images/build.py load --address SOCK --state DIR [NAME ...]   # import into containerd (k8s.io)
    python3 images/build.py key NAME           # an image's input key
    python3 images/build.py list               # name, reference, input key, archive, cached or not

The chain: a Debian bookworm root filesystem made with ``debootstrap --variant=minbase`` from Debian's mirror
(imported with ``podman import``), a Python base on it (``python.Dockerfile``: Debian's python3 3.11), then
the operator, worker, triton and redis images (``<name>.Dockerfile``, multi-stage, non-root). The same
Dockerfiles build on public bases for users with Docker (``--build-arg BASE_IMAGE=python:3.11-slim``).

Caching: every image has an input key, a hash of its Dockerfile, the files it copies (tracked or new files
under its input paths, not ignored ones), the build arguments and its base's key. The result is a
docker-archive under ``~/.cache/agentscale/images/<name>-<key>.tar`` (``AGENTSCALE_CACHE``): when that file
exists nothing is built, not even podman is started, so a warm machine pays nothing for unchanged images.
``load`` records what it imported in ``--state`` (the node's folder) and skips an archive already there.

Podman on this kind of machine (../shared/FACTS.md, "Real pods"): runc with the cgroupfs manager, rlimits no
higher than the hard limits, ``--network host`` for the build's apt and pip. pip's CA bundle (``PIP_CERT``
or Debian's) is handed to the build stage as the secret ``pipcert``; no shipped layer contains it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "images"
CACHE = Path(os.environ.get("AGENTSCALE_CACHE", Path.home() / ".cache" / "agentscale")) / "images"
LOCKS = CACHE.parent / "locks"
VERSION = "0.1.0"  # pyproject.toml's, the chart's appVersion and the renderer's default worker tag
BUILD_FORMAT = "3"  # bump to rebuild every image when this script's way of building changes

SUITE = "bookworm"
MIRROR = os.environ.get("AGENTSCALE_DEBIAN_MIRROR", "http://deb.debian.org/debian")

PODMAN = [
    "podman",
    "--runtime",
    "/usr/sbin/runc",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "none",
]
PODMAN_BUILD_FLAGS = [
    "--network",
    "host",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--layers",
    "--force-rm",
]


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    """The reference pods use (docker.io/ is what an unqualified name means to the kubelet)."""
    dockerfile: str | None = None
    inputs: tuple[str, ...] = ()
    """Paths (from the repository root) the Dockerfile copies."""
    base: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)


IMAGES: dict[str, Image] = {
    img.name: img
    for img in (
        Image("debian", f"localhost/agentscale/debian:{SUITE}"),
        Image("python", "localhost/agentscale/python:3.11", "python.Dockerfile", base="debian"),
        Image(
            "operator",
            f"docker.io/agentscale/operator:{VERSION}",
            "operator.Dockerfile",
            ("pyproject.toml", "operator/agentscale", "workloads/agentscale_harness"),
            base="python",
        ),
        Image(
            "worker",
            f"docker.io/agentscale/worker:{VERSION}",
            "worker.Dockerfile",
            ("workloads/pyproject.toml", "workloads/agentscale_worker"),
            base="python",
        ),
        Image(
            "triton",
            f"docker.io/agentscale/triton:{VERSION}",
            "triton.Dockerfile",
            (
                "workloads/pyproject.toml",
                "workloads/agentscale_worker",
                "workloads/models",
                "images/tritonserver.sh",
            ),
            base="python",
            build_args={"PYTRITON_VERSION": "0.7.0", "NUMPY_SPEC": "numpy>=1.26,<2"},
        ),
        Image("redis", f"docker.io/agentscale/redis:{VERSION}", "redis.Dockerfile", base="debian"),
        Image(
            "prometheus",
            f"docker.io/agentscale/prometheus:{VERSION}",
            "prometheus.Dockerfile",
            base="debian",
            # module v0.309.1 is Prometheus 3.9.1 (Debian's 2.42 has no Kubernetes service discovery)
            build_args={"PROMETHEUS_MODULE_VERSION": "v0.309.1", "GO_TOOLCHAIN": "go1.24.9"},
        ),
    )
}
SHIPPED = ("operator", "worker", "triton", "redis", "prometheus")
"""The images pods run (the other two are build bases only; prometheus is the e2e suite's closed loop's)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] images: {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(cmd), check=True, **kw)  # type: ignore[call-overload,no-any-return]


# --- keys -----------------------------------------------------------------------------------------------


def input_files(paths: Iterable[str]) -> list[str]:
    """The files under ``paths`` that git tracks or would track (new, not ignored), sorted."""
    paths = list(paths)
    if not paths:
        return []  # (git ls-files with no paths lists the whole repository)
    out = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *paths,
        ],
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = {f for f in out.split("\0") if f and (ROOT / f).is_file()}
    return sorted(f for f in files if "__pycache__" not in f and not f.endswith(".pyc"))


def key_of(name: str, _memo: dict[str, str] = {}) -> str:  # noqa: B006 - a per-process memo
    if name in _memo:
        return _memo[name]
    img = IMAGES[name]
    h = hashlib.sha256()
    h.update(f"format {BUILD_FORMAT}\nname {name}\nref {img.ref}\n".encode())
    if img.dockerfile is None:  # the debootstrap root filesystem
        h.update(f"debootstrap minbase {SUITE} {MIRROR}\n".encode())
    else:
        h.update((HERE / img.dockerfile).read_bytes())
        for k, v in sorted(img.build_args.items()):
            h.update(f"arg {k}={v}\n".encode())
        if img.base:
            h.update(f"base {key_of(img.base)}\n".encode())
        for f in input_files(img.inputs):
            h.update(f"file {f}\n".encode())
            h.update(hashlib.sha256((ROOT / f).read_bytes()).digest())
    _memo[name] = h.hexdigest()[:16]
    return _memo[name]


def archive(name: str) -> Path:
    return CACHE / f"{name}-{key_of(name)}.tar"


def keyed_ref(name: str) -> str:
    """The base images are referenced by key, so a stale base in podman's storage is never used."""
    return f"{IMAGES[name].ref}-{key_of(name)}"


# --- build ----------------------------------------------------------------------------------------------


def pip_cert() -> str | None:
    for candidate in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def podman_has(ref: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", ref], check=False).returncode == 0


def ensure_in_podman(name: str) -> None:
    """A base image in podman's storage under its keyed reference (from its archive when podman lost it)."""
    ref = keyed_ref(name)
    if podman_has(ref):
        return
    build(name)
    if not podman_has(ref):
        run([*PODMAN, "load", "-q", "-i", str(archive(name))], stdout=subprocess.DEVNULL)
        run([*PODMAN, "tag", IMAGES[name].ref, ref])


def build_debian(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="agentscale-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        t0 = time.monotonic()
        run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR],
            stdout=subprocess.DEVNULL,
        )
        # What a container base does without: apt lists and caches, logs, machine identity.
        for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
            for p in (rootfs / junk).glob("*"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        (rootfs / "etc/machine-id").write_text("")
        log(f"debootstrap {SUITE}: {time.monotonic() - t0:.0f}s")
        ref = keyed_ref("debian")
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        run([*PODMAN, "import", "-q", "-", ref], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root filesystem failed")
    run([*PODMAN, "tag", ref, IMAGES["debian"].ref])
    save(IMAGES["debian"].ref, dest)


def build_dockerfile(img: Image, dest: Path) -> None:
    assert img.dockerfile and img.base
    ensure_in_podman(img.base)
    with tempfile.TemporaryDirectory(prefix=f"agentscale-ctx-{img.name}-") as tmp:
        ctx = Path(tmp)
        for f in input_files(img.inputs):  # the build context is exactly the keyed inputs
            (ctx / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ctx / f)
        cmd = [*PODMAN, "build", *PODMAN_BUILD_FLAGS, "-f", str(HERE / img.dockerfile)]
        cmd += ["--build-arg", f"BASE_IMAGE={keyed_ref(img.base)}"]
        for k, v in sorted(img.build_args.items()):
            cmd += ["--build-arg", f"{k}={v}"]
        cert = pip_cert()
        if cert:
            cmd += ["--secret", f"id=pipcert,src={cert}"]
        cmd += ["--label", f"io.agentscale.input-key={key_of(img.name)}", "-t", keyed_ref(img.name), str(ctx)]
        t0 = time.monotonic()
        logfile = CACHE / f"{img.name}-{key_of(img.name)}.log"
        with logfile.open("wb") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = logfile.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(
                f"podman build of {img.name} failed ({rc}); log {logfile}:\n" + "\n".join(tail)
            )
        log(f"built {img.ref} in {time.monotonic() - t0:.0f}s (log {logfile})")
    run([*PODMAN, "tag", keyed_ref(img.name), img.ref])
    save(img.ref, dest)


def save(name: str, dest: Path) -> None:
    """A docker-archive naming the image by the reference pods use; written whole or not at all."""
    tmp = dest.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(
        [*PODMAN, "save", "-q", "--format", "docker-archive", "-o", str(tmp), name], stdout=subprocess.DEVNULL
    )
    tmp.rename(dest)


def build(name: str) -> Path:
    dest = archive(name)
    if dest.is_file():
        return dest
    img = IMAGES[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    if img.dockerfile is None:
        build_debian(dest)
    else:
        build_dockerfile(img, dest)
    forget_older(name)
    log(f"{name}: {dest} ({dest.stat().st_size / 2**20:.0f} MiB)")
    return dest


def forget_older(name: str) -> None:
    """Only the newest key of an image is kept: older archives, logs and keyed tags go. Untagged build
    stages (which hold the dependency layers the next build reuses) go after a day."""
    dest = archive(name)
    for old in CACHE.glob(f"{name}-*.tar"):
        if old != dest:
            old.unlink(missing_ok=True)
            old.with_suffix(".log").unlink(missing_ok=True)
    listed = subprocess.run(
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    stale = [ref for ref in listed if ref.startswith(IMAGES[name].ref + "-") and ref != keyed_ref(name)]
    if stale:
        subprocess.run([*PODMAN, "rmi", "-f", *stale], capture_output=True, check=False)
    subprocess.run(
        [*PODMAN, "image", "prune", "-f", "--filter", "until=24h"], capture_output=True, check=False
    )


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One builder per machine at a time (two clusters starting at once build once)."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with (LOCKS / "images.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cmd_build(names: Sequence[str]) -> int:
    with machine_lock():
        for name in names or SHIPPED:
            print(build(name))
    return 0


# --- load into a node's containerd ----------------------------------------------------------------------


def cmd_load(names: Sequence[str], address: str, state: Path) -> int:
    with machine_lock():
        _load(names, address, state)
    return 0


def _load(names: Sequence[str], address: str, state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    record = state / "images.json"
    loaded: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
    for name in names or SHIPPED:
        tar = build(name)
        if loaded.get(name) == key_of(name):
            continue
        t0 = time.monotonic()
        run(
            ["ctr", "--address", address, "-n", "k8s.io", "images", "import", "--no-unpack", str(tar)],
            stdout=subprocess.DEVNULL,
        )
        loaded[name] = key_of(name)
        record.write_text(json.dumps(loaded, indent=1, sort_keys=True))
        log(f"imported {IMAGES[name].ref} into {address} in {time.monotonic() - t0:.1f}s")


def cmd_list() -> int:
    for name, img in IMAGES.items():
        tar = archive(name)
        print(f"{name:9} {img.ref:42} {key_of(name)} {'cached' if tar.is_file() else 'missing'} {tar}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="images/build.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("names", nargs="*", metavar="NAME", help=", ".join(IMAGES))
    ld = sub.add_parser("load")
    ld.add_argument("names", nargs="*", metavar="NAME", help=", ".join(SHIPPED))
    ld.add_argument("--address", required=True, help="containerd's socket")
    ld.add_argument("--state", required=True, type=Path, help="where to record what was imported")
    sub.add_parser("list")
    k = sub.add_parser("key", help="print an image's input key (what a changed image changes)")
    k.add_argument("names", nargs=1, metavar="NAME")
    args = p.parse_args(argv)
    unknown = [n for n in getattr(args, "names", []) if n not in IMAGES]
    if unknown:
        p.error(f"unknown image {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    if args.cmd == "build":
        return cmd_build(list(args.names))
    if args.cmd == "load":
        return cmd_load(list(args.names), str(args.address), Path(args.state))
    if args.cmd == "key":
        print(key_of(args.names[0]))
        return 0
    return cmd_list()


if __name__ == "__main__":
    sys.exit(main())
