"""llama.cpp's reference K-quant quantizers (Q2_K..Q6_K, no importance matrix), bit-exact.

These reproduce ``quantize_row_q{2,3,4,5,6}_K_ref`` of ggml-quants.c, which is what
``llama_model_quantize`` runs when it has no imatrix. Bit-exactness needs the *same*
float32 operations in the *same* order, so:

* every value is a numpy float32 and every constant is an explicit ``np.float32`` (a
  Python float would promote to float64 under numpy < 2 and break exactness);
* C expressions are evaluated left to right exactly as written, e.g. ``w*l*x`` is
  ``(w*l)*x`` and ``scale*L + min - x`` is ``((scale*L) + min) - x``; ggml-base is built
  for the baseline ISA (no FMA), so nothing is fused, and numpy never fuses either;
* every accumulation (``sum += ...``) is a Python loop over the element index, adding one
  row of a ``(n, n_sub)`` array at a time: float32 addition is not associative, so
  numpy's pairwise ``sum`` would differ in the last bit and flip decisions downstream;
* ``nearest_int`` is the C bit trick itself (add 1.5*2^23, read the mantissa), i.e.
  round half to even, and integer stores wrap like C's ``uint8_t`` / ``int8_t``.

The vectorisation is across sub-blocks: arrays are laid out ``(element, sub_block)`` so
that "element i of every sub-block" is one contiguous row, and the data-dependent
branches of the C code become masks. :func:`provenance.codecs.quantize_ref.quantize_rows`
hands blocks over in chunks to keep the working set in cache (memory stays bounded by one
chunk, not by the tensor).
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.types import QK_K

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
CHUNK_WEIGHTS = 1 << 19
"""Weights per vectorised chunk: ~16k sub-blocks of 32, 64 KiB per row array (L2-sized)."""

_MAGIC = F32(12582912.0)  # 1.5 * 2^23


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: ``fval + 12582912.f`` in float32, then the low 23 bits of
    the result minus 2^22. Identical to round-half-even for |v| < 2^22, and reproduces
    the C result bit for bit outside that range too (inf, NaN, huge ratios)."""
    t = (v.astype(F32, copy=False) + _MAGIC).view(np.int32)
    return (t & 0x007FFFFF) - 0x00400000


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """``s = 0; for i: s += terms[i]`` in float32, in C's order (see module doc)."""
    acc = terms[0].copy()  # 0 + t is t exactly (up to the sign of a zero, irrelevant here)
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def first_absmax(x: np.ndarray) -> np.ndarray:
    """The signed value of the first largest |x| along axis 0 (C's strict ``>`` scan)."""
    idx = np.argmax(np.abs(x), axis=0)
    return np.take_along_axis(x, idx[None, :], axis=0)[0]


def f16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even), kept as its uint16 bits."""
    return v.astype(np.float16).view(np.uint16)


def _f16_value(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(F32)


def u16_bytes(bits: np.ndarray) -> np.ndarray:
    """(nb,) uint16 -> (nb, 2) little-endian bytes."""
    return bits.astype("<u2").view(np.uint8).reshape(-1, 2)


# ----------------------------------------------------------------------------- searches


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml ``make_qkx2_quants`` on ``x, w`` of shape ``(n, n_sub)``.

    Returns ``(scale, the_min, L)``: scale and -min per sub-block (float32), codes
    ``(n, n_sub)`` int32 in ``0..nmax``. Note that ``min`` is updated *inside* the search
    loop, and later candidates use the updated ``min`` both in ``x - min`` and in
    ``max - min``: that is C's behaviour and must be kept.
    """
    n = x.shape[0]
    fmax = F32(nmax)
    mn = x[0].copy()
    mx = x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        mn = np.where(x[i] < mn, x[i], mn)  # `if (x[i] < min) min = x[i]` (not np.minimum: signed zeros)
        mx = np.where(x[i] > mx, x[i], mx)
        sum_w += w[i]
        sum_x += w[i] * x[i]
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fmax / (mx - mn)
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        diff = scale * L.astype(F32) + mn - x
        best = seq_sum(w * (np.abs(diff) if use_mad else diff * diff))
        for step in range(nstep + 1):
            # (rmin + rdelta*is) + nmax, all float32 (is is converted to float first)
            factor = (F32(rmin) + F32(rdelta) * F32(step)) + fmax
            iscale = factor / (mx - mn)
            laux = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * lf)
            sum_xl = seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = this_scale * lf + this_min - x
            cur = seq_sum(w * (np.abs(diff) if use_mad else diff * diff))
            take = (D > 0) & (cur < best)
            if take.any():
                L = np.where(take, laux, L)
                best = np.where(take, cur, best)
                scale = np.where(take, this_scale, scale)
                mn = np.where(take, this_min, mn)
    scale = np.where(flat, F32(0), scale).astype(F32)
    L = np.where(flat, 0, L)
    return scale, (-mn).astype(F32), L


def _qx_sums(x: np.ndarray, wx: np.ndarray, w: np.ndarray, iscale: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    lf = l.astype(F32)
    sumlx = seq_sum(wx * lf)  # w*x[i]*l  ==  (w*x)*l
    suml2 = seq_sum(w * lf * lf)  # w*l*l  ==  (w*l)*l
    return l, sumlx, suml2


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` (weights ``x*x``) on
    ``x`` of shape ``(n, n_sub)``. Returns ``(scale, L)`` with ``L`` in ``0..2*nmax-1``."""
    mx = first_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    fmax = F32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / mx
        l, sumlx, suml2 = _qx_sums(x, wx, w, iscale, nmax)
        L = l + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(fmax + F32(0.1) * F32(step)) / mx
            l, sumlx, suml2 = _qx_sums(x, wx, w, iscale, nmax)
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if take.any():
                L = np.where(take, l + nmax, L)
                scale = np.where(take, sumlx / suml2, scale)
                best = np.where(take, scale * sumlx, best)
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero, 0, L)


def make_q3_quants_rmse(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """ggml ``make_q3_quants(n, nmax, x, L, do_rmse=true)`` on ``(n, n_sub)``: an initial
    rounding, then up to 5 passes of per-element coordinate descent (sequential within a
    sub-block, so the loop over elements stays a Python loop; the passes run on all
    sub-blocks, which is exact because a pass that changes nothing is a fixed point).
    Returns ``(scale, L)`` with ``L`` in ``0..2*nmax-1`` (0 for all-zero sub-blocks)."""
    n = x.shape[0]
    mx = first_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / mx
        L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        Lf = L.astype(F32)
        sumlx = seq_sum(wx * Lf)
        suml2 = seq_sum(w * Lf * Lf)
        for _ in range(5):
            changed = False
            for i in range(n):
                li = Lf[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx2 = slx + wx[i] * nf
                sl22 = sl2 + w[i] * nf * nf
                take = (slx > 0) & (new_l != L[i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                if take.any():
                    changed = True
                    L[i] = np.where(take, new_l, L[i])
                    Lf[i] = L[i]
                    sumlx = np.where(take, slx2, sumlx)
                    suml2 = np.where(take, sl22, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero, 0, L + nmax)


# ----------------------------------------------------------------------------- helpers


def _subblocks(x: np.ndarray, size: int) -> np.ndarray:
    """(nb, 256) -> (size, nb*256/size): element index first (see module doc)."""
    return np.ascontiguousarray(x.reshape(-1, size).T)


def _codes_rows(L: np.ndarray, nb: int) -> np.ndarray:
    """(size, nb*n_sub) element-major codes -> (nb, 256) in weight order."""
    return np.ascontiguousarray(L.T).reshape(nb, QK_K)


def _max_pos(v: np.ndarray) -> np.ndarray:
    """``m = 0; for j: if (v[j] > m) m = v[j]`` over axis 1."""
    return np.maximum(np.max(v, axis=1), F32(0))


def _requantize(xb: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int, offset: int) -> np.ndarray:
    """The final pass of every K-quant: codes from the *stored* (f16-rounded) scales.
    ``xb`` (nb, n_sub, size); ``d``/``dm`` (nb, n_sub) float32. Sub-blocks with
    ``d == 0`` keep the search's codes ``L`` (C's ``if (!d) continue``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        num = xb + dm[..., None] if dm is not None else xb
        q = np.clip(nearest_int(num / d[..., None]), lo, hi) + offset
    return np.where((d != 0)[..., None], q, L)


def _pack_crumbs(L: np.ndarray) -> np.ndarray:
    """2-bit codes (nb, 256) -> (nb, 64): byte ``h*32 + l`` holds weights
    ``h*128 + s*32 + l`` in bits ``2s``."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """4-bit codes (nb, 256) -> (nb, 128): byte ``c*32 + l`` = ``L[c*64+l] | L[c*64+32+l] << 4``."""
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K 12-byte scale field from 6-bit ``ls``/``lm`` (nb, 8) (C's j<4 / j>=4 split)."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    sc = np.zeros((ls.shape[0], 12), np.uint8)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return sc


def _kx_weights(xs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K search weights: ``av_x + |x|`` with ``av_x = sqrtf(sum_x2/32)``."""
    av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
    return av_x + np.abs(xs)


# ----------------------------------------------------------------------------- types


def _q_k_affine(
    x: np.ndarray, size: int, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared Q4_K / Q5_K body. Returns d16, dmin16 (nb,), ls, lm (nb, 8), codes (nb, 256)."""
    nb = x.shape[0]
    xs = _subblocks(x, size)
    scales, mins, L = make_qkx2_quants(xs, _kx_weights(xs), nmax, rmin, rdelta, nstep, False)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    max_scale = _max_pos(scales)
    max_min = _max_pos(mins)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    # uint8_t ls = nearest_int(...); ls = MIN(63, ls): wraps to a byte first
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    d16 = f16_bits(max_scale / F32(63))
    dmin16 = f16_bits(max_min / F32(63))
    d = _f16_value(d16)[:, None] * ls.astype(F32)
    dm = _f16_value(dmin16)[:, None] * lm.astype(F32)
    codes = _requantize(x.reshape(nb, 8, size), _codes_rows(L, nb).reshape(nb, 8, size), d, dm, 0, nmax, 0)
    return d16, dmin16, ls, lm, codes.reshape(nb, QK_K)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q4_K_ref`` on (nb, 256) float32 -> (nb, 144) bytes."""
    d16, dmin16, ls, lm, L = _q_k_affine(x, 32, 15, -1.0, 0.1, 20)
    return np.concatenate([u16_bytes(d16), u16_bytes(dmin16), _pack_scales_k4(ls, lm), _pack_nibbles(L)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q5_K_ref`` on (nb, 256) float32 -> (nb, 176) bytes."""
    d16, dmin16, ls, lm, L = _q_k_affine(x, 32, 31, -0.5, 0.1, 15)
    nb = x.shape[0]
    # qh byte j, bit 2c (+1): the 5th bit of weight c*64 + j (+32)
    hi = (L >> 4).reshape(nb, 8, 32).astype(np.uint8)
    qh = np.zeros((nb, 32), np.uint8)
    for b in range(8):
        qh |= hi[:, b] << b
    return np.concatenate(
        [u16_bytes(d16), u16_bytes(dmin16), _pack_scales_k4(ls, lm), qh, _pack_nibbles(L & 0xF)], axis=1
    )


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_ref`` on (nb, 256) float32 -> (nb, 84) bytes."""
    nb = x.shape[0]
    xs = _subblocks(x, 16)
    scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    max_scale = _max_pos(scales)
    max_min = _max_pos(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        q4scale = F32(15)
        ls = np.where((max_scale > 0)[:, None], nearest_int((q4scale / max_scale)[:, None] * scales), 0)
        lm = np.where((max_min > 0)[:, None], nearest_int((q4scale / max_min)[:, None] * mins), 0)
    # y.scales[j] = l (uint8 store); y.scales[j] |= l << 4 (uint8 store)
    sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
    d16 = np.where(max_scale > 0, f16_bits(max_scale / q4scale), np.uint16(0)).astype(np.uint16)
    dmin16 = np.where(max_min > 0, f16_bits(max_min / q4scale), np.uint16(0)).astype(np.uint16)
    d = _f16_value(d16)[:, None] * (sc & 0xF).astype(F32)
    dm = _f16_value(dmin16)[:, None] * (sc >> 4).astype(F32)
    codes = _requantize(x.reshape(nb, 16, 16), _codes_rows(L, nb).reshape(nb, 16, 16), d, dm, 0, 3, 0)
    return np.concatenate([sc, _pack_crumbs(codes.reshape(nb, QK_K)), u16_bytes(d16), u16_bytes(dmin16)], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_ref`` on (nb, 256) float32 -> (nb, 110) bytes."""
    nb = x.shape[0]
    xs = _subblocks(x, 16)
    scales, L = make_q3_quants_rmse(xs, 4)
    scales = scales.reshape(nb, 16)
    max_scale = first_absmax(scales.T)
    nz = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(nz, F32(-32) / max_scale, F32(0))
        l = nearest_int(iscale[:, None] * scales)
    l = ((l + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
    l = np.clip(l, -32, 31) + 32
    l = np.where(nz[:, None], l, 0)  # memset(scales, 0) when max_scale == 0
    sc = np.zeros((nb, 12), np.uint8)
    lo = (l & 0xF).astype(np.uint8)
    hi2 = (l >> 4).astype(np.uint8)
    sc[:, 0:8] = lo[:, 0:8] | (lo[:, 8:16] << 4)
    for j in range(16):
        sc[:, 8 + j % 4] |= hi2[:, j] << (2 * (j // 4))
    with np.errstate(divide="ignore"):
        d16 = np.where(nz, f16_bits(F32(1) / iscale), np.uint16(0)).astype(np.uint16)
    d = _f16_value(d16)[:, None] * (l - 32).astype(F32)
    codes = _requantize(x.reshape(nb, 16, 16), _codes_rows(L, nb).reshape(nb, 16, 16), d, None, -4, 3, 4)
    codes = codes.reshape(nb, QK_K)
    hbit = (codes > 3).astype(np.uint8).reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), np.uint8)
    for b in range(8):
        hmask |= hbit[:, b] << b
    low = np.where(codes > 3, codes - 4, codes)
    return np.concatenate([hmask, _pack_crumbs(low), sc, u16_bytes(d16)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q6_K_ref`` on (nb, 256) float32 -> (nb, 210) bytes."""
    nb = x.shape[0]
    xs = _subblocks(x, 16)
    scales, L = make_qx_quants_rmse1(xs, 32)
    scales = scales.reshape(nb, 16)
    max_scale = first_absmax(scales.T)
    live = np.abs(max_scale) >= GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(live, F32(-128) / max_scale, F32(1))
        d16 = np.where(live, f16_bits(F32(1) / iscale), np.uint16(0)).astype(np.uint16)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = ((sc + 128) & 0xFF) - 128  # int8_t store
    sc = np.where(live[:, None], sc, 0)
    d = _f16_value(d16)[:, None] * sc.astype(F32)
    codes = _requantize(x.reshape(nb, 16, 16), _codes_rows(L, nb).reshape(nb, 16, 16), d, None, -32, 31, 32)
    codes = np.where(live[:, None, None], codes, 0).reshape(nb, 2, 4, 32).astype(np.uint8)
    # per 128-weight half h: ql[h*64 + l] = q0 | q2<<4, ql[h*64 + 32 + l] = q1 | q3<<4,
    # qh[h*32 + l] = sum_s (q_s >> 4) << 2s, with q_s = L[h*128 + s*32 + l]
    lo = codes & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2).reshape(nb, 128)
    hi = codes >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), u16_bytes(d16)], axis=1)
