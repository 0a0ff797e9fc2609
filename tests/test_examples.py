"""The end-to-end workflows in examples/, run as a user would run them."""

import pathlib
import re
import subprocess
import sys

import pytest
from helpers import fast_sample, missing_modules

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(("script", "expected"), fast_sample([
    ("feature_extraction.py", r"^accuracy: 0\.9\d\d$"),
    ("batched_scaling.py", r"^features: \(200000, 8\), mean after scaling: \d\.\de-\d\d$"),
    ("augmented_images.py", r"^trained on 900 images, accuracy: (0\.9\d\d|1\.000)$"),
]))
def test_example_runs_and_reports(script, expected):
    missing = missing_modules((EXAMPLES / script).read_text())
    if missing:
        pytest.skip(f"{script} needs {', '.join(missing)}, not installed here")
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.match(expected, result.stdout.strip().splitlines()[-1]), result.stdout
