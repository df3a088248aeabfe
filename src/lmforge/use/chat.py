"""`lmforge chat MODEL_OR_RUN`: a multi-turn conversation in the terminal with the model's chat template,
the reply streaming as it is generated.

    lmforge chat runs/sft-smollm2
    printf 'Hello!\\nAnd then?\\n' | lmforge chat smollm2-135m      # from a pipe: one turn per line

Commands: /reset (forget the conversation), /system TEXT (set the system message and reset), /exit.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from ..config import SamplingParams
from ..errors import LmforgeError
from ..models.load import resolve_model_dir
from ..runtime import inference_device
from ..tasks import causal_lm
from ..tasks.generation import generate_texts

HELP = "commands: /reset, /system TEXT, /exit"


def chat(model: str, input_stream: Optional[TextIO] = None, output: Optional[TextIO] = None,
         system: Optional[str] = None, sampling: SamplingParams = SamplingParams(max_new_tokens=256)) -> list[dict]:
    """Run the conversation until /exit or the end of the input; returns the messages of the last conversation."""
    input_stream = input_stream or sys.stdin
    output = output or sys.stdout
    lm, tokenizer = causal_lm.TASK.load_for_use(resolve_model_dir(model))
    if not getattr(tokenizer, "chat_template", None):
        raise LmforgeError(f"{model} has no chat template, so it cannot chat",
                           "fine-tune it with task: sft (which adds one), or use lmforge generate for plain text")
    lm.to(inference_device())
    interactive = input_stream.isatty()
    messages = [{"role": "system", "content": system}] if system else []
    if interactive:
        output.write(f"chatting with {model} ({HELP})\n")
    while True:
        if interactive:
            output.write("you> ")
            output.flush()
        line = input_stream.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            output.write("(conversation reset)\n")
            continue
        if text.startswith("/system"):
            messages = [{"role": "system", "content": text[len("/system"):].strip()}]
            output.write("(system message set; conversation reset)\n")
            continue
        if text.startswith("/"):
            output.write(f"unknown command {text.split()[0]} ({HELP})\n")
            continue
        messages.append({"role": "user", "content": text})
        if interactive:
            output.write("model> ")
        reply = generate_texts(lm, tokenizer, [list(messages)], sampling, stream=output)[0][0]
        output.flush()
        messages.append({"role": "assistant", "content": reply})
    return messages
