import importlib
import subprocess
import sys


def test_import_is_light():
    """`import leads_jax` must not pull in litellm or flax (they are imported lazily)."""
    code = (
        "import sys, leads_jax; "
        "bad = [m for m in ('litellm', 'flax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_versions():
    for name in ("leads_jax", "ecg_world"):
        assert importlib.import_module(name).__version__
