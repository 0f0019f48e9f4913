"""Headless Chromium (Debian's package) for looking at HTML reports as a person would."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


def screenshot(html: Path, out: Path, profile: Path, size: str = "1200,3000") -> np.ndarray:
    subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    import matplotlib.image

    return matplotlib.image.imread(out)


def rendered_text(html: Path, profile: Path) -> str:
    result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.resolve().as_uri()],
                            check=True, capture_output=True, text=True, timeout=120)
    return result.stdout
