"""Shared by scripts/deploy-check and scripts/polyglot-check: a Python virtualenv under
.ci/.tools/venv with the pinned tools of .ci/requirements.txt and the Python example's
requirements, created on first use and refreshed when a requirement file changes. Nothing is
installed globally."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".ci" / ".tools"
VENV = TOOLS / "venv"
VENV_BIN = VENV / "bin"
VENV_PYTHON = VENV_BIN / "python"


# One venv for every script: the CI tools and the Python example's own requirements.
REQUIREMENTS = [ROOT / ".ci" / "requirements.txt", ROOT / "examples" / "python" / "requirements.txt"]


def ensure_venv() -> None:
    """Re-executes the calling script under the venv's Python, creating or updating the venv
    first. Returns only when already running inside it."""
    files = REQUIREMENTS
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / ".requirements.sha256"
    inside = Path(sys.prefix).resolve() == VENV.resolve()
    if inside and stamp.exists() and stamp.read_text() == digest:
        return
    if not inside:
        if not VENV_PYTHON.exists():
            step(f"creating {VENV.relative_to(ROOT)}")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        if not stamp.exists() or stamp.read_text() != digest:
            step("installing " + ", ".join(str(f.relative_to(ROOT)) for f in files))
            args = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            for f in files:
                args += ["-r", str(f)]
            subprocess.run(args, check=True)
            stamp.write_text(digest)
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    # Inside, but the stamp is stale (requirements edited while running): install and go on.
    args = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for f in files:
        args += ["-r", str(f)]
    subprocess.run(args, check=True)
    stamp.write_text(digest)


_T0 = time.monotonic()


def step(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def fail(msg: str) -> "None":
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)
