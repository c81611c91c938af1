"""fit.py on hand-worked numbers: ridge against least squares, correlation and Kendall's tau."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sia_local.fit import corr, grouped_kendall, kendall, ridge


def test_kendall_by_hand() -> None:
    assert kendall(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == 1.0
    assert kendall(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == -1.0
    # pairs of (1, 2, 3) vs (1, 3, 2): (1,2)+ (1,3)+ (2,3)-  ->  (2 - 1) / 3
    assert kendall(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(1 / 3)
    assert grouped_kendall(np.array([1, 2, 3, 1, 2, 3]), np.array([1, 2, 3, 3, 2, 1]), 3) == 0.0
    assert math.isnan(kendall(np.array([1.0]), np.array([2.0])))


def test_corr_and_ridge() -> None:
    assert corr(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.5])) > 0.99
    assert math.isnan(corr(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0
    w, b = ridge(x, y, 0.0)
    np.testing.assert_allclose(np.r_[w, b], [1.0, -2.0, 0.5, 3.0], atol=1e-9)
    w_big, _ = ridge(x, y, 1e6, relative=True)
    assert np.abs(w_big).max() < 1e-3  # a huge penalty shrinks every weight towards 0
