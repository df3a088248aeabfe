"""Render a conversation with the model's chat template and mark the tokens the model should learn to say.

The mask never relies on `{% generation %}` tags (most templates have none, and then the peers' assistant
masks are silently all zero). It is derived by rendering the conversation prefix by prefix: the text an
assistant turn adds is `render(messages[:i+1])` minus `render(messages[:i], add_generation_prompt=True)`,
which is its content and its end-of-turn token. That holds when the template is prefix-stable (each
shorter rendering is a prefix of the longer one), which is checked on every conversation. When it is
not (a template that renders the last turn differently, say), the fallback finds each assistant
content in the full rendering, in order, and extends it to the end-of-turn text the template writes
after a probe reply; the method used is reported.

Trained characters are mapped to tokens through the fast tokenizer's offsets: a token is trained when
it starts inside a trained span. Whitespace after the end-of-turn token (ChatML's newline) is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import LmforgeError

# The default template for a model without one (said once in the log, saved with the tokenizer).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
PROBE_REPLY = "lmforge-probe-reply"


@dataclass
class Rendered:
    ids: list[int]
    trained: list[bool]  # one per token: a loss is taken on it
    method: str  # "prefix" or "search"


def ensure_chat_template(tokenizer) -> Optional[str]:
    """Give a tokenizer without a chat template ChatML (adding its two tokens); returns the note to log once."""
    if getattr(tokenizer, "chat_template", None):
        return None
    missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHATML
    return ("the tokenizer has no chat template: using ChatML (<|im_start|>role ... <|im_end|>), saved with the "
            "tokenizer" + (f"; added the tokens {', '.join(missing)} (the embeddings grow to match)" if missing else ""))


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # noqa: BLE001 - the template's own code (jinja raise_exception): one line
        roles = ", ".join(dict.fromkeys(m["role"] for m in messages))
        raise LmforgeError(f"the model's chat template refused a conversation with roles {roles}: "
                           f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}",
                           "change the data to what the template accepts (some templates take no system turn), "
                           "or give the tokenizer another chat template") from None


def stop_at_end_of_turn(tokenizer, model) -> Optional[str]:
    """Make generation stop at the template's end-of-turn token (ChatML's <|im_end|>, Llama 3's <|eot_id|>) as well
    as at EOS: the generation config (saved with the model, read by chat, serve and generate) gets its id. Returns
    the note to log once, or a warning text when the template writes no end-of-turn marker at all."""
    eot = end_of_turn(tokenizer)
    if not eot:
        return ("warning: the chat template writes no end-of-turn marker after a reply, so a model trained on it "
                "cannot learn where a reply ends (it will run to max_new_tokens); use a template that closes each "
                "turn with a special token")
    ids = tokenizer(eot.strip(), add_special_tokens=False)["input_ids"]
    gc = getattr(model, "generation_config", None)
    if gc is None or len(ids) != 1:
        return None
    current = gc.eos_token_id if isinstance(gc.eos_token_id, list) else \
        ([gc.eos_token_id] if gc.eos_token_id is not None else [])
    if ids[0] in current:
        return None
    gc.eos_token_id = current + ids
    return f"generation stops at the end-of-turn token {eot.strip()!r} (id {ids[0]}) as well as at EOS"


def end_of_turn(tokenizer) -> str:
    """The end-of-turn text the template writes after an assistant's content: up to and including the first
    special token that follows it (ChatML's <|im_end|>, Llama 3's <|eot_id|>, an EOS); "" when none does."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE_REPLY},
             {"role": "user", "content": "hi"}]
    text = _render(tokenizer, probe)
    tail = text[text.index(PROBE_REPLY) + len(PROBE_REPLY):]
    specials = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    found = [(tail.find(t), t) for t in specials if t and tail.find(t) >= 0]
    if not found:
        return ""
    at, token = min(found, key=lambda x: (x[0], -len(x[1])))
    return tail[:at + len(token)] if not tail[:at].strip() else ""


def assistant_spans(tokenizer, messages: list[dict], train_on: str,
                    eot: Optional[str] = None, from_turn: int = 0) -> tuple[str, list[tuple[int, int]], str]:
    """(full rendering, character spans to train on, method); `eot`: end_of_turn(tokenizer), if known;
    `from_turn`: only assistant turns from this message index on (preference pairs: after the prompt)."""
    full = _render(tokenizer, messages)
    if train_on == "all":
        return full, [(0, len(full))], "all"
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= from_turn]
    if train_on == "last":
        turns = turns[-1:]
    eot = end_of_turn(tokenizer) if eot is None else eot
    spans = _prefix_spans(tokenizer, messages, turns, full, eot)
    if spans is not None:
        return full, spans, "prefix"
    return full, _search_spans(messages, turns, full, eot), "search"


def _prefix_spans(tokenizer, messages, turns, full, eot: str) -> Optional[list[tuple[int, int]]]:
    spans = []
    for i in turns:
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[:i + 1])
        if not (full.startswith(through) and through.startswith(before)):
            return None  # not prefix-stable
        added = through[len(before):].rstrip()
        if eot and not added.endswith(eot) and full[len(before):].startswith(added + eot):
            return None  # the turn is rendered without its end marker when it is last: not prefix-stable
        spans.append((len(before), len(before) + len(added)))
    return spans


def _search_spans(messages, turns, full, eot: str) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    wanted = set(turns)
    for i, m in enumerate(messages):
        at = full.find(m["content"], cursor) if m["content"] else cursor
        if at < 0:
            raise LmforgeError("the chat template does not render message contents verbatim, so the trained "
                               "tokens cannot be found", "use a template that writes each message's content as is")
        end = at + len(m["content"])
        if eot and full.startswith(eot, end):
            end += len(eot)
        if i in wanted:
            spans.append((at, end))
        cursor = end
    return spans


def render_with_mask(tokenizer, messages: list[dict], train_on: str = "assistant",
                     eot: Optional[str] = None) -> Rendered:
    """Token ids of the rendered conversation and which of them are trained."""
    full, spans, method = assistant_spans(tokenizer, messages, train_on, eot)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # a token is trained when any of its characters is in a span: a token that straddles the template and the
    # reply (the template's newline merged with a reply that starts with whitespace or indentation) is trained,
    # as transformers' return_assistant_tokens_mask and TRL do
    trained = [end > start and any(start < e and end > s for s, e in spans) for start, end in offsets]
    return Rendered(list(ids), trained, method)
