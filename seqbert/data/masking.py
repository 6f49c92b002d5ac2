"""Dynamic masking for masked-language-model training, as a pure function of an explicit generator.

`mask_tokens` picks positions to predict and corrupts them (BERT: Devlin et al. 2019, §3.1 and App. A.1):
each maskable position is selected with probability `prob`; a selected position becomes [MASK] with
probability replace_probs[0], a uniformly random token with replace_probs[1], and stays unchanged with
replace_probs[2]. Its label is the original token; every other position is labelled IGNORE_INDEX, so the
loss sees only the selected positions. Special tokens and padding (`special_mask`) are never selected.

BERT4Rec (Sun et al. 2019) reuses it with [MASK]-only replacement, `replace_probs=(1.0, 0.0, 0.0)`, and the
Transformers4Rec guarantee that each sequence has at least one label (`min_masked=1`) but is never fully
masked (`keep_one_unmasked=True`): a sequence without labels teaches nothing, one without context teaches
nothing useful. Because every random draw comes from the generator passed in, a batch's masking is a pure
function of (input_ids, special_mask, generator state): reruns and resumed runs mask identically.

Shape legend: B batch, L length.
"""

from __future__ import annotations

import torch

# label value that contributes nothing to any loss (PyTorch cross_entropy's default); defined here, in the
# data layer that writes labels, so `data` never imports `model` (the heads import it from here)
IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    generator: torch.Generator,
    prob: float,
    vocab_size: int,
    mask_id: int,
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
    min_masked: int = 0,
    keep_one_unmasked: bool = False,
    random_low: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input_ids (B, L), labels (B, L)) without modifying `input_ids`.

    input_ids:      (B, L) long token ids.
    special_mask:   (B, L) bool, True where a position must never be selected ([CLS], [SEP], padding).
    generator:      the only source of randomness (a CPU generator; results move to input_ids.device).
    prob:           selection probability per maskable position, e.g. 0.15.
    vocab_size:     random replacements are drawn uniformly from [random_low, vocab_size).
    mask_id:        the [MASK] token id.
    replace_probs:  (p_mask, p_random, p_keep), summing to 1.
    min_masked:     each sequence gets at least min(min_masked, #maskable) selected positions; the extra
                    ones are the maskable positions with the smallest uniform draws, so the choice stays
                    consistent with the Bernoulli draw (they are the ones "closest" to being selected).
    keep_one_unmasked: a sequence with >= 2 maskable positions never has all of them selected (the one with
                    the largest draw is released). With a single maskable position `min_masked` wins.
    random_low:     lowest id a random replacement may take (e.g. skip special ids; BERT uses 0).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    if special_mask.shape != input_ids.shape or special_mask.dtype != torch.bool:
        raise ValueError(
            f"special_mask must be a bool tensor of shape {tuple(input_ids.shape)}, "
            f"got {special_mask.dtype} {tuple(special_mask.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}")
    if len(replace_probs) != 3 or min(replace_probs) < 0 or abs(sum(replace_probs) - 1.0) > 1e-6:
        raise ValueError(
            f"replace_probs must be three non-negative numbers summing to 1, got {replace_probs!r}"
        )
    if min_masked < 0:
        raise ValueError(f"min_masked must be >= 0, got {min_masked!r}")
    if not 0 <= random_low < vocab_size:
        raise ValueError(f"random_low must be in [0, vocab_size={vocab_size}), got {random_low!r}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, vocab_size={vocab_size}), got {mask_id!r}")

    device = input_ids.device
    B, L = input_ids.shape
    gen_device = generator.device
    # draw everything up front, in a fixed order, so the result depends only on the generator state
    select_u = torch.rand(B, L, generator=generator, device=gen_device).to(device)  # (B, L)
    replace_u = torch.rand(B, L, generator=generator, device=gen_device).to(device)  # (B, L)
    random_ids = torch.randint(random_low, vocab_size, (B, L), generator=generator, device=gen_device).to(
        device
    )

    maskable = ~special_mask  # (B, L)
    selected = (select_u < prob) & maskable  # (B, L)
    if min_masked > 0 or keep_one_unmasked:
        # rank maskable positions by their draw (specials sort last): rank 0 = smallest draw
        keyed = select_u.masked_fill(special_mask, 2.0)  # (B, L)
        rank = keyed.argsort(dim=1).argsort(dim=1)  # (B, L)
        n_maskable = maskable.sum(dim=1, keepdim=True)  # (B, 1)
        if min_masked > 0:
            selected |= maskable & (rank < min_masked)
        if keep_one_unmasked:
            all_selected = (selected.sum(dim=1, keepdim=True) == n_maskable) & (n_maskable >= 2)  # (B, 1)
            floor = max(min_masked, 1)
            # release the largest draw, unless that would break min_masked (only when n_maskable <= floor)
            release = all_selected & (rank == n_maskable - 1) & (n_maskable > floor)  # (B, L)
            selected &= ~release

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (B, L)
    p_mask, p_random, _ = replace_probs
    to_mask = selected & (replace_u < p_mask)  # (B, L)
    to_random = selected & (replace_u >= p_mask) & (replace_u < p_mask + p_random)  # (B, L)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)  # (B, L)
    masked = torch.where(to_random, random_ids, masked)  # (B, L)
    return masked, labels


def special_token_mask(input_ids: torch.Tensor, special_ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """(B, L) bool: True where input_ids is one of `special_ids` (padding included when listed)."""
    ids = torch.tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids)
