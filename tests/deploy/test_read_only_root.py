"""The server as Kubernetes runs it (readOnlyRootFilesystem, no emptyDir) and as `docker run --read-only`
does: every file system read-only, /tmp and /dev/shm included, in a mount namespace of its own (root and
unshare(1) needed, as on CI; skipped elsewhere). Uploads past the 1 MB at which Starlette would spool to a
temporary file must still be answered, and SIGTERM still end it with 0."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.deploy import dockerfile
from tests.server import ROOT, post_file, start_server, stop_server

# Every mounted file system read-only, except the kernel's own (/proc, /sys, ...); then prove /tmp is.
READ_ONLY = r"""
set -e
kernel='proc|sysfs|cgroup2?|devpts|mqueue|devtmpfs|securityfs|debugfs|tracefs|bpf|pstore'
kernel="$kernel|fusectl|configfs|hugetlbfs|autofs|binfmt_misc|nsfs"
awk -v skip="^($kernel)\$" '$3 !~ skip {print $2}' /proc/self/mounts |
    while read -r point; do mount -o remount,bind,ro "$point"; done
if touch /tmp/.skin-rw-probe 2>/dev/null; then echo "/tmp is still writable" >&2; exit 99; fi
exec "$@"
"""


def _can_unshare() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (a mount namespace)")
@pytest.mark.timeout(120)
def test_server_runs_with_every_file_system_read_only(tiny_bundle: Path) -> None:
    image_env = dockerfile.stages(ROOT / "Dockerfile.runtime")[-1].env()
    env = {k: image_env[k] for k in ("PYTHONDONTWRITEBYTECODE", "ORT_DISABLE_TELEMETRY")}
    env["PYTHONPATH"] = str(ROOT)
    server = [sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", "{port}"]
    script = READ_ONLY.replace("{", "{{").replace("}", "}}")  # start_server formats {port} into every word
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *server]
    url, proc = start_server(tiny_bundle, command=command, env=env, timeout=60)
    try:
        big = _noise_png(900)
        assert len(big) > 2 << 20  # past Starlette's 1 MB spool threshold
        assert post_file(url + "/api/predict", big, filename="big.png")["image"] == {"bytes": len(big)}
        boundary = "readonlyboundary"
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="b.png"\r\n\r\n'
        body = b"".join(part.encode() + big + b"\r\n" for _ in range(6)) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            url + "/api/predict/batch",
            data=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
    finally:
        code = stop_server(proc)
    assert code == 0
