"""The fused/reference choice of cdred_fast.ops._dispatch: resolve_impl and its warn-once fallback."""

import warnings

import pytest

from cdred_fast.config import CDREDConfig
from cdred_fast.ops import _dispatch as dispatch
from cdred_fast.ops import resolve_impl


def test_resolve_impl_reference_and_fallback(monkeypatch):
    assert resolve_impl("reference") == "reference"
    assert resolve_impl(CDREDConfig(kernels="reference").kernels, "cpu") == "reference"
    with pytest.raises(ValueError, match="kernels"):
        resolve_impl("triton")

    monkeypatch.setattr(dispatch._lib, "available", lambda: False)
    monkeypatch.setattr(dispatch, "_fallback_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_impl("fused") == "reference"
        assert resolve_impl(CDREDConfig().kernels, "cpu") == "reference"
    relevant = [w for w in caught if "not built" in str(w.message)]
    assert len(relevant) == 1  # warned once, not on every call


def test_resolve_impl_fused_when_available(monkeypatch):
    monkeypatch.setattr(dispatch._lib, "available", lambda: True)
    monkeypatch.setattr(dispatch, "_fallback_warned", set())
    monkeypatch.setattr(dispatch, "_cuda_kernels_built", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_impl("fused") == "fused"
        assert resolve_impl("fused", "cpu") == "fused"
    with pytest.warns(RuntimeWarning, match="CUDA"):
        assert resolve_impl("fused", "cuda:0") == "reference"
