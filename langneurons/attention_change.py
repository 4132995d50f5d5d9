r"""How much a document's attention probabilities change when one query/key dimension is removed.

This is the q/k part of PLND scoring (:mod:`langneurons.scoring`). For one
layer and a batch of documents, with ``raw``/``probs`` ``[B, H, n, n]`` the
pre-softcap scaled scores and probabilities and ``bias`` ``[B, 1|H, n, n]`` the
additive mask (and ALiBi), removing the dimension of lane l (a query or a key
dimension; scoring puts both sites' lanes side by side) turns the scores of
document b and head h into

    z'[t, s] = softcap(r[t] c[s] (raw[t, s] - a Delta[t, s])) + bias[t, s],
    Delta[t, s] = sum_k left[b, h, t, k, l] right[b, h, s, k, l]    (rank 2: the dim and its rotary partner)

with ``r``/``c`` the row/column scales of a query/key norm (1 without one) and
``a = delta_scale``. :func:`prob_change_sumsq` returns, for every (b, h, l),

    S[b, h, l] = sum_{t counted, s} (softmax_s(z')[t, s] - probs[b, h, t, s])^2,

the rows counted being the document's tokens (padding is not).

Exact mode (``mode="exact"``)
-----------------------------
Needs d_head exponentials per attention weight. Two implementations compute
the same definition:

- the native kernel (:mod:`langneurons.native`, ``prob_change.c``): on CPUs, one
  call per layer for the whole batch, one task per query row with the lanes as
  vector lanes, only over the keys the mask lets the row see (the causal
  triangle, a sliding window); for plain attention two passes over the row
  instead of three where the removal moves no logit by more than a bound;
- torch (GPUs, or when no C compiler is available): per document, the scores of
  all (head, lane) pairs of a block of query rows at once, the rows cut into
  blocks so that each block sees only the keys up to its last row, in chunks of
  at most ``chunk_bytes`` of temporaries.

Fast mode (``mode="fast"``): the second-order expansion
--------------------------------------------------------
Fix (h, d) and a query row t; write ``p_s`` for its probabilities and
``delta_s`` for the change of its logits (the bias does not change). The new
probabilities are ``p'_s = p_s e^{delta_s} / sum_r p_r e^{delta_r}``; to first
order in delta, with J = diag(p) - p p^T the softmax Jacobian,

    p' - p ~ J delta,   (J delta)_s = p_s (delta_s - mu),   mu = sum_s p_s delta_s,

so the squared change is, to second order in the removed quantities,

    ||J delta||^2 = sum_s p_s^2 delta_s^2 - 2 mu sum_s p_s^2 delta_s + mu^2 sum_s p_s^2.       (1)

The logit change, linear in what the removal changes (exact without soft-capping),
with ``g = 1 - tanh^2(raw / cap)`` the soft-cap's derivative (1 without one), is

    delta_s = g_ts [(r c_s - 1) raw_ts - a r c_s Delta_ts].

Writing ``r c - 1 = (r - 1) + (c - 1) + (r - 1)(c - 1)`` (no difference of nearly
equal numbers), delta is a short sum of separable terms,
``delta_s = sum_k A_k[d, t] B_k[d, s] W_k[t, s]``, with (A, B, W) among

    (r - 1, 1, g raw),  (1, c - 1, g raw),  (r - 1, c - 1, g raw),  (-a r L_0, c R_0, g),  (-a r L_1, c R_1, g)

(absent scales or removal drop their terms; plain attention keeps the last two).
Every sum over s in (1) is then a sum of matrix products over all dimensions at once:

    sum_s p_ts^m delta_s     = sum_k  A_k[d, t] ((p^m o W_k) B_k^T)[t, d],
    sum_s p_ts^2 delta_s^2   = sum_kk' A_k A_k'[d, t] ((p^2 o W_k o W_k') (B_k o B_k')^T)[t, d],

with ``(M B^T)[t, d] = sum_s M[t, s] B[d, s]``: about 7 products ``[n, n] @ [n, D]``
per head for plain attention instead of ``D n^2`` exponentials. Both are O(D n^2) per
head: about 14 D n^2 multiply-adds (the products do not skip the masked half) against
D n^2 / 2 exponentials, so fast mode gains only where matrix products are much cheaper
than exponentials (tensor-core GPUs); on CPUs the native exact kernel is as fast or faster
(README, q/k scoring speed).

Error bound of fast mode. For a row, let ``u_s = delta_s - mu`` (so sum_s p_s u_s = 0),
``M = max_s |u_s|`` over the keys the row sees, ``v`` the exact change and
``w = J delta``. Then

    ||v - w|| <= A(M) ||w|| + B(M) ||p|| sum_s p_s |u_s|,                                      (2)
    A(M) = (e^{2M} - 1) / (2M) - 1 ~ M,    B(M) = (e^{3M} - 1) / (3M) - (e^M - 1) / M ~ M.

Proof: v = int_0^1 J(tau) delta dtau with J(tau) the Jacobian at z + tau delta, and
``(J(tau) delta)_s = q_s (u_s - nu)`` with q = softmax(z + tau delta), nu = sum_s q_s u_s.
``q_s / p_s = e^{tau u_s} / Z`` with ``log Z = log sum_s p_s e^{tau u_s}`` in [0, tau M]
(Jensen; sum p u = 0), so ``|q_s / p_s - 1| <= e^{2 tau M} - 1``, ``q_s <= e^{tau M} p_s`` and
``|nu| = |sum_s (q_s - p_s) u_s| <= (e^{2 tau M} - 1) sum_s p_s |u_s|``; hence
``||J(tau) delta - w|| <= (e^{2 tau M} - 1) ||w|| + e^{tau M} (e^{2 tau M} - 1) ||p|| sum_s p_s |u_s|``;
integrate over tau. So the fast change of a row is within relative O(M) of the exact
one, M being how much the removal moves the row's logits (relative to their p-mean).
Fast mode's score of a dimension, the root of a sum over rows, then differs from the exact
one by at most the root of the sum over rows of the squared right-hand sides of (2)
(triangle inequality). With soft-capping, fast mode also linearises tanh, which adds
``||J (delta - delta_lin)||`` with ``|delta - delta_lin| <= 0.385 (y - raw)^2 / cap`` per weight.
The second term of (2) can dominate when the row's first-order change is spread thin
over many unlikely keys while the likely ones do not move; the agreement of the
selected neuron sets (``bench/qk_fast_agreement.py``) is what decides whether fast
mode is good enough for a model.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Iterator

import torch

from langneurons import native

logger = logging.getLogger(__name__)

QK_MODES: tuple[str, ...] = ("exact", "fast")
#: Blocks of query rows (at most, and rows per block at least) of the torch implementation:
#: smaller blocks follow the causal triangle more closely, larger ones launch fewer operations.
_ROW_BLOCKS, _MIN_ROWS = 8, 16
#: The native kernel's lanes per vector block and query rows per task (BLOCK and TILE in prob_change.c).
_NATIVE_BLOCK, _NATIVE_TILE = 16, 32


def prob_change_sumsq(
    raw: torch.Tensor,
    bias: torch.Tensor,
    probs: torch.Tensor,
    left: torch.Tensor | None,
    right: torch.Tensor | None,
    delta_scale: float,
    softcap: float | None,
    chunk_bytes: int,
    row_scale: torch.Tensor | None = None,
    column_scale: torch.Tensor | None = None,
    mode: str = "exact",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of squared changes of a batch's attention probabilities, per document and removed dimension.

    ``raw``/``probs``: [B, H, n, n] pre-softcap scores and probabilities; ``bias``:
    [B, 1|H, n, n], and ``probs`` is 0 wherever it hides a key (as a softmax makes it);
    ``left``/``right`` [B, H, n, 2, L]: lane l removes
    ``Delta[t, s] = sum_k left[t, k, l] right[s, k, l]`` (both ``None``: only the scales
    change the scores; L then comes from them); ``row_scale``/``column_scale``
    [B, H, n, L] or ``None``; ``rows`` [B, n] bool, the query rows that count (the
    documents' tokens; default all). Returns float32 [B, H, L], summed over the rows
    that count; ``mode="fast"`` is the second-order expansion (see the module docstring).
    Attention must be causal (``bias`` masks every key after the query), as in every
    causal LM; other masks are free. Temporaries beyond inputs-sized arrays stay
    within ``chunk_bytes`` (fast mode: within ``chunk_bytes`` or the size of the inputs,
    whichever is larger).
    """
    check_mode(mode)
    if rows is None:
        rows = torch.ones(raw.shape[0], raw.shape[-1], dtype=torch.bool, device=raw.device)
    args = (raw, bias, probs, left, right, delta_scale, softcap, chunk_bytes, row_scale, column_scale, rows)
    if mode == "fast":
        return _second_order(*args)
    tensors = [x for x in (raw, bias, probs, left, right, row_scale, column_scale) if x is not None]
    if all(x.device.type == "cpu" and x.dtype == torch.float32 for x in tensors):
        kernel = _native_kernel()
        if kernel is not None:
            return _exact_native(kernel, *args)
    return _exact_torch(*args)


def check_mode(mode: str) -> None:
    """Raise a ValueError naming ``qk_mode`` unless ``mode`` is one of :data:`QK_MODES`."""
    if mode not in QK_MODES:
        raise ValueError(f"qk_mode={mode!r} is unknown; use 'exact' (the default) or 'fast'")


def _n_lanes(left: torch.Tensor | None, row_scale: torch.Tensor | None, column_scale: torch.Tensor | None) -> int:
    return next(x for x in (left, row_scale, column_scale) if x is not None).shape[-1]


def _lane_chunks(n_lanes: int, per_lane_bytes: int, chunk_bytes: int, multiple: int = 1) -> Iterator[slice]:
    """Consecutive lane ranges of at most ``chunk_bytes`` (a multiple of ``multiple`` lanes where it fits)."""
    step = max(1, min(n_lanes, chunk_bytes // max(1, per_lane_bytes)))
    if step >= multiple:
        step -= step % multiple
    for start in range(0, n_lanes, step):
        yield slice(start, min(n_lanes, start + step))


# ---- exact, torch ---------------------------------------------------------------------------------


def _row_blocks(n: int) -> list[tuple[int, int]]:
    size = max(_MIN_ROWS, -(-n // _ROW_BLOCKS))
    return [(t0, min(n, t0 + size)) for t0 in range(0, n, size)]


def _exact_torch(raw, bias, probs, left, right, delta_scale, softcap, chunk_bytes, row_scale, column_scale, rows):
    batch, n_heads, n = raw.shape[:3]
    n_lanes = _n_lanes(left, row_scale, column_scale)
    out = torch.zeros(batch, n_heads, n_lanes, device=raw.device)
    plain = softcap is None and row_scale is None and column_scale is None and left is not None
    # lanes second: [H, L, n, 2] and [H, L, 2, n] for the rank-2 products, scales [H, L, n]
    left_ = None if left is None else left.permute(0, 1, 4, 2, 3)
    right_ = None if right is None else right.permute(0, 1, 4, 3, 2)
    row_ = None if row_scale is None else row_scale.transpose(2, 3)
    column_ = None if column_scale is None else column_scale.transpose(2, 3)
    for b in range(batch):
        bias_b = bias[b if bias.shape[0] > 1 else 0]  # one mask may serve the whole batch
        logits = raw[b] + bias_b if plain else None
        left_b, right_b = (None, None) if left is None else (left_[b], right_[b])
        row_b = None if row_scale is None else row_[b]
        column_b = None if column_scale is None else column_[b]
        counted = rows[b]
        # Attention is causal: query rows before t1 never see keys from t1 on, so
        # row block [t0, t1) needs only key columns [0, t1).
        for t0, t1 in _row_blocks(n):
            block, cols = slice(t0, t1), slice(0, t1)
            # ~2 float32 [rows, cols] temporaries per (head, lane)
            for lanes in _lane_chunks(n_lanes, 2 * 4 * n_heads * (t1 - t0) * t1, chunk_bytes):
                if left is not None:
                    delta = torch.matmul(left_b[:, lanes, block], right_b[:, lanes, :, cols])  # [H, l, r, c]
                if plain:
                    scores = torch.add(logits[:, None, block, cols], delta, alpha=-delta_scale, out=delta)
                else:
                    scores = raw[b][:, None, block, cols]
                    if left is not None:
                        scores = torch.add(scores, delta, alpha=-delta_scale, out=delta)
                    else:
                        scores = scores.expand(-1, lanes.stop - lanes.start, -1, -1).clone()
                    if row_b is not None:
                        scores.mul_(row_b[:, lanes, block, None])
                    if column_b is not None:
                        scores.mul_(column_b[:, lanes, None, cols])
                    if softcap is not None:
                        scores.div_(softcap).tanh_().mul_(softcap)
                    scores.add_(bias_b[:, None, block, cols])
                torch.softmax(scores, dim=-1, out=scores)
                scores.sub_(probs[b][:, None, block, cols])
                per_row = scores.square_().sum(dim=-1)  # [H, l, r]
                per_row = torch.where(counted[block], per_row, 0.0)
                out[b, :, lanes] += per_row.sum(dim=-1)
    return out


# ---- exact, native ---------------------------------------------------------------------------------


#: The version of ``prob_change_rows``'s argument list that :func:`_native_function` declares.
_NATIVE_ABI = 2


def _native_function(library: ctypes.CDLL):
    """The C kernel of ``library`` with its signature declared, or ``None`` for another argument list."""
    version = getattr(library, "prob_change_abi", None)
    if version is None or version() != _NATIVE_ABI:
        logger.warning("the native q/k kernel has another argument list than this langneurons; using torch")
        return None
    function = library.prob_change_rows
    sizes, arrays, scalars = [ctypes.c_int64] * 7, [ctypes.c_void_p] * 10, [ctypes.c_float] * 2
    function.argtypes = sizes + arrays + scalars + [ctypes.c_void_p, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


@functools.cache
def _native_kernel():
    """The native kernel, or ``None`` when it cannot be built or disagrees with the torch implementation."""
    library = native.load("prob_change")
    if library is None:
        return None
    function = _native_function(library)
    if function is None:
        return None
    # A miscompiled kernel must not score anything: check it on a small case of every kind,
    # the shifted (two-pass) and three-pass paths of plain attention included.
    gen = torch.Generator().manual_seed(0)
    batch, n_heads, n_lanes, n = 2, 2, 19, 23
    raw = torch.randn(batch, n_heads, n, n, generator=gen)
    bias = torch.zeros(batch, 1, n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo().min)
    rows = torch.ones(batch, n, dtype=torch.bool)
    rows[1, :3] = False
    left = torch.randn(batch, n_heads, n, 2, n_lanes, generator=gen)
    right = torch.randn(batch, n_heads, n, 2, n_lanes, generator=gen)
    scale = 1 + 0.1 * torch.randn(batch, n_heads, n, n_lanes, generator=gen)
    cases = ((None, 0.2, False), (None, 8.0, False), (3.0, 0.5, True), (None, 0.5, True), (None, 8.0, True))
    cases += ((None, None, True),)
    for softcap, removal, scales in cases:
        probs = torch.softmax((raw if softcap is None else softcap * torch.tanh(raw / softcap)) + bias, -1)
        removed = (left, right) if removal else (None, None)
        scales_ = (scale, scale.flip(-2)) if scales else (None, None)
        args = (raw, bias, probs, *removed, removal or 1.0, softcap, 1 << 20, *scales_, rows)
        expected = _exact_torch(*args)
        if not torch.allclose(_exact_native(function, *args), expected, rtol=1e-4, atol=1e-9):
            logger.warning("the native q/k kernel disagrees with the torch implementation; using torch")
            return None
    return function


def _pointer(x: torch.Tensor | None, offset: int = 0) -> int | None:
    return None if x is None else x.data_ptr() + 4 * offset


def _exact_native(
    kernel, raw, bias, probs, left, right, delta_scale, softcap, chunk_bytes, row_scale, column_scale, rows
):
    batch, n_heads, n = raw.shape[:3]
    n_lanes = _n_lanes(left, row_scale, column_scale)
    raw, bias, probs = raw.contiguous(), bias.contiguous(), probs.contiguous()
    left, right, row_scale, column_scale = (
        None if x is None else x.contiguous() for x in (left, right, row_scale, column_scale)
    )
    # [B, H, 2, L]: the largest |right| over the keys (a norm: no temporary of right's size)
    right_bound = None if right is None else torch.linalg.vector_norm(right, ord=float("inf"), dim=2)
    column_bound = None  # [B, H, 2, L]: largest and smallest column scale
    if column_scale is not None:
        column_bound = torch.stack([column_scale.amax(dim=2), column_scale.amin(dim=2)], dim=2)
    counted = rows.to(torch.uint8).contiguous()
    tiles = -(-n // _NATIVE_TILE)
    out = torch.empty(batch, n_heads, n_lanes)
    # per lane: one float per tile of query rows (the kernel's own workspace is n x 16 floats per thread)
    for lanes in _lane_chunks(n_lanes, 4 * batch * n_heads * tiles, chunk_bytes, multiple=_NATIVE_BLOCK):
        width = lanes.stop - lanes.start
        per_tile = torch.empty(batch, n_heads, tiles, width)
        failed = kernel(
            batch, n_heads, width, n, bias.shape[0], bias.shape[1], n_lanes,
            raw.data_ptr(), bias.data_ptr(), probs.data_ptr(), counted.data_ptr(),
            _pointer(left, lanes.start), _pointer(right, lanes.start), _pointer(right_bound, lanes.start),
            _pointer(row_scale, lanes.start), _pointer(column_scale, lanes.start), _pointer(column_bound, lanes.start),
            float(delta_scale), float(softcap or 0.0), per_tile.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError(f"the native q/k kernel could not allocate {4 * 17 * n} bytes per thread")
        out[..., lanes] = per_tile.sum(dim=2)
    return out


# ---- fast: the second-order expansion -----------------------------------------------------------------


def _second_order(raw, bias, probs, left, right, delta_scale, softcap, chunk_bytes, row_scale, column_scale, rows):
    batch, n_heads, n = raw.shape[:3]
    n_lanes = _n_lanes(left, row_scale, column_scale)
    p2 = probs.square()
    slope = None if softcap is None else 1 - torch.tanh(raw / softcap).square()  # g: the soft-cap's derivative
    weights = {"g": slope, "g raw": raw if slope is None else slope * raw}
    n_terms = 2 * (left is not None) + (row_scale is not None) + (column_scale is not None)
    n_slots = n_terms + n_terms * (n_terms + 1) // 2
    matrices: dict[tuple, torch.Tensor] = {}
    out = torch.zeros(batch, n_heads, n_lanes, device=raw.device)
    counted = rows[:, None, :, None]
    # per lane: float32 [B, H, n] columns: the row and column factors of every slot, and the products;
    # chunks as large as the inputs at least (matrix products need width to run fast)
    inputs = (raw, probs, left, right, row_scale, column_scale)
    budget = max(chunk_bytes, sum(x.numel() * x.element_size() for x in inputs if x is not None))
    for lanes in _lane_chunks(n_lanes, 3 * n_slots * 4 * batch * n_heads * n, budget):
        row_terms, column_terms, names = _change_terms(left, right, row_scale, column_scale, delta_scale, lanes)
        singles = [((name,), k, k) for k, name in enumerate(names)]  # terms come grouped by weight
        pairs = sorted(
            (tuple(sorted((names[i], names[j]))), i, j) for i in range(n_terms) for j in range(i, n_terms)
        )  # fmt: skip
        # slot k: term k (for mu and S1); slot K + p: the product of pair p's terms (for S2)
        shape = (batch, n_heads, n, n_slots, lanes.stop - lanes.start)
        row_factors = torch.empty(shape, device=raw.device)
        column_factors = torch.empty(shape, device=raw.device)
        for slot, (_, i, j) in enumerate(singles + pairs):
            if slot < n_terms:
                row_factors[..., slot, :] = row_terms[i]
                column_factors[..., slot, :] = column_terms[i]
            else:
                pair_row = row_terms[j] if i == j else 2 * row_terms[j]
                torch.mul(row_terms[i], pair_row, out=row_factors[..., slot, :])
                torch.mul(column_terms[i], column_terms[j], out=column_factors[..., slot, :])
        groups = [("mean", 1, w, k) for k, (w, _, _) in enumerate(singles)]
        groups += [("first", 2, w, k) for k, (w, _, _) in enumerate(singles)]
        groups += [("second", 2, w, n_terms + k) for k, (w, _, _) in enumerate(pairs)]
        sums = _grouped_products(groups, {1: probs, 2: p2}, weights, matrices, row_factors, column_factors)
        mu = sums["mean"]
        squares = sums["second"] - 2 * mu * sums["first"] + mu.square() * p2.sum(dim=-1, keepdim=True)  # (1)
        squares = torch.where(counted, squares.clamp(min=0), 0.0)  # >= 0 exactly; rounding may go below
        out[..., lanes] = squares.sum(dim=2)
    return out


def _change_terms(left, right, row_scale, column_scale, delta_scale, lanes):
    """The logit change as K separable terms: ``delta_ts = sum_k A_k[t] B_k[s] W_k[t, s]``.

    Returns the A_k and B_k as [B, H, n, l] tensors and the K weight names (see the module
    docstring), grouped by weight. The scale terms are ``(r - 1, 1, g raw)`` and
    ``(r, c - 1, g raw)``, whose sum is ``(r c - 1) g raw`` without a difference of
    nearly equal numbers.
    """
    row = None if row_scale is None else row_scale[..., lanes]
    column = None if column_scale is None else column_scale[..., lanes]
    rows, columns, names = [], [], []
    if row is not None:
        rows.append(row - 1)
        columns.append(torch.ones_like(rows[-1]))
        names.append("g raw")
    if column is not None:
        columns.append(column - 1)
        rows.append(torch.ones_like(columns[-1]) if row is None else row)
        names.append("g raw")
    if left is not None:
        for k in range(2):
            removed_row = left[..., k, lanes] * -delta_scale
            removed_column = right[..., k, lanes]
            rows.append(removed_row if row is None else removed_row * row)
            columns.append(removed_column if column is None else removed_column * column)
            names.append("g")
    return rows, columns, names


def _grouped_products(groups, powers, weights, matrices, row_factors, column_factors) -> dict[str, torch.Tensor]:
    """``{target: sum over its slots k of row_factors[..., k, :] o ((p^m o W) @ column_factors[..., k, :])}``.

    Factors are [B, H, n, slots, l]. ``groups`` lists (target, m, weight names, slot); consecutive
    slots with the same matrix p^m o prod W share one matrix product (built once per batch in ``matrices``).
    """
    totals: dict[str, torch.Tensor] = {}
    runs: list[list] = []  # [matrix key, first slot, end slot, [(target, slot), ...]]
    for target, power, names, slot in groups:
        key = (power, tuple(sorted(w for w in names if weights[w] is not None)))
        if runs and runs[-1][0] == key and runs[-1][2] == slot:
            runs[-1][2] = slot + 1
            runs[-1][3].append((target, slot))
        else:
            runs.append([key, slot, slot + 1, [(target, slot)]])
    for key, start, stop, members in runs:
        if key not in matrices:
            matrix = powers[key[0]]
            for name in key[1]:
                matrix = matrix * weights[name]
            matrices[key] = matrix
        part = column_factors[..., start:stop, :]
        columns = part.flatten(-2)
        product = torch.empty_like(columns)
        # causal: rows before t1 give no weight to keys from t1 on (p = 0 there)
        for t0, t1 in _row_blocks(columns.shape[-2]):
            product[..., t0:t1, :] = torch.matmul(matrices[key][..., t0:t1, :t1], columns[..., :t1, :])
        product = product.view(part.shape).mul_(row_factors[..., start:stop, :])
        for target in dict.fromkeys(target for target, _ in members):
            slots = [slot - start for t, slot in members if t == target]
            total = product[..., slots[0] : slots[-1] + 1, :].sum(dim=-2)
            totals[target] = total if target not in totals else totals[target] + total
    return totals
