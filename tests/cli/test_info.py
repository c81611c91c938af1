"""info.py: versions of what is installed, and providers that really load (not merely listed)."""

from __future__ import annotations

import onnxruntime

from sia_local.info import collect, loadable_providers, version_of


def test_versions_and_providers() -> None:
    assert version_of("numpy") == __import__("numpy").__version__
    assert version_of("no-such-distribution-here") == "not installed"
    loads = loadable_providers()
    assert set(loads) == set(onnxruntime.get_available_providers()) and loads["CPUExecutionProvider"] is True
    facts = collect()
    assert facts["sia-local"] != "not installed" and "onnx providers" in facts
