"""GPTQ Hessians: running means of `2 x x^T` over calibration tokens, one per distinct input.

For a linear layer y = x W^T the GPTQ objective is ||X W^T - X Q^T||^2, whose Hessian in each row of W is
`H = 2 X^T X`. We keep it as a running mean over tokens, `H_n = (2 / n) sum_t x_t x_t^T`, updated per batch of b
tokens as `H *= n / (n + b); H += (2 / (n + b)) X^T X` (the form older llm-compressor releases used; 0.14 sums
`2 X^T X` and divides at the end by its sample count, sequences for 3-D inputs, calls for 2-D ones). GPTQ itself
does not depend on the scale of H (the dampening is relative to mean(diag H)), but a per-token mean makes the
Hessians of different experts and of different coverage modes comparable, which the cold-expert blend needs.

Precision: inputs are cast to float32 and the product accumulated in float32, as the peers do. Each batch adds
one fp32 GEMM; over 5,000 batches the fp32 running mean stays within 5e-6 (relative to its largest entry) of a
float64 accumulation (tested; a plain fp32 sum divided at the end: 3e-6), far below what the dampening (1% of the
mean diagonal) absorbs; float64 would double the memory (144 MiB per 6144-wide Hessian) for nothing.
`dtype=torch.float64` is accepted for checks. On CUDA with TF32 matmuls enabled, bf16 inputs still give exact
products (a bf16 value fits TF32's mantissa); float32 inputs would be truncated, so keep TF32 off for them.

Sharing: one accumulator per distinct input, so gate_proj/up_proj of an expert share one, q/k/v share one, and with
all-token calibration one [in, in] Hessian serves the gate/up of every expert of a layer. Per-expert (routed)
Hessians live in one [E, in, in] stack, fed with the tokens routed to each expert.
"""

from __future__ import annotations

import torch

__all__ = ["HessianAccumulator", "blend_hessians"]

# Hessians at least 4 panels wide are updated as panels of their upper triangle (a symmetric rank-k update, BLAS's
# syrk, which torch does not expose): 56-62% of the flops of the full product at widths 2048-6144. The lower
# triangle is mirrored from the upper one when `mean` is read.
_PANEL = 256


def _mirror_upper_(matrix: torch.Tensor) -> None:
    """matrix [n, n]: lower triangle <- transpose of the upper one, in place, a panel at a time."""
    n = matrix.shape[-1]
    for i in range(0, n, _PANEL):
        j = min(i + _PANEL, n)
        diagonal = matrix[i:j, i:j]
        diagonal.copy_(diagonal.triu() + diagonal.triu(1).mT)
        matrix[j:, i:j].copy_(matrix[i:j, j:].mT)


class HessianAccumulator:
    """Running-mean GPTQ Hessian of one input ([in, in]) or of a stack of E inputs ([E, in, in], one per expert).

    Attributes: `mean` float32 [in, in] or [E, in, in], the per-token mean of `2 x x^T`; `tokens` int64 [] or [E],
    the tokens seen. A Hessian that saw no tokens is all zero (GPTQ must then fall back to round-to-nearest).
    """

    def __init__(
        self,
        in_features: int,
        experts: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (in_features, in_features) if experts is None else (experts, in_features, in_features)
        self._mean = torch.zeros(shape, dtype=dtype, device=device)
        self._mirror = False
        self.tokens = torch.zeros(() if experts is None else (experts,), dtype=torch.int64)

    @property
    def mean(self) -> torch.Tensor:
        """The Hessian(s), symmetric (the lower triangle mirrored after panel updates)."""
        if self._mirror:
            for matrix in self._mean.view(-1, self.in_features, self.in_features):
                _mirror_upper_(matrix)
            self._mirror = False
        return self._mean

    @property
    def in_features(self) -> int:
        return self._mean.shape[-1]

    @property
    def experts(self) -> int | None:
        return None if self._mean.dim() == 2 else self._mean.shape[0]

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"inputs of width {x.shape[-1]} for a Hessian of width {self.in_features}")
        return x.reshape(-1, self.in_features).to(device=self._mean.device, dtype=self._mean.dtype)

    def _update(self, mean: torch.Tensor, seen: int, x: torch.Tensor) -> None:
        total = seen + x.shape[0]
        beta, alpha = seen / total, 2.0 / total
        n = x.shape[1]
        if n < 4 * _PANEL:
            mean.addmm_(x.T, x, beta=beta, alpha=alpha)
            return
        for i in range(0, n, _PANEL):
            mean[i : i + _PANEL, i:].addmm_(x[:, i : i + _PANEL].T, x[:, i:], beta=beta, alpha=alpha)
        self._mirror = True

    def add(self, x: torch.Tensor, expert: int | None = None) -> None:
        """Add the tokens x [..., in] (any float dtype) to the Hessian, or to expert `expert`'s of a stack."""
        x = self._inputs(x)
        if x.shape[0] == 0:
            return
        if (expert is None) != (self.experts is None):
            raise ValueError("give `expert` exactly when the accumulator is a per-expert stack")
        if expert is None:
            self._update(self._mean, int(self.tokens), x)
            self.tokens += x.shape[0]
        else:
            self._update(self._mean[expert], int(self.tokens[expert]), x)
            self.tokens[expert] += x.shape[0]

    def add_routed(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Per-expert Hessians from routed tokens: x [T, in], expert_ids int [T, k] (the router's top-k).

        Expert e receives the rows t with e in expert_ids[t]. Returns the int64 [E] count of tokens each expert
        received in this call.
        """
        if self.experts is None:
            raise ValueError("routed accumulation needs a per-expert stack (experts=E)")
        x = self._inputs(x)
        if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0]:
            raise ValueError(f"expert_ids {tuple(expert_ids.shape)} must be [T, k] for {x.shape[0]} tokens")
        flat = expert_ids.reshape(-1).to(device=x.device, dtype=torch.int64)
        if flat.numel() and (flat.min() < 0 or flat.max() >= self.experts):
            raise ValueError(f"expert ids must lie in [0, {self.experts})")
        ordered = expert_ids.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError("a token is routed to the same expert twice in expert_ids (top-k ids must be distinct)")
        counts = torch.bincount(flat, minlength=self.experts)
        # Tokens grouped by expert (stable, so each expert sees its tokens in order): one gather and GEMM each.
        token_of = torch.argsort(flat, stable=True) // expert_ids.shape[1]
        start = 0
        for expert, count in enumerate(counts.tolist()):
            if count:
                self.add(x[token_of[start : start + count]], expert)
            start += count
        return counts.cpu()

    def add_stacked(self, x: torch.Tensor) -> None:
        """Add x [E, T, in] to a stack: expert e gets its own T tokens x[e] (one batched GEMM for all experts)."""
        if self.experts is None or x.dim() != 3 or x.shape[0] != self.experts:
            raise ValueError(f"stacked inputs {tuple(x.shape)} need a stack of {self.experts} experts")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"inputs of width {x.shape[-1]} for a Hessian of width {self.in_features}")
        if x.shape[1] == 0:
            return
        x = x.to(device=self.mean.device, dtype=self.mean.dtype)
        seen = self.tokens.tolist()
        if len(set(seen)) == 1:
            # The usual case (every expert fed the same number of tokens): one batched GEMM, no temporary.
            total = seen[0] + x.shape[1]
            self.mean.baddbmm_(x.transpose(1, 2), x, beta=seen[0] / total, alpha=2.0 / total)
        else:
            for expert in range(self.experts):
                self._update(self.mean[expert], seen[expert], x[expert])
        self.tokens += x.shape[1]

    def merge_(self, other: HessianAccumulator) -> None:
        """Fold another accumulator of the same shape into this one (token-weighted), e.g. a rank's share."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge Hessians of shapes {tuple(other.mean.shape)} and {tuple(self.mean.shape)}")
        total = self.tokens + other.tokens
        mine = torch.where(total > 0, self.tokens / total.clamp(min=1), 0.0).to(self.mean)
        theirs = torch.where(total > 0, other.tokens / total.clamp(min=1), 0.0).to(self.mean)
        if self.experts is not None:
            mine, theirs = mine[:, None, None], theirs[:, None, None]
        self.mean.mul_(mine).add_(other.mean.to(self.mean) * theirs)
        self.tokens = total


def blend_hessians(
    routed: torch.Tensor, routed_tokens: torch.Tensor, prior: torch.Tensor, prior_tokens: float
) -> torch.Tensor:
    """Cold-expert blend: routed Hessians pulled toward an all-token prior, weighted in tokens.

    routed [E, in, in] (per-token means from each expert's routed tokens), routed_tokens int [E], prior [in, in]
    or [E, in, in] (per-token mean over all calibration tokens) -> float32 [E, in, in]:

        H_e = H_routed_e * n_e / (n_e + k) + H_all * k / (n_e + k)

    with k = `prior_tokens` the prior's strength in tokens: an expert with n_e >> k keeps its routed Hessian, an
    expert with no tokens gets the all-token one (so it is never quantised without data), and in between the prior
    acts like k extra tokens drawn from the whole calibration set. k = 0 returns the routed Hessians unchanged.
    """
    if prior_tokens < 0:
        raise ValueError(f"prior strength must be >= 0 tokens, got {prior_tokens}")
    if routed.dim() != 3 or prior.shape[-2:] != routed.shape[-2:]:
        raise ValueError(f"routed {tuple(routed.shape)} and prior {tuple(prior.shape)} Hessians do not match")
    n = routed_tokens.to(device=routed.device, dtype=torch.float64)
    total = n + prior_tokens
    own = torch.where(total > 0, n / total.clamp(min=1e-30), 1.0).to(routed.dtype)[:, None, None]
    return routed * own + prior.to(routed) * (1 - own)
