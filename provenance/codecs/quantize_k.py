"""llama.cpp's reference K-quant quantizers (Q2_K..Q6_K, no importance matrix), compiled, bit-exact.

These reproduce ``quantize_row_q{2,3,4,5,6}_K_ref`` of ggml-quants.c, which is what
``llama_model_quantize`` runs when it has no imatrix, as numba kernels over a batch of
256-weight blocks: ``fn(x (n, 256) float32, out (n, type_size) uint8, f16_table)``, one
block after another exactly as the C loops run. Bit-exactness needs the *same* float32
operations in the *same* order, so:

* every value is float32 and every constant an explicit ``np.float32`` (numba, like numpy
  < 2, promotes ``float32 op float64`` to float64, which would round differently);
* C expressions are evaluated left to right exactly as written, e.g. ``w*l*x`` is
  ``(w*l)*x`` and ``scale*L + min - x`` is ``((scale*L) + min) - x``; ggml-base is built
  for the baseline ISA (no FMA), and the kernels are compiled without fast-math, so
  nothing is fused or reassociated (:mod:`provenance.jit`);
* every accumulation (``sum += ...``) is the C loop itself, in index order;
* ``nearest_int`` is the C bit trick (:mod:`provenance.codecs.native.floats`), and
  integer stores wrap like C's ``uint8_t`` / ``int8_t``.

The scale searches (``make_qkx2_quants``, ``make_qx_quants``, ``make_q3_quants``) are
inlined helpers on one sub-block; places where the order matters beyond the obvious:
``make_qkx2_quants`` updates ``min`` inside its search loop and later candidates use the
new ``min`` in both ``x - min`` and ``max - min``; the final codes come from the *stored*
f16 scales; sub-blocks whose stored scale is 0 keep the search's codes.
"""
from __future__ import annotations

import numpy as np

from provenance.codecs.native.floats import f16_bits, nearest_int, put_u16
from provenance.jit import inline, kernel

F0 = np.float32(0.0)
F1 = np.float32(1.0)
GROUP_MAX_EPS = np.float32(1e-15)


# ----------------------------------------------------------------------------- searches


@inline
def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad, L, Laux):  # type: ignore[no-untyped-def]
    """ggml ``make_qkx2_quants`` on one sub-block: codes into ``L``; returns ``(scale, -min)``."""
    n = x.shape[0]
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F0:
        mn = F0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F0, np.float32(-mn)
    fmax = np.float32(nmax)
    iscale = np.float32(fmax / np.float32(mx - mn))
    scale = np.float32(F1 / iscale)
    best_error = F0
    for i in range(n):
        l = min(max(nearest_int(iscale * np.float32(x[i] - mn)), 0), nmax)
        L[i] = l
        diff = np.float32(np.float32(scale * np.float32(l)) + mn) - x[i]
        diff = abs(diff) if use_mad else np.float32(diff * diff)
        best_error += weights[i] * diff
    for step in range(nstep + 1):
        iscale = np.float32(np.float32(np.float32(rmin + np.float32(rdelta * np.float32(step))) + fmax) / np.float32(mx - mn))
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = min(max(nearest_int(iscale * np.float32(x[i] - mn)), 0), nmax)
            Laux[i] = l
            wl = weights[i] * np.float32(l)
            sum_l += wl
            sum_l2 += wl * np.float32(l)
            sum_xl += wl * x[i]
        D = np.float32(sum_w * sum_l2) - np.float32(sum_l * sum_l)
        if D > F0:
            this_scale = np.float32(np.float32(sum_w * sum_xl) - np.float32(sum_x * sum_l)) / D
            this_min = np.float32(np.float32(sum_l2 * sum_x) - np.float32(sum_l * sum_xl)) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = np.float32(np.float32(this_scale * np.float32(Laux[i])) + this_min) - x[i]
                diff = abs(diff) if use_mad else np.float32(diff * diff)
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, np.float32(-mn)


@inline
def first_absmax(x):  # type: ignore[no-untyped-def]
    """The signed value of the first largest ``|x|`` (C's strict ``>`` scan from 0) and that ``|x|``."""
    mx = F0
    amax = F0
    for i in range(x.shape[0]):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return mx, amax


@inline
def make_qx_quants_rmse1(x, nmax, L):  # type: ignore[no-untyped-def]
    """ggml ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)``: weights ``x*x``;
    ``L`` in ``0..2*nmax-1`` (0 for an all-zero sub-block); returns the scale."""
    n = x.shape[0]
    mx, amax = first_absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    fmax = np.float32(nmax)
    iscale = np.float32(-fmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
        L[i] = l + nmax
        w = x[i] * x[i]
        sumlx += np.float32(w * x[i]) * np.float32(l)
        suml2 += np.float32(w * np.float32(l)) * np.float32(l)
    scale = sumlx / suml2 if suml2 != F0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = np.float32(-np.float32(fmax + np.float32(np.float32(0.1) * np.float32(step)))) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
            w = x[i] * x[i]
            sumlx += np.float32(w * x[i]) * np.float32(l)
            suml2 += np.float32(w * np.float32(l)) * np.float32(l)
        if suml2 > F0 and np.float32(sumlx * sumlx) > np.float32(best * suml2):
            for i in range(n):
                L[i] = nmax + min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@inline
def make_q3_quants_rmse(x, nmax, L):  # type: ignore[no-untyped-def]
    """ggml ``make_q3_quants(n, nmax, x, L, do_rmse=true)``: an initial rounding, then up
    to 5 passes of per-element coordinate descent; ``L`` in ``0..2*nmax-1``."""
    n = x.shape[0]
    mx, amax = first_absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(-np.float32(nmax)) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = min(max(nearest_int(iscale * x[i]), -nmax), nmax - 1)
        L[i] = l
        w = x[i] * x[i]
        sumlx += np.float32(w * x[i]) * np.float32(l)
        suml2 += np.float32(w * np.float32(l)) * np.float32(l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = np.float32(L[i])
            slx = sumlx - np.float32(np.float32(w * x[i]) * li)
            if slx > F0:
                sl2 = suml2 - np.float32(np.float32(w * li) * li)
                new_l = min(max(nearest_int(np.float32(x[i] * sl2) / slx), -nmax), nmax - 1)
                if new_l != L[i]:
                    nf = np.float32(new_l)
                    slx += np.float32(w * x[i]) * nf
                    sl2 += np.float32(w * nf) * nf
                    if sl2 > F0 and np.float32(np.float32(slx * slx) * suml2) > np.float32(np.float32(sumlx * sumlx) * sl2):
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > F0 else F0


# ----------------------------------------------------------------------------- packing


@inline
def scale_min_k4(y, j):  # type: ignore[no-untyped-def]
    """ggml ``get_scale_min_k4``: 6-bit scale and min ``j`` of the 12 bytes at ``y[4:16]``."""
    if j < 4:
        return np.int64(y[4 + j]) & 63, np.int64(y[8 + j]) & 63
    sc = (np.int64(y[8 + j]) & 0xF) | ((np.int64(y[j]) >> 6) << 4)
    m = (np.int64(y[8 + j]) >> 4) | ((np.int64(y[4 + j]) >> 6) << 4)
    return sc, m


@inline
def pack_crumbs(L, y, at):  # type: ignore[no-untyped-def]
    """2-bit codes of 256 weights -> 64 bytes at ``y[at:]``: byte ``h*32 + l`` holds
    weights ``h*128 + s*32 + l`` in bits ``2s``."""
    for j in range(2):
        for l in range(32):
            w = 128 * j + l
            y[at + 32 * j + l] = np.uint8(L[w] | (L[w + 32] << 2) | (L[w + 64] << 4) | (L[w + 96] << 6))


@inline
def affine_k_scratch():  # type: ignore[no-untyped-def]
    """``L``, ``Laux``, ``weights``, ``scales``, ``mins`` of :func:`affine_k_block`."""
    return (np.zeros(256, np.int64), np.zeros(32, np.int64), np.zeros(32, np.float32), np.zeros(8, np.float32),
            np.zeros(8, np.float32))


@inline
def affine_k_block(x, y, scratch, f16_table, nmax, rmin, rdelta, nstep):  # type: ignore[no-untyped-def]
    """The shared body of ``quantize_row_q4_K_ref`` / ``_q5_K_ref`` for one block: header
    (d, dmin, 12 scale bytes) into ``y[0:16]``, final codes into ``scratch[0]``."""
    L, Laux, weights, scales, mins = scratch
    max_scale = F0
    max_min = F0
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = F0
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.float32(np.sqrt(sum_x2 / np.float32(32.0)))
        for l in range(32):
            weights[l] = av_x + abs(xs[l])
        sc, mn = make_qkx2_quants(xs, weights, nmax, rmin, rdelta, nstep, False, L[32 * j:32 * j + 32], Laux)
        scales[j] = sc
        mins[j] = mn
        if sc > max_scale:
            max_scale = sc
        if mn > max_min:
            max_min = mn
    inv_scale = np.float32(63.0) / max_scale if max_scale > F0 else F0
    inv_min = np.float32(63.0) / max_min if max_min > F0 else F0
    for j in range(12):
        y[4 + j] = 0
    for j in range(8):
        ls = min(nearest_int(inv_scale * scales[j]) & 0xFF, 63)  # uint8_t store, then MIN
        lm = min(nearest_int(inv_min * mins[j]) & 0xFF, 63)
        if j < 4:
            y[4 + j] = np.uint8(ls)
            y[8 + j] = np.uint8(lm)
        else:
            y[8 + j] = np.uint8((ls & 0xF) | ((lm & 0xF) << 4))
            y[j] = np.uint8(np.int64(y[j]) | ((ls >> 4) << 6))
            y[4 + j] = np.uint8(np.int64(y[4 + j]) | ((lm >> 4) << 6))
    d16 = f16_bits(max_scale / np.float32(63.0))
    dmin16 = f16_bits(max_min / np.float32(63.0))
    put_u16(y, 0, d16)
    put_u16(y, 2, dmin16)
    for j in range(8):
        sc, m = scale_min_k4(y, j)
        d = f16_table[d16] * np.float32(sc)
        if d == F0:
            continue
        dm = f16_table[dmin16] * np.float32(m)
        for ii in range(32):
            L[32 * j + ii] = min(max(nearest_int(np.float32(x[32 * j + ii] + dm) / d), 0), nmax)


# ----------------------------------------------------------------------------- kernels


@kernel
def quantize_q2_k_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q2_K_ref``: (n, 256) float32 -> (n, 84) bytes."""
    L = np.zeros(256, np.int64)
    Laux = np.zeros(16, np.int64)
    weights = np.zeros(16, np.float32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    q4scale = np.float32(15.0)
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        max_scale = F0
        max_min = F0
        for j in range(16):
            xs = xb[16 * j:16 * j + 16]
            for l in range(16):
                weights[l] = abs(xs[l])
            sc, mn = make_qkx2_quants(xs, weights, 3, np.float32(-0.5), np.float32(0.1), 15, True, L[16 * j:16 * j + 16], Laux)
            scales[j] = sc
            mins[j] = mn
            if sc > max_scale:
                max_scale = sc
            if mn > max_min:
                max_min = mn
        if max_scale > F0:
            iscale = q4scale / max_scale
            for j in range(16):
                y[j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
            d16 = f16_bits(max_scale / q4scale)
        else:
            for j in range(16):
                y[j] = 0
            d16 = 0
        if max_min > F0:
            iscale = q4scale / max_min
            for j in range(16):
                y[j] = np.uint8((np.int64(y[j]) | (nearest_int(iscale * mins[j]) << 4)) & 0xFF)
            dmin16 = f16_bits(max_min / q4scale)
        else:
            dmin16 = 0
        put_u16(y, 80, d16)
        put_u16(y, 82, dmin16)
        for j in range(16):
            d = f16_table[d16] * np.float32(np.int64(y[j]) & 0xF)
            if d == F0:
                continue
            dm = f16_table[dmin16] * np.float32(np.int64(y[j]) >> 4)
            for ii in range(16):
                L[16 * j + ii] = min(max(nearest_int(np.float32(xb[16 * j + ii] + dm) / d), 0), 3)
        pack_crumbs(L, y, 16)


@kernel
def quantize_q3_k_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q3_K_ref``: (n, 256) float32 -> (n, 110) bytes."""
    L = np.zeros(256, np.int64)
    scales = np.zeros(16, np.float32)
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        max_scale = F0
        amax = F0
        for j in range(16):
            scales[j] = make_q3_quants_rmse(xb[16 * j:16 * j + 16], 4, L[16 * j:16 * j + 16])
            a = abs(scales[j])
            if a > amax:
                amax = a
                max_scale = scales[j]
        for j in range(96, 108):
            y[j] = 0
        if max_scale != F0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(16):
                l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
                l = min(max(l, -32), 31) + 32
                if j < 8:
                    y[96 + j] = np.uint8(l & 0xF)
                else:
                    y[96 + j - 8] = np.uint8(np.int64(y[96 + j - 8]) | ((l & 0xF) << 4))
                y[104 + j % 4] = np.uint8(np.int64(y[104 + j % 4]) | ((l >> 4) << (2 * (j // 4))))
            d16 = f16_bits(F1 / iscale)
        else:
            d16 = 0
        put_u16(y, 108, d16)
        for j in range(16):
            sc = (np.int64(y[96 + j]) & 0xF) if j < 8 else (np.int64(y[96 + j - 8]) >> 4)
            sc = (sc | (((np.int64(y[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
            d = f16_table[d16] * np.float32(sc)
            if d == F0:
                continue
            for ii in range(16):
                L[16 * j + ii] = min(max(nearest_int(xb[16 * j + ii] / d), -4), 3) + 4
        for j in range(32):
            y[j] = 0
        for j in range(256):
            if L[j] > 3:
                y[j % 32] = np.uint8(np.int64(y[j % 32]) | (1 << (j // 32)))
                L[j] -= 4
        pack_crumbs(L, y, 32)


@kernel
def quantize_q4_k_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q4_K_ref``: (n, 256) float32 -> (n, 144) bytes."""
    scratch = affine_k_scratch()
    L = scratch[0]
    for i in range(x.shape[0]):
        y = out[i]
        affine_k_block(x[i], y, scratch, f16_table, 15, np.float32(-1.0), np.float32(0.1), 20)
        for c in range(4):
            for l in range(32):
                y[16 + 32 * c + l] = np.uint8(L[64 * c + l] | (L[64 * c + 32 + l] << 4))


@kernel
def quantize_q5_k_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q5_K_ref``: (n, 256) float32 -> (n, 176) bytes."""
    scratch = affine_k_scratch()
    L = scratch[0]
    for i in range(x.shape[0]):
        y = out[i]
        affine_k_block(x[i], y, scratch, f16_table, 31, np.float32(-0.5), np.float32(0.1), 15)
        for l in range(32):
            y[16 + l] = 0
        for c in range(4):
            for l in range(32):
                l1 = L[64 * c + l]
                l2 = L[64 * c + 32 + l]
                if l1 > 15:
                    l1 -= 16
                    y[16 + l] = np.uint8(np.int64(y[16 + l]) | (1 << (2 * c)))
                if l2 > 15:
                    l2 -= 16
                    y[16 + l] = np.uint8(np.int64(y[16 + l]) | (2 << (2 * c)))
                y[48 + 32 * c + l] = np.uint8(l1 | (l2 << 4))


@kernel
def quantize_q6_k_compiled(x, out, f16_table):  # type: ignore[no-untyped-def]
    """``quantize_row_q6_K_ref``: (n, 256) float32 -> (n, 210) bytes."""
    L = np.zeros(256, np.int64)
    scales = np.zeros(16, np.float32)
    for i in range(x.shape[0]):
        xb, y = x[i], out[i]
        max_scale = F0
        max_abs_scale = F0
        for ib in range(16):
            sc = make_qx_quants_rmse1(xb[16 * ib:16 * ib + 16], 32, L[16 * ib:16 * ib + 16])
            scales[ib] = sc
            a = abs(sc)
            if a > max_abs_scale:
                max_abs_scale = a
                max_scale = sc
        if max_abs_scale < GROUP_MAX_EPS:
            for j in range(y.shape[0]):
                y[j] = 0
            continue
        iscale = np.float32(-128.0) / max_scale
        d16 = f16_bits(F1 / iscale)
        put_u16(y, 208, d16)
        for ib in range(16):
            y[192 + ib] = np.uint8(min(127, nearest_int(iscale * scales[ib])) & 0xFF)  # int8_t store
        for j in range(16):
            sc = np.int64(y[192 + j])
            sc = sc - 256 if sc > 127 else sc
            d = f16_table[d16] * np.float32(sc)
            if d == F0:
                continue
            for ii in range(16):
                L[16 * j + ii] = min(max(nearest_int(xb[16 * j + ii] / d), -32), 31) + 32
        for h in range(2):
            for l in range(32):
                w = 128 * h + l
                q1, q2, q3, q4 = L[w], L[w + 32], L[w + 64], L[w + 96]
                y[64 * h + l] = np.uint8((q1 & 0xF) | ((q3 & 0xF) << 4))
                y[64 * h + 32 + l] = np.uint8((q2 & 0xF) | ((q4 & 0xF) << 4))
                y[128 + 32 * h + l] = np.uint8((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6))
