"""What the three kernel modules share: the interpreter switch, tuning, tiles, `tl.dot`, and the math of
docs/design.md §2 that more than one kernel computes (the bias gradient φ, the implicit step size, masked decays).

Symbols as in docs/design.md: η the step size, α the retention rate, ℓ_t = Σ_{j≤t} log α_j the cumulative
log-decay inside a chunk (`ell`), b = e^ℓ, L the causal decay mask, e the error, g = φ(e) the bias gradient.

Host side: `interpreter_on`, `tuning_configs`, `DOT_PRECISION`, `TRITON_DTYPE`, `MIN_DOT_BLOCK`, `dot_block`,
`dtype_limit`, `needs_grad`. Device side (`@triton.jit`): `block` / `load_block` / `store_block` (masked tiles),
`dot` (the `tl.dot` wrapper), `decay_mask`, `separable_bias_gradient` / `separable_bias_slope` /
`huber_delta_slope`, `implicit_rate` (also callable on torch tensors as `implicit_rate.fn`), `power`, `sign`.
"""

import os

import torch
import triton
import triton.language as tl


def interpreter_on():
    """True when Triton runs kernels under its interpreter (on the CPU): TRITON_INTERPRET=1, which must be set
    before the kernel modules are imported (Triton reads it when `@triton.jit` wraps a function)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def tuning_configs(configs):
    """The `triton.autotune` configs to try: all of them on a GPU, the first under the interpreter (which
    cannot time kernels)."""
    return configs[:1] if interpreter_on() else configs


# float32 inputs: three tf32 products per dot ("tf32x3", about float32 accuracy; "ieee" compiles several times
# slower); half inputs: operands that are already half precision lose nothing in tf32.
DOT_PRECISION = {torch.float32: "tf32x3", torch.bfloat16: "tf32", torch.float16: "tf32"}
TRITON_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
MIN_DOT_BLOCK = 16  # tl.dot needs every block dimension ≥ 16
INTERPRETED = tl.constexpr(interpreter_on())


def dot_block(n):
    """The block length that covers n rows or columns in `tl.dot`: a power of two, at least MIN_DOT_BLOCK."""
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(n))


def dtype_limit(q, allowed=tuple(DOT_PRECISION)):
    """Why the kernels cannot take q's dtype, or None."""
    if q.dtype in allowed:
        return None
    return f"q: dtype {q.dtype} is not supported by the Triton kernels; allowed: {', '.join(map(str, allowed))}"


def needs_grad(*tensors):
    """Whether a backward pass can follow, so the forward must keep what it needs. Decided before
    `Function.apply`: inside `Function.forward`, ctx.needs_input_grad reads True even under torch.no_grad()."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


# ------------------------------------------------------------------------------------------- tiles


@triton.jit
def block(ptr, row_stride, rows, rows_ok, cols, n_cols):
    """Pointers and mask of x[rows, cols] of a matrix at ptr with unit column stride: rows where rows_ok,
    columns below n_cols."""
    return ptr + rows[:, None] * row_stride + cols[None, :], rows_ok[:, None] & (cols[None, :] < n_cols)


@triton.jit
def load_block(ptr, row_stride, rows, rows_ok, cols, n_cols):
    """The tile of `block`, zero outside it, in the tensor's dtype."""
    pointers, mask = block(ptr, row_stride, rows, rows_ok, cols, n_cols)
    return tl.load(pointers, mask=mask, other=0.0)


@triton.jit
def store_block(ptr, row_stride, rows, rows_ok, cols, n_cols, x):
    """Store x into the tile of `block`, converted to the tensor's dtype."""
    pointers, mask = block(ptr, row_stride, rows, rows_ok, cols, n_cols)
    tl.store(pointers, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def dot(a, b, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b on operands rounded to DTYPE, accumulated in float32, products at PRECISION (`DOT_PRECISION`)."""
    a, b = a.to(DTYPE), b.to(DTYPE)
    if INTERPRETED:  # the interpreter multiplies bfloat16 operands as raw integers: same products in float32
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


# -------------------------------------------------------------------------------------------- math


@triton.jit
def power(x, exponent):
    """x^exponent for x ≥ 0, with 0^r = 0 (r > 0; also what the gradient of |x|^q needs at 0)."""
    return tl.where(x > 0, tl.exp(exponent * tl.log(tl.where(x > 0, x, 1.0))), 0.0)


@triton.jit
def sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def decay_mask(ell_rows, ell_cols, keep):
    """e^{ℓ_rows[i] − ℓ_cols[j]} where keep[i, j], else 0 (masked before the exp, so it cannot overflow): with
    ℓ on both sides and keep = (i ≥ j), the causal decay mask L_ij = b_i / b_j."""
    return tl.exp(tl.where(keep, ell_rows[:, None] - ell_cols[None, :], float("-inf")))


@triton.jit
def implicit_rate(eta, key_square_norm):
    """Longhorn's implicit step size η̃ = η / (1 + η‖k‖²) (docs/design.md §2 step 4). Plain arithmetic, so host
    code computes the same with torch tensors as `implicit_rate.fn(eta, key_square_norm)`."""
    return eta / (1.0 + eta * key_square_norm)


@triton.jit
def implicit_rate_slopes(eta, key_square_norm, eta_eff):
    """(∂η̃/∂η, ∂η̃/∂‖k‖²) = (1 / (1 + η‖k‖²)², −η̃²) of `implicit_rate`."""
    damping = 1.0 / (1.0 + eta * key_square_norm)
    return damping * damping, -eta_eff * eta_eff


@triton.jit
def separable_bias_gradient(e, v, delta, p, eps, BIAS: tl.constexpr):
    """g = φ(e) of docs/design.md §2 step 2 for the biases that act on each coordinate alone (δ broadcasts
    against e): dot −v, l2 e, lp e (e² + ε)^{(p−2)/2}, huber coord clamp(e, −δ, δ)."""
    if BIAS == "dot":
        g = -v
    elif BIAS == "l2":
        g = e
    elif BIAS == "lp":
        g = e * power(e * e + eps, 0.5 * (p - 2.0))
    else:
        g = tl.minimum(tl.maximum(e, -delta), delta)
    return g


@triton.jit
def separable_bias_slope(e, delta, p, eps, BIAS: tl.constexpr):
    """∂g/∂e on each coordinate of `separable_bias_gradient` (dot: 0, it does not read e):
    l2 1, lp (e² + ε)^{(p−4)/2} ((p−1) e² + ε), huber coord [|e| ≤ δ]."""
    if BIAS == "lp":
        slope = power(e * e + eps, 0.5 * (p - 4.0)) * ((p - 1.0) * e * e + eps)
    elif BIAS == "huber":
        slope = tl.where(tl.abs(e) <= delta, 1.0, 0.0)
    elif BIAS == "l2":
        slope = tl.full(e.shape, 1.0, e.dtype)
    else:
        slope = tl.zeros(e.shape, e.dtype)
    return slope


@triton.jit
def huber_delta_slope(e, delta):
    """∂g/∂δ of the huber coord bias, g = clamp(e, −δ, δ): sign(e) where |e| > δ, else 0."""
    return tl.where(e > delta, 1.0, tl.where(e < -delta, -1.0, 0.0))
