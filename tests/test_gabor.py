"""Tests of alexnet_tf.gabor: Gabor fits of synthetic filters and of noise."""

import sys

import numpy as np
import pytest

from alexnet_tf import gabor

SIZE = 11  # conv1's kernel size.


def _synthetic_gabor(theta, wavelength, phase, sigma_along, sigma_across, centre=(0.0, 0.0), size=SIZE):
    """A Gabor written independently of the module: carrier along theta, elliptical envelope."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    x, y = x - centre[0], y - centre[1]
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    envelope = np.exp(-(along**2) / (2 * sigma_along**2) - across**2 / (2 * sigma_across**2))
    return envelope * np.cos(2 * np.pi * along / wavelength + phase)


GABORS = [
    dict(theta=0.0, wavelength=5.0, phase=0.0, sigma_along=2.5, sigma_across=3.0),
    dict(theta=np.pi / 4, wavelength=4.0, phase=np.pi / 2, sigma_along=2.0, sigma_across=2.5),
    dict(theta=2.0, wavelength=7.0, phase=1.0, sigma_along=2.0, sigma_across=1.5, centre=(1.0, -1.5)),
    dict(theta=1.2, wavelength=3.0, phase=-0.5, sigma_along=3.0, sigma_across=1.2),
]


@pytest.mark.parametrize("params", GABORS)
def test_noisy_grey_gabor_fits_near_perfectly(params):
    rng = np.random.default_rng(0)
    pattern = 0.02 * _synthetic_gabor(**params)  # About conv1's weight scale.
    noisy = pattern + 0.1 * pattern.std() * rng.normal(size=pattern.shape)  # Explains ~99% at best.
    assert gabor.gabor_fit_r2(noisy) > 0.95


@pytest.mark.parametrize("params", GABORS)
def test_colour_gabor_along_one_colour_direction_fits_near_perfectly(params):
    rng = np.random.default_rng(1)
    colour = np.array([0.8, -0.5, 0.3])  # An opponent colour edge, as in the paper's second tower.
    pattern = _synthetic_gabor(**params)
    kernel = pattern[..., np.newaxis] * colour + np.array([0.1, 0.2, -0.1])
    kernel += 0.1 * pattern.std() * rng.normal(size=kernel.shape)
    assert gabor.gabor_fit_r2(kernel) > 0.95


def test_gaussian_blob_is_a_zero_frequency_gabor():
    blob = _synthetic_gabor(theta=0.0, wavelength=np.inf, phase=0.0, sigma_along=2.0, sigma_across=1.5)
    assert gabor.gabor_fit_r2(blob) > 0.99


@pytest.mark.parametrize("seed", range(5))
def test_gaussian_noise_fits_poorly(seed):
    rng = np.random.default_rng(seed)
    assert gabor.gabor_fit_r2(rng.normal(size=(SIZE, SIZE))) < 0.3
    assert gabor.gabor_fit_r2(rng.normal(size=(SIZE, SIZE, 3))) < 0.3


def test_colour_variation_off_the_principal_direction_is_unexplained():
    """An even Gabor in red, a weaker uncorrelated odd one in green: the fit explains only the red part."""
    red = _synthetic_gabor(theta=0.0, wavelength=5.0, phase=0.0, sigma_along=2.5, sigma_across=2.5)
    green = 0.6 * _synthetic_gabor(theta=0.0, wavelength=5.0, phase=np.pi / 2, sigma_along=2.5, sigma_across=2.5)
    kernel = np.stack([red, green, np.zeros_like(red)], axis=-1)
    red_share = np.sum((red - red.mean()) ** 2) / np.sum((kernel - kernel.mean(axis=(0, 1))) ** 2)
    assert 0.5 < red_share < 0.9
    assert gabor.gabor_fit_r2(kernel) == pytest.approx(red_share, abs=0.005)
    assert gabor.gabor_fit_r2(red) > 0.999


def test_r2_is_independent_of_the_weights_scale():
    pattern = _synthetic_gabor(**GABORS[1]) + 0.1 * np.random.default_rng(2).normal(size=(SIZE, SIZE))
    assert gabor.gabor_fit_r2(1e-3 * pattern) == pytest.approx(gabor.gabor_fit_r2(1e3 * pattern), abs=1e-6)


def test_constant_filter_scores_zero():
    assert gabor.gabor_fit_r2(np.full((SIZE, SIZE, 3), 0.7)) == 0.0


def test_model_matches_the_independent_formula():
    # gabor() takes (theta, f, phase, log sigma_u, log sigma_v, x0, y0, amplitude, offset).
    params = [2.0, 1 / 7.0, 1.0, np.log(2.0), np.log(1.5), 1.0, -1.5, 3.0, 0.5]
    expected = 3.0 * _synthetic_gabor(**GABORS[2]) + 0.5
    np.testing.assert_allclose(gabor.gabor(params, SIZE, SIZE), expected, atol=1e-12)


def test_analytic_jacobian_matches_finite_differences():
    x, y = gabor._grid(SIZE, SIZE)
    params = np.array([0.7, 0.15, 0.3, np.log(2.0), np.log(3.0), 0.5, -1.0, 1.3, 0.1])
    _, analytic = gabor._model_and_jacobian(params, x, y, jacobian=True)
    step = 1e-6
    numeric = np.stack(
        [
            (
                gabor._model_and_jacobian(params + step * unit, x, y, jacobian=False)[0]
                - gabor._model_and_jacobian(params - step * unit, x, y, jacobian=False)[0]
            )
            / (2 * step)
            for unit in np.eye(params.size)
        ],
        axis=1,
    )
    np.testing.assert_allclose(analytic, numeric, atol=1e-7)


def test_gabor_score_counts_filters_above_the_threshold():
    rng = np.random.default_rng(3)
    filters = [_synthetic_gabor(**p)[..., np.newaxis] * np.array([1.0, 0.9, 0.8]) for p in GABORS[:3]]
    filters.append(rng.normal(size=(SIZE, SIZE, 3)))
    kernel = np.stack(filters, axis=-1)
    assert kernel.shape == (SIZE, SIZE, 3, 4)
    assert gabor.gabor_score(kernel) == 0.75
    assert gabor.gabor_score(kernel, threshold=1.01) == 0.0
    assert gabor.gabor_score(kernel, threshold=0.0) == 1.0


@pytest.mark.parametrize("shape", [(SIZE,), (2, SIZE, SIZE, 3)])
def test_bad_filter_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="Expected"):
        gabor.gabor_fit_r2(np.zeros(shape))


def test_bad_kernel_shape_is_refused():
    with pytest.raises(ValueError, match="Expected"):
        gabor.gabor_score(np.zeros((SIZE, SIZE, 3)))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
