"""Masked-diffusion perplexity: a Monte-Carlo estimate of the negative ELBO per token.

For a sequence x of length L, draw t ~ U(eps, 1), mask every token independently with
probability t and score  (1/t) · Σ_masked −log p(x_i | x_masked).  Its expectation is the
negative ELBO, an upper bound on −log p(x) (LLaDA eq. 3), so the reported perplexity is an
upper bound too. Given t, each token is masked with probability t, so dividing by t makes the
estimate an unbiased estimate of Σ_i CE_i for a denoiser whose predictions do not depend on
the context — the closed form the tests check against.

Low variance (`stratified=True`, default): the n_mc draws of one sequence take one t from each
of n_mc equal slices of [eps, 1] (t_j = eps + (1−eps)(j + u_j)/n_mc); every t_j is still
U(eps, 1) marginally, so the mean is unchanged. The reported standard error treats the draws as
independent, which for stratified draws over-states it slightly (conservative).

Logit-shift (Dream) models: the first token of each chunk has no predictor, so it is always
kept as context and not scored."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..errors import QpassError
from ..sampling.common import (check_length, decode_text, denoise, encode_text, model_device,
                               special_ids, step_progress)


@dataclass
class EvalResult:
    nll_per_token: float          # nats, negative-ELBO estimate
    bits_per_token: float
    bits_per_byte: float | None   # None when bytes are unknown (ids without a tokenizer)
    ppl: float
    stderr: float                 # standard error of nll_per_token (nats)
    n_tokens: int                 # tokens scored (each counted once, not once per draw)
    n_sequences: int = 0
    n_mc: int = 0
    # per chunk, in scoring order: its estimated bits (mean over its draws of loss/t, in bits)
    # and its scored tokens; Σ chunk_bits / Σ chunk_tokens == bits_per_token. These are the
    # per-item records a paired test between two models scored on the same chunks needs.
    chunk_bits: list = field(default_factory=list, repr=False)
    chunk_tokens: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_byte_level(tokenizer) -> bool:
    from ..models import ByteTokenizer
    return isinstance(tokenizer, ByteTokenizer)


def _documents(texts_or_ids, tokenizer) -> list[torch.Tensor]:
    """Token ids per document."""
    items = texts_or_ids
    if isinstance(items, (str, torch.Tensor)):
        items = [items] if isinstance(items, str) or items.dim() == 1 else list(items)
    items = list(items)
    if not items:
        raise QpassError("elbo_ppl got no texts or token ids")
    if isinstance(items[0], str):
        if tokenizer is None:
            raise QpassError("texts need a tokenizer: pass tokenizer= (the model has none)")
        return [torch.tensor(encode_text(tokenizer, t), dtype=torch.long) for t in items]
    if isinstance(items[0], int):
        items = [items]
    return [torch.as_tensor(d, dtype=torch.long).reshape(-1) for d in items]


def chunk_documents(docs: list[torch.Tensor], seq_len: int, min_len: int,
                    max_tokens: int | None) -> list[torch.Tensor]:
    """Split each document into seq_len pieces (no context across documents); stop after
    max_tokens tokens in all; drop pieces shorter than min_len."""
    chunks, total = [], 0
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start:start + seq_len]
            if max_tokens is not None:
                piece = piece[:max(0, max_tokens - total)]
            if len(piece) >= min_len:
                chunks.append(piece)
                total += len(piece)
            if max_tokens is not None and total >= max_tokens:
                return chunks
    return chunks


def draw_masks(length: int, n_mc: int, eps: float, keep: int, gen: torch.Generator,
               stratified: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(t (n_mc,), masked (n_mc, length) bool); the first `keep` positions are never masked."""
    u = torch.rand(n_mc, generator=gen, dtype=torch.float64)
    frac = (torch.arange(n_mc, dtype=torch.float64) + u) / n_mc if stratified else u
    t = eps + (1 - eps) * frac
    masked = torch.rand(n_mc, length, generator=gen, dtype=torch.float64) < t[:, None]
    masked[:, :keep] = False
    return t, masked


@torch.no_grad()
def elbo_ppl(model, texts_or_ids, *, tokenizer=None, seq_len: int = 256, n_mc: int = 8,
             batch_size: int = 8, seed: int = 0, eps: float = 1e-3,
             max_tokens: int | None = None, mask_id: int | None = None,
             stratified: bool = True, progress: bool | None = False) -> EvalResult:
    """Negative-ELBO perplexity of `model` on texts (str or list of str, tokenized with
    `tokenizer` or model.tokenizer) or token ids (1-D/2-D tensor or list of 1-D sequences).

    Each document is cut into seq_len chunks, each chunk scored with n_mc masking draws,
    batch_size rows per forward. Draws come from a CPU generator seeded with `seed`, made
    before any forward pass, so the result does not depend on batch_size or device."""
    if seq_len < 2 or n_mc < 1 or batch_size < 1:
        raise QpassError("seq_len must be >= 2, n_mc and batch_size >= 1")
    if not 0 < eps < 1:
        raise QpassError(f"eps must be in (0, 1), got {eps}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    mask = special_ids(model, mask_id=mask_id).mask
    keep = 1 if getattr(getattr(model, "config", None), "logit_shift", False) else 0
    docs = _documents(texts_or_ids, tokenizer)
    check_length(model, seq_len)
    chunks = chunk_documents(docs, seq_len, keep + 1, max_tokens)
    if not chunks:
        raise QpassError(f"nothing to score: the input has fewer than {keep + 1} tokens")

    gen = torch.Generator().manual_seed(int(seed))
    rows = []  # (chunk index, t, masked) in a fixed order
    for c, chunk in enumerate(chunks):
        t, masked = draw_masks(len(chunk), n_mc, eps, keep, gen, stratified)
        rows += [(c, float(t[j]), masked[j]) for j in range(n_mc)]

    device = model_device(model)
    losses = torch.zeros(len(rows), dtype=torch.float64)
    # Rows of equal length share a batch (documents' last chunks may be shorter).
    by_len: dict[int, list[int]] = {}
    for r, (c, _, _) in enumerate(rows):
        by_len.setdefault(len(chunks[c]), []).append(r)
    batches = [idx[i:i + batch_size] for idx in by_len.values() for i in range(0, len(idx), batch_size)]
    with step_progress(len(batches), progress, "elbo", "batches") as advance:
        for batch in batches:
            clean = torch.stack([chunks[rows[r][0]] for r in batch]).to(device)
            masked = torch.stack([rows[r][2] for r in batch]).to(device)
            t = torch.tensor([rows[r][1] for r in batch], dtype=torch.float64)
            logits = denoise(model, clean.masked_fill(masked, mask), None)
            ce = F.cross_entropy(logits[masked].float(), clean[masked], reduction="none")
            per_row = torch.zeros(len(batch), dtype=torch.float64, device=device)
            per_row.index_add_(0, masked.nonzero()[:, 0], ce.double())
            losses[batch] = per_row.cpu() / t
            advance()

    lengths = torch.tensor([len(chunks[c]) - keep for c, _, _ in rows], dtype=torch.float64)
    nll = float(losses.sum() / lengths.sum())
    # Ratio-estimator standard error of Σ loss / Σ tokens over the n rows.
    n = len(rows)
    resid = losses - nll * lengths
    stderr = float(math.sqrt((resid ** 2).sum() * n / max(n - 1, 1)) / lengths.sum()) if n > 1 \
        else float("nan")
    n_tokens = int(sum(len(ch) - keep for ch in chunks))
    bits = nll / math.log(2)
    per_chunk = torch.zeros(len(chunks), dtype=torch.float64)
    per_chunk.index_add_(0, torch.tensor([c for c, _, _ in rows]), losses)
    return EvalResult(nll_per_token=nll, bits_per_token=bits,
                      bits_per_byte=_bits_per_byte(bits, n_tokens, chunks, keep, tokenizer),
                      ppl=math.exp(nll), stderr=stderr, n_tokens=n_tokens,
                      n_sequences=len(chunks), n_mc=n_mc,
                      chunk_bits=(per_chunk / n_mc / math.log(2)).tolist(),
                      chunk_tokens=[len(ch) - keep for ch in chunks])


def _bits_per_byte(bits_per_token, n_tokens, chunks, keep, tokenizer):
    if tokenizer is not None and _is_byte_level(tokenizer):
        return bits_per_token  # one token per byte
    if tokenizer is None:
        return None
    # Bytes of the scored text, by decoding the scored tokens (exact up to merges at chunk
    # edges). Token ids without a tokenizer have no byte count.
    n_bytes = 0
    for ch in chunks:
        n_bytes += len(decode_text(tokenizer, ch[keep:]).encode("utf-8"))
    return bits_per_token * n_tokens / n_bytes if n_bytes else None
