"""GPTQ (arXiv 2210.17323) for symmetric group-wise INT4, batched over the experts of one projection.

`gptq_quantize_int4(weight [E, out, in], hessian [E, in, in] or shared [in, in])` runs the column sweep for all E
matrices at once: the inverse Hessian's upper Cholesky factor U (U^T U = (H + damp I)^-1) is computed per expert,
or once when the Hessian is shared, then columns are quantised left to right; each column's rounding error,
divided by U[i, i], is spread over the columns after it by row i of U: inside a block of `block_size` columns
immediately, to the rest of the matrix once per block with one GEMM (the "lazy batch" of section 3.4 of the paper).

Codes are q = clamp(round(w / s), -8, 7); the error fed back is w - dq with dq = q * s rounded to the scale dtype
(the model dtype), the value a W4A16 kernel multiplies with. Group scales follow `int4_group_scales`, the rule
round-to-nearest uses, applied either to the original weights before the sweep (`static_scales=True`, the default:
llm-compressor 0.14 does this, its weight observer runs before GPTQ, so GPTQ changes only the codes and the scales
are round-to-nearest's; the only mode that allows act-order, as groups need not then come in column order) or to
the error-updated weights when the sweep reaches the group's first column (`static_scales=False`: GPTQModel and
the reference GPTQ code do this). On correlated synthetic inputs the two give the same output error within 2%.

Never silent:
- dead columns (diag H = 0: the input feature was always zero) are decoupled, not zeroed: their diagonal is set to
  the mean live diagonal, so they take round-to-nearest of their weights and pass no error on (llm-compressor zeroes
  their weights, which turns an expert without tokens into zeros);
- a matrix without data (every column dead, or fewer than `min_tokens` tokens) is quantised by round-to-nearest;
- a failed Cholesky is retried with the dampening x10, up to `damp_retries` times, then round-to-nearest;
each is counted in the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtools.numerics.finite import all_finite
from qtools.numerics.int4 import INT4_MAX, INT4_MIN, int4_group_scales

__all__ = ["GPTQResult", "gptq_quantize_int4", "inverse_hessian_factor", "quantize_int4_rtn"]


@dataclass(frozen=True)
class GPTQResult:
    """Output of `gptq_quantize_int4` for a stack of E matrices (a 2-D weight is a stack of one).

    codes int8 [E, out, in] in [-8, 7] (the checkpoint packs q + 8); scales [E, out, in / group] in the scale dtype;
    no_data bool [E]: round-to-nearest because the Hessian held no data; cholesky_failed bool [E]: round-to-nearest
    after every dampening tried failed; damp float32 [E]: dampening fraction of mean(diag H) used (0 for a
    fallback); dead_columns int64 [E]; loss float32 [E]: the GPTQ objective sum((w - dq)^2 / U_ii^2) / 2 (0 for a
    fallback).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    no_data: torch.Tensor
    cholesky_failed: torch.Tensor
    damp: torch.Tensor
    dead_columns: torch.Tensor
    loss: torch.Tensor

    @property
    def fallback(self) -> torch.Tensor:
        """bool [E]: matrices quantised by round-to-nearest instead of GPTQ."""
        return self.no_data | self.cholesky_failed


def quantize_int4_rtn(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest codes: weight [..., out, in] with scales [..., out, in / group] -> int8 [-8, 7]."""
    groups = scales.shape[-1]
    grouped = weight.float().unflatten(-1, (groups, weight.shape[-1] // groups))
    codes = torch.round(grouped / scales.float().unsqueeze(-1)).clamp_(INT4_MIN, INT4_MAX)
    return codes.flatten(-2).to(torch.int8)


# 1.5 * 2^23: adding and subtracting it rounds a float32 of magnitude below 2^22 to the nearest integer, ties to
# even (IEEE round-to-nearest-even), exactly what torch.round does. On CPU torch.round of a small tensor can take
# 1000x longer than two additions when the intra-op threads are contended (12 ms against 12 us for [32, 768]).
_ROUNDING_MAGIC = 12582912.0


def _round_int4(x: torch.Tensor) -> torch.Tensor:
    """clamp(round(x), -8, 7) for float32 x, in place; equal to torch.round(x).clamp(-8, 7)."""
    return x.clamp_(INT4_MIN, INT4_MAX).add_(_ROUNDING_MAGIC).sub_(_ROUNDING_MAGIC)


# Diagonal blocks up to this width are inverted by a triangular solve; wider ones split in two (see
# `_invert_lower_`), so the bulk of the work is GEMMs, which run near the machine's peak.
_TRIANGULAR_BASE = 256


def _invert_lower_(lower: torch.Tensor) -> None:
    """Invert lower-triangular matrices [B, n, n] in place (blockwise: inv([[A, 0], [C, D]]) = [[A^-1, 0],
    [-D^-1 C A^-1, D^-1]]). About n^3 / 3 flops, mostly GEMMs: 10x faster on CPU than `cholesky_inverse`."""
    n = lower.shape[-1]
    if n <= _TRIANGULAR_BASE:
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device).expand_as(lower)
        lower.copy_(torch.linalg.solve_triangular(lower, eye, upper=False))
        return
    half = ((n // 2 + 127) // 128) * 128 if n > 256 else n // 2
    a, c, d = lower[:, :half, :half], lower[:, half:, :half], lower[:, half:, half:]
    _invert_lower_(a)
    _invert_lower_(d)
    c.copy_(torch.bmm(d, torch.bmm(c, a)).neg_())


def _factor_fast(work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = chol_upper(H^-1) for dampened Hessians H [B, n, n] float32, given *reversed* (work = J H J, consumed).

    With J the reversal permutation, if J H J = L L^T then H^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is upper
    triangular: the factor is one Cholesky and one triangular inverse (n^3 / 3 flops each), against the
    reference's Cholesky, `cholesky_inverse` (slow on CPU) and a second Cholesky. Equal to the reference up to fp32
    rounding (tested). Returns (U [B, n, n], info int32 [B], 0 where it succeeded).
    """
    info = torch.empty(work.shape[0], dtype=torch.int32, device=work.device)
    torch.linalg.cholesky_ex(work, check_errors=False, out=(work, info))
    bad = info != 0
    if bool(bad.any()):
        work[bad] = torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    _invert_lower_(work)
    return work.flip(-2, -1), info


def _factor_reference(work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = chol_upper(work^-1), in place, by the calls llm-compressor 0.14 makes (Cholesky, `cholesky_inverse`,
    upper Cholesky): the same factor bit for bit, so its sweep can be compared code for code."""
    info = torch.empty(work.shape[0], dtype=torch.int32, device=work.device)
    torch.linalg.cholesky_ex(work, check_errors=False, out=(work, info))
    bad = info != 0
    if bool(bad.any()):
        # A partial factor may hold zeros on its diagonal: give the inverse something it can take.
        work[bad] = torch.eye(work.shape[-1], dtype=torch.float32, device=work.device)
    torch.cholesky_inverse(work, out=work)
    info_upper = torch.empty_like(info)
    torch.linalg.cholesky_ex(work, upper=True, check_errors=False, out=(work, info_upper))
    return work, torch.where(info == 0, info_upper, info)


# method -> (whether it takes the Hessian reversed, the factorisation)
FACTOR_METHODS = {"fast": (True, _factor_fast), "reference": (False, _factor_reference)}


def _working_copy(hessian: torch.Tensor, index: torch.Tensor, order: torch.Tensor | None, reverse: bool):
    """float32 [len(index), n, n]: matrix b of `hessian` for each b in `index`, its rows and columns in `order[b]`
    (reversed when `reverse`), built one matrix at a time (no second copy of the stack)."""
    n = hessian.shape[-1]
    work = torch.empty(index.numel(), n, n, dtype=torch.float32, device=hessian.device)
    for slot, b in enumerate(index.tolist()):
        if order is None:
            work[slot].copy_(hessian[b].flip(-2, -1) if reverse else hessian[b])
            continue
        o = torch.arange(n, device=hessian.device) if order is None else order[b]
        o = o.flip(0) if reverse else o
        torch.index_select(torch.index_select(hessian[b], 0, o), 1, o, out=work[slot])
    return work


def inverse_hessian_factor(
    hessian: torch.Tensor,
    damp: float = 0.01,
    damp_retries: int = 3,
    skip: torch.Tensor | None = None,
    method: str = "fast",
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the dampened inverse Hessian, per matrix of a stack.

    hessian float [B, in, in] (not modified); order int64 [B, in]: factorise each Hessian with its rows and
    columns in this order (act-order), or None for their own order. Dead columns (zero diagonal) get the mean live
    diagonal; then U = chol_upper((H + d * mean(diag H) I)^-1) with d = `damp`, retried with d x10 up to
    `damp_retries` times where the factorisation fails. Matrices in `skip` (bool [B]) or without any live column
    are not factorised.
    method: "fast" (one Cholesky and a blockwise triangular inverse) or "reference" (llm-compressor's calls, bit
    for bit; about 5x slower on CPU). Returns (U float32 [B, in, in], identity where not factorised; ok bool [B];
    damp float32 [B] used, 0 where not ok; dead bool [B, in]).
    """
    if method not in FACTOR_METHODS:
        raise ValueError(f"factor method {method!r}: choose one of {', '.join(FACTOR_METHODS)}")
    reverse, factorise = FACTOR_METHODS[method]
    batch, in_features, _ = hessian.shape
    device = hessian.device
    diag = hessian.diagonal(dim1=-2, dim2=-1).float()
    dead = diag == 0
    live_count = (~dead).sum(-1)
    live_mean = torch.where(dead, 0.0, diag).sum(-1) / live_count.clamp(min=1)
    pending = live_count > 0
    if skip is not None:
        pending &= ~skip.to(device)
    factor = None
    used = torch.zeros(batch, dtype=torch.float32, device=device)
    ok = torch.zeros(batch, dtype=torch.bool, device=device)
    frac = damp
    for _ in range(damp_retries + 1):
        index = pending.nonzero().flatten()
        if index.numel() == 0:
            break
        everything = index.numel() == batch
        work = _working_copy(hessian, index, order, reverse)
        work_diag = work.diagonal(dim1=-2, dim2=-1)
        dead_here = dead[index]
        if order is not None:
            dead_here = torch.gather(dead_here, 1, order[index])
        if reverse:
            dead_here = dead_here.flip(-1)
        work_diag.copy_(torch.where(dead_here, live_mean[index, None], work_diag))
        work_diag.add_((frac * live_mean[index])[:, None])
        work, info = factorise(work)
        good = info == 0
        if factor is None and everything and bool(good.all()):
            factor = work
        else:
            if factor is None:
                factor = torch.eye(in_features, dtype=torch.float32, device=device).repeat(batch, 1, 1)
            factor[index[good]] = work[good]
        del work
        done = index[good]
        used[done] = frac
        ok[done] = True
        pending[done] = False
        frac *= 10
    if factor is None:
        factor = torch.eye(in_features, dtype=torch.float32, device=device).repeat(batch, 1, 1)
    elif not bool(ok.all()):
        factor[~ok] = torch.eye(in_features, dtype=torch.float32, device=device)
    return factor, ok, used, dead


def _validate(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, block_size: int, sub_block: int) -> None:
    if weight.dim() != 3 or not weight.is_floating_point():
        raise ValueError(f"expected a floating weight [E, out, in] or [out, in], got {tuple(weight.shape)}")
    experts, _, in_features = weight.shape
    if hessian.shape not in ((in_features, in_features), (experts, in_features, in_features)):
        raise ValueError(
            f"Hessian {tuple(hessian.shape)} does not fit weight {tuple(weight.shape)}: "
            f"expected [{in_features}, {in_features}] (shared) or [{experts}, {in_features}, {in_features}]"
        )
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"input width {in_features} is not a multiple of the INT4 group size {group_size}")
    if block_size <= 0 or block_size % group_size:
        raise ValueError(f"GPTQ block size {block_size} must be a positive multiple of the group size {group_size}")
    # A group's scales are taken at its first column, when every column of the group must be up to date: groups
    # must start on sub-block boundaries unless one sub-block spans the whole block.
    if sub_block <= 0 or (sub_block != block_size and (group_size % sub_block or block_size % sub_block)):
        raise ValueError(
            f"GPTQ sub-block {sub_block} must divide the group size {group_size} and the block size {block_size}, "
            "or equal the block size"
        )
    if not all_finite(weight):
        raise ValueError("weight holds NaN/Inf values")
    if not all_finite(hessian):
        raise ValueError("Hessian holds NaN/Inf values (non-finite calibration activations?)")


def _propagate(target: torch.Tensor, factor_rows: torch.Tensor, errors: torch.Tensor) -> None:
    """target [E, n, out] -= factor_rows^T @ errors, factor_rows [E or 1, k, n], errors [E, k, out].

    One in-place batched GEMM (a shared factor is broadcast with a zero stride): no [E, n, out] temporary, about
    twice as fast on CPU as the product followed by a subtraction.
    """
    rows = factor_rows.transpose(1, 2).expand(errors.shape[0], -1, -1)
    target.baddbmm_(rows, errors, alpha=-1)


def _sweep(
    weight: torch.Tensor,
    factor: torch.Tensor,
    static: torch.Tensor | None,
    group_of: torch.Tensor,
    group_size: int,
    block_size: int,
    sub_block: int,
    scale_dtype: torch.dtype,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batched column sweep over weight [E, out, in] with factor U [E or 1, in, in], the columns of weight
    taken in the order `columns` int64 [E or 1, in] (act-order; None: their own order; the codes come back in
    sweep order).

    static: scales [E, out, G] fixed before the sweep (looked up per column through group_of int64 [E or 1, in]),
    or None to take each group's scales from the updated weights at its first column. Returns (codes int8
    [E, out, in], scales [E, out, G], loss float32 [E]).
    """
    experts, out_features, in_features = weight.shape
    # Transposed working copy [E, in, out]: a column of W is a contiguous [E, out] slice, and the in-block updates
    # run over contiguous rows. The values computed are the same as in the [out, in] layout.
    if columns is None:
        work = weight.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    else:
        # Permuted while copied, one matrix at a time: no second copy of the stack.
        work = torch.empty(experts, in_features, out_features, dtype=torch.float32, device=weight.device)
        for expert in range(experts):
            order = columns[expert if columns.shape[0] > 1 else 0]
            work[expert].copy_(weight[expert].index_select(1, order).T)
    codes = torch.empty(experts, in_features, out_features, dtype=torch.int8, device=work.device)
    groups = in_features // group_size
    if static is None:
        scales = torch.empty(experts, groups, out_features, dtype=scale_dtype, device=work.device)
    else:
        scales = static.transpose(1, 2)
    loss = torch.zeros(experts, out_features, dtype=torch.float32, device=work.device)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        block = work[:, i1:i2]
        errors = torch.empty_like(block)
        factor_block = factor[:, i1:i2, i1:i2]
        if static is not None:
            index = group_of[:, i1:i2, None].expand(experts, i2 - i1, out_features)
            column_scales = torch.gather(scales, 1, index)
        for j1 in range(0, i2 - i1, sub_block):
            j2 = min(j1 + sub_block, i2 - i1)
            for i in range(j1, j2):
                column = i1 + i
                if static is None:
                    if column % group_size == 0:
                        rows = block[:, i : i + group_size].transpose(1, 2)
                        scales[:, column // group_size] = int4_group_scales(rows, group_size, scale_dtype)[..., 0]
                    scale = scales[:, column // group_size]
                else:
                    scale = column_scales[:, i]
                w = block[:, i]
                q = _round_int4(w / scale)
                error = (w - q.to(scale_dtype) * scale) / factor_block[:, i, i][:, None]
                codes[:, column] = q.to(torch.int8)
                errors[:, i] = error
                loss += error.square()
                block[:, i:j2] -= factor_block[:, i, i:j2].unsqueeze(-1) * error.unsqueeze(1)
            if j2 < i2 - i1:
                _propagate(block[:, j2:], factor_block[:, j1:j2, j2:], errors[:, j1:j2])
        if i2 < in_features:
            _propagate(work[:, i2:], factor[:, i1:i2, i2:], errors)
    return codes.transpose(1, 2), scales.transpose(1, 2), loss.sum(-1) / 2


def gptq_quantize_int4(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    group_size: int = 128,
    block_size: int = 128,
    sub_block: int = 16,
    damp: float = 0.01,
    damp_retries: int = 3,
    static_scales: bool = True,
    actorder: bool = False,
    tokens: torch.Tensor | int | None = None,
    min_tokens: int = 1,
    scale_dtype: torch.dtype | None = None,
    factor_method: str = "fast",
) -> GPTQResult:
    """GPTQ INT4 (symmetric, group-wise) of the E matrices of one projection, all at once.

    weight [E, out, in] or [out, in], float (the model dtype, bf16 for Qwen3); hessian float [E, in, in] (one per
    expert) or [in, in] (shared by every expert: one factorisation for all), per-token means from
    `HessianAccumulator` (any positive scale works). Runs on weight's device (CPU or CUDA); neither input is modified.
    group_size 128, 64 or 32 (must divide in and block_size); damp: fraction of mean(diag H) added to the diagonal;
    damp_retries: times a failed Cholesky is retried with 10x the dampening before round-to-nearest;
    static_scales / actorder: see the module docstring (actorder sorts columns by descending diag H for the sweep
    only; the codes come back in the original order); tokens int or int [E]: calibration tokens behind each Hessian,
    matrices with fewer than `min_tokens` fall back to round-to-nearest (counted as no_data). scale_dtype defaults
    to weight's dtype. factor_method: how the inverse Hessian's factor is computed, see `inverse_hessian_factor`
    ("reference" reproduces llm-compressor's factor bit for bit).

    Memory: a float32 copy of the weight, E factors [in, in] (one when shared) and a working copy of the Hessian.
    Returns a GPTQResult (codes, scales, fallback and dampening counts).
    """
    if weight.dim() == 2:
        weight = weight.unsqueeze(0)
    _validate(weight, hessian, group_size, block_size, sub_block)
    if actorder and not static_scales:
        raise ValueError("act-order needs static_scales=True: sweep-time group scales need columns in group order")
    experts, _, in_features = weight.shape
    device = weight.device
    scale_dtype = weight.dtype if scale_dtype is None else scale_dtype
    hessian = hessian.to(device)
    shared = hessian.dim() == 2
    stack = hessian.unsqueeze(0) if shared else hessian
    rtn_scales = int4_group_scales(weight, group_size, scale_dtype)

    no_data = torch.zeros(experts, dtype=torch.bool, device=device)
    if tokens is not None:
        no_data |= torch.as_tensor(tokens, device=device).expand(experts) < min_tokens
    perm = None
    if actorder:
        # Descending diag H, ties by column: the order llm-compressor's static act-order uses.
        perm = torch.argsort(stack.diagonal(dim1=-2, dim2=-1), dim=-1, descending=True, stable=True)
    skip = None if shared else no_data
    factor, ok, used, dead = inverse_hessian_factor(stack, damp, damp_retries, skip, factor_method, perm)
    dead_columns = dead.sum(-1).expand(experts).clone()
    no_data |= (dead.all(-1)).expand(experts)
    cholesky_failed = ~no_data & ~ok.expand(experts)
    fallback = no_data | cholesky_failed

    codes = torch.empty(weight.shape, dtype=torch.int8, device=device)
    scales = rtn_scales.clone()
    loss = torch.zeros(experts, dtype=torch.float32, device=device)
    live = (~fallback).nonzero().flatten()
    if live.numel():
        live_weight = weight[live] if live.numel() < experts else weight
        live_factor = factor if shared else factor[live]
        group_of = torch.arange(in_features, device=device)[None] // group_size
        perm_live = None
        if actorder:
            perm_live = perm if shared else perm[live]
            group_of = perm_live // group_size
        static = rtn_scales[live] if static_scales else None
        live_codes, live_scales, live_loss = _sweep(
            live_weight, live_factor, static, group_of, group_size, block_size, sub_block, scale_dtype, perm_live
        )
        if actorder:
            restore = torch.argsort(perm_live, dim=-1)
            live_codes = torch.gather(live_codes, 2, restore[:, None, :].expand_as(live_codes))
        codes[live], scales[live], loss[live] = live_codes, live_scales, live_loss
    dead_experts = fallback.nonzero().flatten()
    if dead_experts.numel():
        codes[dead_experts] = quantize_int4_rtn(weight[dead_experts], rtn_scales[dead_experts])
    damp_used = torch.where(fallback, 0.0, used.expand(experts))
    return GPTQResult(codes, scales, no_data, cholesky_failed, damp_used, dead_columns, loss)
