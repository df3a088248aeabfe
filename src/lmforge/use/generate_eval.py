"""`lmforge eval RUN --data FILE --generate`: greedy answers to each conversation's last user turn,
generated in batches, scored against the reference answers with exact match and chrF (sacrebleu).

    lmforge eval runs/sft-smollm2 --data kjv-to-web:test --generate --max-new-tokens 64
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..config import load_config
from ..data import chat, preference
from ..data.chat import read_conversations
from ..data.pipeline import HELD_OUT, read_eval_rows
from ..data.preference import read_pairs
from ..errors import LmforgeError
from ..runtime import inference_device
from ..tasks.base import eval_rows
from ..tasks.generation import generate_greedy_batched
from ..tasks.sft import sample_prompts


def _conversations(data: str, cfg, task) -> list[list[dict]]:
    """The conversations of `data`; preference pairs count as their prompt and chosen reply."""
    if data == HELD_OUT:  # the run's own held-out rows: conversations, or pairs for a preference run
        if task.data_kind == "pairs":
            return [p.prompt + p.chosen for p in read_eval_rows(data, cfg, preference.KIND)]
        return read_eval_rows(data, cfg, chat.KIND)
    try:
        return read_conversations(data, cfg, "eval")
    except LmforgeError as e:
        try:
            pairs = read_pairs(data, cfg, "eval")
        except LmforgeError:
            raise e from None
        return [p.prompt + p.chosen for p in pairs]


def generation_scores(model_dir: Path, task, data: str, overrides: Optional[Sequence[str]] = None,
                      max_new_tokens: int = 64, batch_size: int = 16, show: int = 5) -> dict:
    """exact_match and chrf of greedy answers against the references, with a few samples."""
    import sacrebleu  # lazy: only --generate needs it

    if task.endpoint != "/v1/generate":
        raise LmforgeError(f"--generate needs a causal-lm or sft model; this is a {task.name} model")
    run_cfg = Path(model_dir).parent / "config.yaml"
    cfg = load_config(run_cfg if run_cfg.exists() else None, overrides)
    if not overrides:
        cfg.data.format = None
    pairs = sample_prompts(eval_rows(_conversations(data, cfg, task), overrides, cfg), n=10**9)
    if not pairs:
        raise LmforgeError(f"{data}: no conversation ends with an assistant answer to compare with",
                           "give conversations whose last turn is the reference answer")
    model, tokenizer = task.load_for_use(Path(model_dir))
    model.to(inference_device())
    hyps = generate_greedy_batched(model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
    refs = [r for _, r in pairs]
    exact = sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / len(refs)
    return {"exact_match": exact, "chrf": float(sacrebleu.corpus_chrf(hyps, [refs]).score),
            "n_generated": len(refs),
            "generations": [{"prompt": p[-1]["content"], "completion": h, "reference": r}
                            for (p, r), h in list(zip(pairs, hyps))[:show]]}
