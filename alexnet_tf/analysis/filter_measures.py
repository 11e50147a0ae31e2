"""How Gabor-like convolution filters are: least-squares 2-D Gabor fits and their R^2.

The paper (section 6.1, Figure 3) shows that conv1 learns "a variety of frequency- and orientation-selective
kernels". This module turns that into a number: the fraction of filters that a 2-D Gabor function fits with
R^2 >= 0.5, which rises from near 0 for random initial filters as training proceeds.

The Gabor model, on pixel coordinates (x to the right, y down, origin at the filter's centre, in pixels):

    u =  (x - x0) cos(theta) + (y - y0) sin(theta)        (along the carrier's wave vector)
    v = -(x - x0) sin(theta) + (y - y0) cos(theta)
    g(x, y) = amplitude * exp(-u^2 / (2 sigma_u^2) - v^2 / (2 sigma_v^2)) * cos(2 pi f u + phase) + offset

with f in cycles per pixel. A Gaussian blob is the f = 0 member of the family.

Colour filters [kh, kw, 3] are fitted by a colour-separable Gabor, `mean colour + g(x, y) * c` with c the
filter's first principal colour direction: the pixels' colours are centred per channel, projected onto the
first principal axis, and that single-channel map is fitted. R^2 is then computed over all kh * kw * 3
values, so colour variation off the principal axis counts as unexplained: a filter is Gabor-like only if one
Gabor pattern in one colour direction explains it.

Two further measures of section 6.1's description, without model fits:

- `orientation_selectivity`: how concentrated a filter's spatial power spectrum is on one orientation
  (1: a grating or an edge; 0: an isotropic blob or white noise), and `oriented_fraction`, the share of a
  kernel's filters with selectivity >= 0.5.
- `colour_specificity`: the share of a filter's variance off the grey axis (0: a grey-level filter;
  1: a purely colour-opponent one), and `tower_colour_specificity`, its mean over each tower's filters. The
  paper: "the kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are largely
  color-specific".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.optimize

from alexnet_tf.errors import ConfigError

# The criterion for "Gabor-like" (not from the paper): a fit explaining at least half the variance.
GABOR_R2_THRESHOLD = 0.5

# Parameter vector layout; sigmas are stored as logarithms so the problem is unbounded (for MINPACK's LM).
_THETA, _FREQ, _PHASE, _LOG_SU, _LOG_SV, _X0, _Y0, _AMPLITUDE, _OFFSET = range(9)
_NUM_PARAMS = 9
# Envelope widths are clipped to [0.05, 1000] pixels: beyond, the model is flat in them anyway (a single
# pixel, or no envelope), and exp() would overflow into NaN derivatives.
_LOG_SIGMA_RANGE = (np.log(0.05), np.log(1000.0))
_FFT_SIZE = 32  # Least zero-padded FFT size for the starting frequency: 1/32 cycle/pixel resolution.
_MAX_FUNCTION_EVALS = 40  # Per start: within 0.003 of converged R^2 on trained filters; noise wanders on.
# The threshold for an "oriented" filter (not from the paper).
ORIENTATION_THRESHOLD = 0.5
_GREY_AXIS = np.full(3, 1.0 / np.sqrt(3.0))


def gabor_fit_r2(filter_: np.ndarray) -> float:
    """R^2 of the best least-squares 2-D Gabor fit to one filter.

    Args:
      filter_: [kh, kw] (one channel) or [kh, kw, channels] (fitted by its first principal colour direction,
        see the module docstring); any scale.

    Returns:
      1 - SSE / SST over all the filter's values, in [0, 1] (0 for a constant filter).
    """
    values = np.asarray(filter_, np.float64)
    if values.ndim == 2:
        values = values[..., np.newaxis]
    if values.ndim != 3:
        raise ConfigError(f"expected a [kh, kw] or [kh, kw, channels] filter, got shape {values.shape}")
    centred = values - values.mean(axis=(0, 1))
    total = float(np.sum(centred**2))
    if total <= np.finfo(np.float64).eps * float(np.sum(values**2)):  # Constant up to rounding.
        return 0.0
    profile = _principal_colour_profile(centred)
    # Scaling to unit RMS makes the solver's tolerances independent of the weights' scale.
    scale = np.sqrt(np.mean(profile**2))
    profile_sse = _fit_sse(profile / scale) * scale**2
    off_axis = total - float(np.sum(profile**2))
    return max(0.0, 1.0 - (profile_sse + off_axis) / total)


def gabor_score(kernel: np.ndarray, threshold: float = GABOR_R2_THRESHOLD) -> float:
    """Fraction of the filters of a conv kernel [kh, kw, in_channels, filters] with Gabor R^2 >= threshold."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ConfigError(f"expected a kernel [kh, kw, in_channels, filters], got shape {kernel.shape}")
    r2 = [gabor_fit_r2(kernel[..., i]) for i in range(kernel.shape[-1])]
    return float(np.mean(np.asarray(r2) >= threshold))


def orientation_selectivity(filter_: np.ndarray) -> float:
    """How much of one filter's spatial power lies along a single orientation, in [0, 1].

    Definition: remove each colour channel's mean over the filter; take the 2-D discrete Fourier transform
    of each channel zero-padded to N x N with N = max(32, kh, kw) (`_FFT_SIZE`), and the power spectrum
    P(f) = sum over channels of |F_c(f)|^2 on the N x N frequencies f = (fx, fy) (numpy.fft.fftfreq, in
    cycles per pixel, fy downwards), excluding the DC term f = 0. With theta(f) = atan2(fy, fx) the angle
    of each frequency,

        selectivity = | sum_f P(f) exp(2 i theta(f)) | / sum_f P(f).

    The doubled angle makes f and -f (whose power is equal for a real filter) count as one orientation.
    A filter whose power lies on one line through the origin of the frequency plane (a grating, an edge,
    a Gabor function with a long envelope) scores near 1; an isotropic one (a round blob, a ring, white
    noise in expectation) near 0; a Gabor with a short envelope somewhere in between, since its spectrum
    spreads over neighbouring orientations. Zero padding only interpolates the spectrum; N = 32 samples
    an 11 x 11 filter's spectrum finely enough that the number is within about 0.01 of its N -> infinity
    limit. The value depends neither on the filter's scale nor on its mean colour.

    Args:
      filter_: [kh, kw] (one channel) or [kh, kw, channels].

    Returns:
      The selectivity, in [0, 1]; 0 for a filter that is constant in every channel.
    """
    values = _as_filter(filter_)
    height, width = values.shape[:2]
    centred = values - values.mean(axis=(0, 1))
    size = max(_FFT_SIZE, height, width)
    power = np.sum(np.abs(np.fft.fft2(centred, s=(size, size), axes=(0, 1))) ** 2, axis=-1)
    power[0, 0] = 0.0  # DC: zero up to rounding after centring; excluded by definition.
    total = float(np.sum(power))
    if total <= np.finfo(np.float64).eps * float(np.sum(values**2)) * size * size:
        return 0.0
    fy = np.fft.fftfreq(size)[:, np.newaxis]
    fx = np.fft.fftfreq(size)[np.newaxis, :]
    doubled = np.exp(2j * np.arctan2(fy, fx))
    return float(np.abs(np.sum(power * doubled)) / total)


def oriented_fraction(kernel: np.ndarray, threshold: float = ORIENTATION_THRESHOLD) -> float:
    """Fraction of the filters of a kernel [kh, kw, in_channels, filters] with orientation selectivity
    >= threshold (see `orientation_selectivity`)."""
    kernel = _as_kernel(kernel)
    selectivity = [orientation_selectivity(kernel[..., i]) for i in range(kernel.shape[-1])]
    return float(np.mean(np.asarray(selectivity) >= threshold))


def colour_specificity(filter_: np.ndarray) -> float:
    """Share of one RGB filter's variance that lies off the grey axis, in [0, 1].

    Definition: with W the filter [kh, kw, 3] minus each channel's mean over the filter (so a uniform tint
    does not count, as in the Gabor fit of the module docstring) and g = (1, 1, 1) / sqrt(3) the grey axis
    of colour space,

        specificity = 1 - sum_xy (W(x, y) . g)^2 / sum_xy |W(x, y)|^2.

    0 for a grey-level filter (equal weights in R, G and B at every pixel, up to a constant per channel);
    1 for a filter whose colour varies only along axes orthogonal to grey, i.e. whose channels sum to a
    constant (colour-opponent red-green or blue-yellow, with no luminance component); 2/3 in expectation
    for independent random weights (the grey axis is one of three equally likely dimensions).

    Args:
      filter_: [kh, kw, 3].

    Returns:
      The specificity; 0 for a filter that is constant in every channel.
    """
    values = _as_filter(filter_)
    if values.shape[-1] != 3:
        raise ConfigError(f"expected an RGB filter [kh, kw, 3], got shape {values.shape}")
    centred = values - values.mean(axis=(0, 1))
    total = float(np.sum(centred**2))
    if total <= np.finfo(np.float64).eps * float(np.sum(values**2)):
        return 0.0
    grey = float(np.sum((centred @ _GREY_AXIS) ** 2))
    return float(min(1.0, max(0.0, 1.0 - grey / total)))


def tower_colour_specificity(kernel: np.ndarray, towers: int = 2) -> dict[str, float]:
    """Mean `colour_specificity` of each tower's filters in a conv1 kernel [kh, kw, 3, filters].

    The kernel's filters are split in `towers` equal consecutive parts, named "a", "b", ... (the order of
    `alexnet_tf.model.conv1_kernel`: tower a's filters first). The paper (section 6.1, Figure 3) reports a
    specialization between its two GPUs, one in every run: "the kernels on GPU 1 are largely
    color-agnostic, while the kernels on GPU 2 are largely color-specific" -- one tower low here, the
    other high, in either order ("modulo a renumbering of the GPUs").
    """
    kernel = _as_kernel(kernel)
    filters = kernel.shape[-1]
    if towers < 1 or filters % towers:
        raise ConfigError(f"cannot split {filters} filters into {towers} towers")
    per_tower = filters // towers
    names = "abcdefghijklmnopqrstuvwxyz"
    return {
        names[t]: float(np.mean([colour_specificity(kernel[..., i])
                                 for i in range(t * per_tower, (t + 1) * per_tower)]))
        for t in range(towers)
    }


def gabor(params: np.ndarray, height: int, width: int) -> np.ndarray:
    """The Gabor function of the module docstring sampled on a [height, width] grid.

    `params` = (theta [rad], f [cycles/px], phase [rad], log sigma_u, log sigma_v [log px], x0, y0 [px from
    the centre], amplitude, offset).
    """
    values, _ = _model_and_jacobian(np.asarray(params, np.float64), *_grid(height, width), jacobian=False)
    return values.reshape(height, width)


def _as_filter(filter_: np.ndarray) -> np.ndarray:
    values = np.asarray(filter_, np.float64)
    if values.ndim == 2:
        values = values[..., np.newaxis]
    if values.ndim != 3:
        raise ConfigError(f"expected a [kh, kw] or [kh, kw, channels] filter, got shape {values.shape}")
    return values


def _as_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ConfigError(f"expected a kernel [kh, kw, in_channels, filters], got shape {kernel.shape}")
    return kernel


def _principal_colour_profile(centred: np.ndarray) -> np.ndarray:
    """Projection [kh, kw] of the per-channel-centred filter onto its first principal colour direction."""
    pixels = centred.reshape(-1, centred.shape[-1])
    _, _, directions = np.linalg.svd(pixels, full_matrices=False)
    return (pixels @ directions[0]).reshape(centred.shape[:2])


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[:height, :width].astype(np.float64)
    return (x - (width - 1) / 2).ravel(), (y - (height - 1) / 2).ravel()


def _fit_sse(profile: np.ndarray) -> float:
    """Lowest sum of squared residuals of a Gabor fit over a few deterministic starting points."""
    x, y = _grid(*profile.shape)
    target = profile.ravel()

    def residuals(params):
        return _model_and_jacobian(params, x, y, jacobian=False)[0] - target

    def jacobian(params):
        return _model_and_jacobian(params, x, y, jacobian=True)[1]

    best = float(np.sum((target - target.mean()) ** 2))  # The constant model: R^2 = 0.
    for start in _starting_points(profile):
        result = scipy.optimize.least_squares(
            residuals, start, jac=jacobian, method="lm", max_nfev=_MAX_FUNCTION_EVALS
        )
        best = min(best, 2.0 * float(result.cost))  # scipy's cost is SSE / 2.
    return best


def _starting_points(profile: np.ndarray) -> list[np.ndarray]:
    """Starts at the strongest zero-padded FFT frequency (cosine and sine phase), and a zero-frequency blob.

    The envelope starts at the profile's energy centroid with a width of a quarter of the filter.
    """
    height, width = profile.shape
    fft_size = max(_FFT_SIZE, height, width)
    spectrum = np.abs(np.fft.rfft2(profile, s=(fft_size, fft_size)))
    spectrum[0, 0] = 0.0
    row, col = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    fy = np.fft.fftfreq(fft_size)[row]
    fx = np.fft.rfftfreq(fft_size)[col]
    x, y = _grid(height, width)
    energy = profile.ravel() ** 2
    x0, y0 = np.sum(x * energy) / np.sum(energy), np.sum(y * energy) / np.sum(energy)
    log_sigma = np.log(max(height, width) / 4.0)
    peak = np.max(np.abs(profile))
    theta = np.arctan2(fy, fx)
    frequency = np.hypot(fx, fy)
    sign_at_centre = np.sign(profile[height // 2, width // 2]) or 1.0
    return [
        np.array([theta, frequency, 0.0, log_sigma, log_sigma, x0, y0, peak, 0.0]),
        np.array([theta, frequency, -np.pi / 2, log_sigma, log_sigma, x0, y0, peak, 0.0]),
        np.array([0.0, 0.0, 0.0, log_sigma, log_sigma, x0, y0, sign_at_centre * peak, 0.0]),
    ]


def _model_and_jacobian(
    params: np.ndarray, x: np.ndarray, y: np.ndarray, jacobian: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gabor values [n] at points (x, y) and, if asked, their derivatives [n, 9] by the parameters."""
    theta, freq, phase, log_su, log_sv, x0, y0, amplitude, offset = params
    su_free, sv_free = (_LOG_SIGMA_RANGE[0] < s < _LOG_SIGMA_RANGE[1] for s in (log_su, log_sv))
    log_su, log_sv = np.clip([log_su, log_sv], *_LOG_SIGMA_RANGE)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    dx, dy = x - x0, y - y0
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    inv_su2, inv_sv2 = np.exp(-2.0 * log_su), np.exp(-2.0 * log_sv)
    envelope = np.exp(-0.5 * (u * u * inv_su2 + v * v * inv_sv2))
    carrier_angle = 2.0 * np.pi * freq * u + phase
    carrier = np.cos(carrier_angle)
    values = amplitude * envelope * carrier + offset
    if not jacobian:
        return values, None
    a_env = amplitude * envelope
    a_env_sin = a_env * np.sin(carrier_angle)
    d_u = a_env * (-u * inv_su2 * carrier) - a_env_sin * 2.0 * np.pi * freq
    d_v = a_env * (-v * inv_sv2 * carrier)
    columns = np.empty((x.size, _NUM_PARAMS))
    columns[:, _THETA] = d_u * v - d_v * u
    columns[:, _FREQ] = -a_env_sin * 2.0 * np.pi * u
    columns[:, _PHASE] = -a_env_sin
    columns[:, _LOG_SU] = a_env * carrier * u * u * inv_su2 if su_free else 0.0
    columns[:, _LOG_SV] = a_env * carrier * v * v * inv_sv2 if sv_free else 0.0
    columns[:, _X0] = -d_u * cos_t + d_v * sin_t
    columns[:, _Y0] = -d_u * sin_t - d_v * cos_t
    columns[:, _AMPLITUDE] = envelope * carrier
    columns[:, _OFFSET] = 1.0
    return values, columns


def conv1_measures(kernel: np.ndarray, towers: int) -> dict[str, Any]:
    """The conv1 numbers of results.json and TensorBoard, for a kernel [11, 11, 3, n] of `towers` towers:

    - `conv1_gabor_fraction`: filters a 2-D Gabor function fits with R^2 >= 0.5 (`gabor_score`);
    - `conv1_oriented_fraction`: filters with an orientation selectivity >= 0.5 (`oriented_fraction`): the Gabor
      fit alone is fooled by smooth noise, orientation is not;
    - `conv1_colour_specificity`: per tower ("a", "b"; "all" for one stream), the mean share of a filter's
      variance off the grey axis (`tower_colour_specificity`); the paper observed one tower "largely
      color-agnostic", the other "largely color-specific".
    """
    kernel = np.asarray(kernel, np.float64)
    colour = tower_colour_specificity(kernel, towers=towers) if towers == 2 else \
        {"all": float(np.mean([colour_specificity(kernel[..., i]) for i in range(kernel.shape[-1])]))}
    return {
        "conv1_gabor_fraction": float(gabor_score(kernel)),
        "conv1_oriented_fraction": float(oriented_fraction(kernel)),
        "conv1_colour_specificity": {k: float(v) for k, v in colour.items()},
    }
