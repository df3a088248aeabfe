"""Score texts or conversations with a reward model (`lmforge score`, /v1/score, the api).

    lmforge score runs/reward-smollm2-kjv-to-web "a plain text"
    lmforge score runs/reward-smollm2-kjv-to-web --input replies.jsonl --output scored.jsonl

An input file's rows are conversations (a `messages` column), or a prompt with its reply (`prompt` + `completion`
| `response` | `chosen`: rendered as a user turn and an assistant turn), or plain texts (a text column, or a .txt
file, one per line). Conversations are rendered with the reward model's own chat template; plain texts are scored
as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..data import sources
from ..data.chat import messages_of
from ..errors import LmforgeError
from ..fs import check_output_file, write_jsonl
from ..runtime import inference_device
from ..tasks.reward import conversation, load_scorer
from .inputs import PLAIN_TEXT_SUFFIXES, read_ids, read_texts, with_ids

REPLY_NAMES = ("completion", "response", "chosen", "answer", "output")


def read_items(path: str) -> list:
    """The texts or conversations of an input file (see the module's docstring)."""
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"input file not found: {path}", "check the path")
    if p.suffix.lower() in PLAIN_TEXT_SUFFIXES:
        return read_texts(path)[0]
    df = sources.read_table(str(p))
    lower = {str(c).lower(): c for c in df.columns}
    hint = "a messages column, prompt + completion columns, or a text column"
    if "messages" in lower:
        return [messages_of(v, f"{path} row {i + 1}", "messages", hint) for i, v in enumerate(df[lower["messages"]])]
    reply = next((lower[n] for n in REPLY_NAMES if n in lower), None)
    if "prompt" in lower and reply is not None:
        out = []
        for i, (p_, r) in enumerate(zip(df[lower["prompt"]], df[reply])):
            where = f"{path} row {i + 1}"
            prompt = messages_of(p_, where, "prompt", hint) if not isinstance(p_, str) or p_.strip().startswith("[{") \
                else p_
            out.append(conversation(prompt, r if isinstance(r, str) else messages_of(r, where, str(reply), hint)))
        return out
    return read_texts(path)[0]


def score(model_dir: Path, texts: Optional[Sequence] = None, input_file: Optional[str] = None,
          output: Optional[str] = None, batch_size: int = 16, allow_untrained: bool = False) -> list[dict]:
    """{text or messages, score} for each text, conversation or input row (an id column carried over)."""
    if output:
        check_output_file(output, "--output")
    items = read_items(input_file) if input_file else list(texts or [])
    if not items:
        raise LmforgeError("nothing to score", "give texts after the model, or --input FILE")
    empty = [i for i, t in enumerate(items) if isinstance(t, str) and not t.strip()]
    if empty:
        raise LmforgeError(f"text {empty[0] + 1} is empty", "remove empty texts from the input")
    scorer = load_scorer(Path(model_dir), allow_untrained)
    scorer.model.to(inference_device())
    values = scorer.score(items, batch_size)
    rows = [{("text" if isinstance(t, str) else "messages"): t, "score": v} for t, v in zip(items, values)]
    rows = with_ids(rows, read_ids(input_file) if input_file else None)
    if output:
        write_jsonl(output, rows)
    return rows
