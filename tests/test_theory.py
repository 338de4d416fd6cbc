import numpy as np

from promptmem.theory import fit_power_law, sqrt_nN_prompt_length


def test_fit_recovers_a_power_law():
    n = np.array([100, 400, 1600, 6400])
    exponent, constant = fit_power_law(n, 3 * n ** 0.5)
    assert abs(exponent - 0.5) < 1e-9 and abs(constant - 3) < 1e-9


def test_fit_skips_missing_points_and_gives_nan_without_two():
    exponent, _ = fit_power_law([1, 2, 4, 8], [2, np.nan, 8, 16])
    assert abs(exponent - 1) < 1e-9
    assert np.isnan(fit_power_law([1, 2], [3, np.nan])[0])


def test_sqrt_nN():
    assert sqrt_nN_prompt_length(1600, 8) == np.sqrt(12800)
    assert np.allclose(sqrt_nN_prompt_length([4, 16], 1, constant=2), [4, 8])


def test_sqrt_through_passes_the_point():
    from promptmem.theory import sqrt_through

    assert np.allclose(sqrt_through([32, 128, 512], 32, 3.0), [3, 6, 12])
