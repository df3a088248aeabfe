"""Preference pairs as token rows, batches and log-probabilities (used by tasks/dpo.py).

A pair is one row, prompt + chosen + rejected, with position ids and a 4-D attention mask that let the
rejected reply see the prompt but not the chosen one: the prompt's forward pass is shared by both sides
(`probe_shared_layout` checks it against two separate rows at setup). The LM head and the log-softmax run
only at the scored positions. The reference model's log-probabilities are computed once and cached on disk
under the model's and the data's fingerprint (`attach_reference`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..data.preference import Pair
from ..errors import LmforgeError
from ..fs import atomic_write, cache_slot
from ..models.lora import adapters_disabled
from ..runtime import to_device
from .chat_template import assistant_spans, end_of_turn
from .lm_loss import CausalLMLoss

log = logging.getLogger("lmforge")

PAD_BRANCH = 3  # branch ids of a row's tokens: 0 shared prompt, 1 chosen side, 2 rejected side, 3 padding


# ----------------------------------------------------------------------------------- encoding
@dataclass
class EncodedPairs:
    rows: list[dict] = field(default_factory=list)
    methods: set = field(default_factory=set)
    total: int = 0
    identical: int = 0  # dropped: chosen and rejected are the same tokens
    cut_away: int = 0  # dropped: a side's scored tokens were all beyond the length limit
    prompts_truncated: int = 0
    replies_truncated: int = 0
    unshared: int = 0  # the template renders the prompt differently before the two replies


@dataclass
class Side:
    """One side of a pair: the prompt's ids, the reply's ids, which reply tokens are scored, the mask method."""
    prompt: list[int]
    reply: list[int]
    scored: list[bool]
    method: str


def _side(tokenizer, pair: Pair, reply: list[dict], eot: str) -> Optional[Side]:
    """One side of a pair, or None when the template leaves no assistant span."""
    full, spans, method = assistant_spans(tokenizer, pair.prompt + reply, "assistant", eot, from_turn=len(pair.prompt))
    if not spans:
        return None
    cut, end = spans[0][0], spans[-1][1]
    prompt_ids = tokenizer(full[:cut], add_special_tokens=False)["input_ids"]
    enc = tokenizer(full[cut:end], add_special_tokens=False, return_offsets_mapping=True)
    scored = [b > a and any(s - cut <= a < e - cut for s, e in spans) for a, b in enc["offset_mapping"]]
    return Side(list(prompt_ids), list(enc["input_ids"]), scored, method)


def encode_pairs(pairs: list[Pair], tokenizer, max_prompt: int, max_length: int) -> EncodedPairs:
    """Rows {prompt, chosen, rejected (ids), chosen_scored, rejected_scored[, prompt_rejected]}, truncated:
    the prompt keeps its last `max_prompt` tokens, each side's prompt + reply at most `max_length`."""
    out = EncodedPairs(total=len(pairs))
    eot = end_of_turn(tokenizer)
    for pair in pairs:
        sides = [_side(tokenizer, pair, reply, eot) for reply in (pair.chosen, pair.rejected)]
        if sides[0] is None or sides[1] is None:
            out.cut_away += 1
            continue
        row, cut = {}, False
        for name, side in zip(("chosen", "rejected"), sides):
            p, ids, scored = side.prompt, side.reply, side.scored
            out.methods.add(side.method)
            if len(p) > max_prompt:
                p, cut = p[-max_prompt:], True
            room = max(0, max_length - len(p))
            if len(ids) > room:
                ids, scored = ids[:room], scored[:room]
                out.replies_truncated += 1
            if not p:  # nothing before the reply: its first token has no position to be predicted from
                scored = [False] + scored[1:]
            row["prompt" if name == "chosen" else "prompt_rejected"] = p
            row[name], row[name + "_scored"] = ids, scored
        out.prompts_truncated += cut
        if not any(row["chosen_scored"]) or not any(row["rejected_scored"]):
            out.cut_away += 1
            continue
        if row["chosen"] == row["rejected"] and row["prompt"] == row["prompt_rejected"]:
            out.identical += 1
            continue
        if row["prompt_rejected"] == row["prompt"]:
            del row["prompt_rejected"]
        else:
            out.unshared += 1
        out.rows.append(row)
    return out


def row_length(row: dict, layout: str) -> int:
    """Tokens of a pair's forward pass: prompt once when shared, twice otherwise."""
    p = len(row["prompt"])
    pr = len(row.get("prompt_rejected", row["prompt"]))
    if layout == "shared" and "prompt_rejected" not in row:
        return p + len(row["chosen"]) + len(row["rejected"])
    return p + pr + len(row["chosen"]) + len(row["rejected"])


def check_usable(enc: EncodedPairs, source: str) -> None:
    if enc.rows:
        return
    raise LmforgeError(f"{source}: none of the {enc.total} pairs is usable ({enc.identical} have identical chosen "
                       f"and rejected replies, {enc.cut_away} have no scored reply token within the length limit)",
                       "give pairs whose chosen and rejected replies differ; raise data.block_size if they were cut")


# ----------------------------------------------------------------------------------- batches
def make_collate(pad_id: int, layout: str, mask_dtype=torch.float32):
    """Batch of pairs. layout 'shared': a row per pair (prompt, chosen, rejected; the rejected side sees the
    prompt but not the chosen reply: 4-D mask 'mask4d' and position ids); 'rows': two padded rows per pair.

    score_src (flat positions whose hidden state predicts a scored token), score_tgt (the token),
    score_seq (2 * pair + side) say where the log-probabilities are taken; 'labels' marks the scored
    tokens for the doctor's view."""
    def collate(rows: list[dict]) -> dict:
        seqs, branches, positions, src, at, tgt, seq_of = [], [], [], [], [], [], []
        for b, row in enumerate(rows):
            for ids, branch, pos, scored_at in _row_pieces(row, layout):
                seqs.append(ids), branches.append(branch), positions.append(pos)
                for index, token, side, source in scored_at:
                    r = len(seqs) - 1
                    src.append((r, source)), at.append((r, index)), tgt.append(token), seq_of.append(2 * b + side)
        width = max(len(s) for s in seqs)
        n = len(seqs)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        pos_t = torch.zeros((n, width), dtype=torch.long)
        br = torch.full((n, width), PAD_BRANCH, dtype=torch.long)
        for i, (ids, branch, pos) in enumerate(zip(seqs, branches, positions)):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            pos_t[i, :len(ids)] = torch.tensor(pos)
            br[i, :len(ids)] = torch.tensor(branch)
        real = br != PAD_BRANCH
        flat_src = torch.tensor([r * width + c for r, c in src], dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for (r, c), t in zip(at, tgt):
            labels[r, c] = t
        batch = {"input_ids": input_ids, "position_ids": pos_t, "score_src": flat_src,
                 "score_tgt": torch.tensor(tgt, dtype=torch.long), "score_seq": torch.tensor(seq_of, dtype=torch.long),
                 "n_items": len(rows), "n_tokens": int(real.sum()), "labels": labels}
        if layout == "shared":
            batch["mask4d"] = branch_mask(br, mask_dtype)
        else:
            batch["attention_mask"] = real.long()
        if all("ref" in row for row in rows):
            batch["ref"] = torch.tensor([row["ref"] for row in rows], dtype=torch.float64)
        return batch
    return collate


def _row_pieces(row: dict, layout: str):
    """[(ids, branch ids, position ids, [(index, token, side, source index)])] of one pair: one row
    (shared layout) or two."""
    p = row["prompt"]
    pr = row.get("prompt_rejected", p)
    c, r = row["chosen"], row["rejected"]
    cs, rs = row["chosen_scored"], row["rejected_scored"]
    if layout == "rows":
        out = []
        for side, (pp, reply, scored) in enumerate(((p, c, cs), (pr, r, rs))):
            ids = pp + reply
            at = [(len(pp) + k, t, side, len(pp) + k - 1) for k, (t, s) in enumerate(zip(reply, scored)) if s]
            out.append((ids, [side + 1] * len(ids), list(range(len(ids))), at))
        return out
    if "prompt_rejected" not in row:  # prompt, chosen, rejected; the rejected reply continues from the prompt
        ids = p + c + r
        branch = [0] * len(p) + [1] * len(c) + [2] * len(r)
        pos = list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(r)))
        at = [(len(p) + k, t, 0, len(p) + k - 1) for k, (t, s) in enumerate(zip(c, cs)) if s]
        start = len(p) + len(c)
        at += [(start + k, t, 1, (start + k - 1) if k else len(p) - 1) for k, (t, s) in enumerate(zip(r, rs)) if s]
        return [(ids, branch, pos, at)]
    # the template rendered the prompt differently before the two replies: two sequences in one row
    ids = p + c + pr + r
    branch = [1] * (len(p) + len(c)) + [2] * (len(pr) + len(r))
    pos = list(range(len(p) + len(c))) + list(range(len(pr) + len(r)))
    at = [(len(p) + k, t, 0, len(p) + k - 1) for k, (t, s) in enumerate(zip(c, cs)) if s]
    start = len(p) + len(c) + len(pr)
    at += [(start + k, t, 1, start + k - 1) for k, (t, s) in enumerate(zip(r, rs)) if s]
    return [(ids, branch, pos, at)]


def branch_mask(branch: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: causal, and a token sees the shared prompt and its own side only."""
    L = branch.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    same = (branch[:, :, None] == branch[:, None, :]) | (branch[:, None, :] == 0)
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


# ----------------------------------------------------------------------------------- log-probabilities
# fp32 logits values at once when scoring (the head runs at scored positions only): 64M = 256 MB
SCORE_BUDGET = 64 * 2**20


def _hidden(model, batch: dict) -> tuple[torch.Tensor, torch.nn.Module]:
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "mask4d" in batch:
        inputs["attention_mask"] = batch["mask4d"].to(next(model.parameters()).dtype) \
            if batch["mask4d"].dtype != next(model.parameters()).dtype and \
            next(model.parameters()).dtype.is_floating_point else batch["mask4d"]
    elif "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return CausalLMLoss().hidden_and_head(model, inputs)


def _token_logps(h: torch.Tensor, head: torch.nn.Module, tgt: torch.Tensor) -> torch.Tensor:
    w = head.weight
    logits = h.float() @ w.float().t()
    if head.bias is not None:
        logits = logits + head.bias.float()
    return logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, scored token counts) of each side, shape (pairs, 2): chosen, rejected."""
    hidden, head = _hidden(model, batch)
    h = hidden.reshape(-1, hidden.shape[-1])[batch["score_src"]]
    tgt, seq = batch["score_tgt"], batch["score_seq"]
    rows = max(1, SCORE_BUDGET // head.weight.shape[0])
    if len(tgt) <= rows or not torch.is_grad_enabled():
        lp = torch.cat([_token_logps(h[s:s + rows], head, tgt[s:s + rows]) for s in range(0, len(tgt), rows)])
    else:  # many scored tokens: recompute each chunk's logits in the backward pass instead of keeping them
        from torch.utils.checkpoint import checkpoint
        lp = torch.cat([checkpoint(_token_logps, h[s:s + rows], head, tgt[s:s + rows], use_reentrant=False)
                        for s in range(0, len(tgt), rows)])
    pairs = int(batch["n_items"])
    sums = torch.zeros(2 * pairs, dtype=torch.float32, device=h.device).index_add(0, seq, lp)
    counts = torch.zeros(2 * pairs, dtype=torch.long, device=h.device).index_add(0, seq, torch.ones_like(seq))
    return sums.view(pairs, 2), counts.view(pairs, 2)


@torch.no_grad()
def reference_logps(model, batch: dict, reference) -> torch.Tensor:
    """Reference log-probs of a batch: the frozen copy, or (reference == 'adapter') the LoRA model with its
    adapter disabled."""
    if reference == "adapter":
        with adapters_disabled(getattr(model, "module", model)) as n:
            if not n:
                raise LmforgeError("internal: dpo.reference 'adapter' on a model without LoRA layers")
            return sequence_logps(model, batch)[0]
    return sequence_logps(reference, batch)[0]



# ----------------------------------------------------------------------------------- reference cache
def model_fingerprint(model) -> str:
    """A cheap fingerprint of the weights (names, shapes, sums), computed where they are."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            t = p.detach()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if t.is_floating_point() and t.numel():
                flat = t.reshape(-1)
                h.update(f"{float(flat.double().sum()):.10e}{float(flat[::97].double().abs().sum()):.10e}".encode())
    return h.hexdigest()[:24]


def data_fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        for k in ("prompt", "prompt_rejected", "chosen", "rejected", "chosen_scored", "rejected_scored"):
            if k in row:
                h.update(k.encode() + bytes(str(row[k]), "utf-8"))
    return h.hexdigest()[:24]


@torch.no_grad()
def attach_reference(model, rows: list[dict], collate, batch_size: int, key_extra: str = "") -> tuple[float, bool]:
    """Put each row's reference log-probs ('ref': [chosen, rejected]) in place, from the cache or one pass
    of `model` (eval mode); returns (seconds, from_cache)."""
    t = time.perf_counter()
    key = hashlib.sha256(f"{model_fingerprint(model)}|{data_fingerprint(rows)}|{key_extra}".encode()).hexdigest()[:32]
    with cache_slot("reference-logps", f"{key}.pt", lambda p: p.exists()) as slot:
        if slot.hit:
            try:
                values = torch.load(slot.path, weights_only=True)
                if values.shape == (len(rows), 2):
                    for row, v in zip(rows, values.tolist()):
                        row["ref"] = v
                    return time.perf_counter() - t, True
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                pass
            slot.miss()
        values = _reference_pass(model, rows, collate, batch_size, t)
        atomic_write(slot.path, lambda tmp: torch.save(values, tmp))
    for row, v in zip(rows, values.tolist()):
        row["ref"] = v
    return time.perf_counter() - t, False


def _reference_pass(model, rows: list[dict], collate, batch_size: int, t: float) -> torch.Tensor:
    """[pairs, 2] summed log-probs of each pair's replies under `model` (eval mode, longest first)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    values = torch.zeros(len(rows), 2, dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: -row_length(rows[i], "rows"))
    log.info("reference log-probs: scoring %s pairs with the starting model (one pass, before training)", f"{len(rows):,}")
    last = time.perf_counter()
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate([rows[i] for i in idx])
            batch = to_device(batch, dev)
            values[idx] = sequence_logps(model, batch)[0].double().cpu()
            if time.perf_counter() - last > 10 and s + batch_size < len(order):  # a line every 10 s
                last = time.perf_counter()
                done = s + len(idx)
                log.info("reference log-probs: %d/%d pairs (%.0f s, about %.0f s left)", done, len(rows),
                         last - t, (last - t) * (len(rows) - done) / done)
    finally:
        model.train(was)
    return values


# ----------------------------------------------------------------------------------- probe
@torch.no_grad()
def probe_shared_layout(model, pad_id: int) -> bool:
    """True when a pair scored in one row with the shared prompt gives the log-probs of two separate rows."""
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (6, 4, 5)]
    row = {"prompt": ids[0], "chosen": ids[1], "rejected": ids[2], "chosen_scored": [True] * 4,
           "rejected_scored": [True] * 5}
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was = model.training
    model.eval()
    try:
        got = {}
        for layout in ("rows", "shared"):
            batch = make_collate(pad_id, layout, dtype if dtype.is_floating_point else torch.float32)([row, row])
            batch = to_device(batch, dev)
            got[layout] = sequence_logps(model, batch)[0]
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        return bool(torch.allclose(got["rows"], got["shared"], atol=tol, rtol=tol))
    except Exception:  # noqa: BLE001 - a model that refuses a 4-D mask: score each side in its own row
        return False
    finally:
        model.train(was)



def pair_preview(tokenizer, row: dict, limit: int = 300) -> list[list]:
    """[text, scored] runs of one pair: the prompt, the chosen reply, then the rejected one (the report
    highlights the scored tokens)."""
    def runs(toks, flags):
        out: list[list] = []
        for tok, on in zip(toks, flags):
            if out and out[-1][1] == on:
                out[-1][0].append(tok)
            else:
                out.append([[tok], on])
        return [[tokenizer.decode(t, skip_special_tokens=False), on] for t, on in out]
    prompt = row["prompt"][-limit:]
    out = runs(prompt, [False] * len(prompt)) + runs(row["chosen"][:limit], row["chosen_scored"])
    out.append(["\n[the rejected reply, after the same prompt:]\n", False])
    return out + runs(row["rejected"][:limit], row["rejected_scored"])


def describe_encoding(enc: EncodedPairs, max_prompt: int, max_len: int) -> list[str]:
    out = [f"dpo: {len(enc.rows)} pairs (mask by {', '.join(sorted(enc.methods))})"]
    if enc.prompts_truncated:
        out.append(f"{enc.prompts_truncated} prompts ({100 * enc.prompts_truncated / max(1, enc.total):.1f}%) were cut "
                   f"to their last {max_prompt} tokens (dpo.max_prompt_length)")
    if enc.replies_truncated:
        out.append(f"{enc.replies_truncated} replies ({100 * enc.replies_truncated / max(1, 2 * enc.total):.1f}%) were "
                   f"cut at {max_len} tokens with their prompt (data.block_size)")
    if enc.identical or enc.cut_away:
        out.append(f"dropped {enc.identical} pairs whose chosen and rejected replies are identical and "
                   f"{enc.cut_away} with no scored reply token within the length limit")
    if enc.unshared:
        out.append(f"{enc.unshared} pairs: the chat template renders the prompt differently before the two replies; "
                   "each side keeps its own prompt")
    return out


