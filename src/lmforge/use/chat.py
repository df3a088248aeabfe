"""`lmforge chat MODEL_OR_RUN`: a multi-turn conversation in the terminal with the model's chat template,
the reply streaming as it is generated.

    lmforge chat runs/sft-smollm2
    printf 'Hello!\\nAnd then?\\n' | lmforge chat smollm2-135m      # from a pipe: one turn per line

Commands: /reset (forget the conversation), /system TEXT (set the system message and reset), /help, /exit.
In a terminal, arrow keys edit the line and walk the history (readline). A conversation that outgrows the
model's context drops its oldest messages and says so.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from ..config import SamplingParams
from ..errors import LmforgeError
from ..models.load import context_length, resolve_model_dir
from ..runtime import inference_device
from ..tasks import causal_lm
from ..tasks.generation import encode_prompt, generate_texts

HELP = ("commands: /reset (forget the conversation), /system TEXT (set the system message and reset), /help, /exit; "
        "arrow keys edit the line and walk the history in a terminal")


def _line_editing() -> None:
    """Line editing and history for input() in a terminal (readline, where Python has it)."""
    try:
        import readline  # noqa: F401 - importing it is what turns line editing on for input()
    except ImportError:  # not on every platform: plain input then
        pass


def _read(input_stream: TextIO, interactive: bool, output: TextIO) -> Optional[str]:
    """One line of input (None at the end); with a terminal through input(), so readline edits it."""
    if interactive and input_stream is sys.stdin:
        try:
            return input("you> ") + "\n"
        except EOFError:
            return None
    if interactive:
        output.write("you> ")
        output.flush()
    line = input_stream.readline()
    return line or None


def _fit(lm, tokenizer, messages: list[dict], new_tokens: int) -> tuple[list[dict], int]:
    """The conversation cut to fit the model's context with room for the reply: the oldest turns after the system
    message are dropped first. Returns (messages, how many were dropped)."""
    limit = context_length(lm.config, tokenizer)
    if not limit:
        return messages, 0
    system = [m for m in messages if m["role"] == "system"][:1]
    rest = [m for m in messages if m["role"] != "system"]
    dropped = 0
    while len(rest) > 1 and len(encode_prompt(tokenizer, system + rest, chat=True)) + min(new_tokens, 64) > limit:
        rest = rest[1:]
        dropped += 1
    return system + rest, dropped


def chat(model: str, input_stream: Optional[TextIO] = None, output: Optional[TextIO] = None,
         system: Optional[str] = None, sampling: SamplingParams = SamplingParams(max_new_tokens=256)) -> list[dict]:
    """Run the conversation until /exit or the end of the input; returns the messages of the last conversation."""
    input_stream = input_stream or sys.stdin
    output = output or sys.stdout
    if hasattr(input_stream, "reconfigure"):  # bytes that are not UTF-8 are told, not a traceback
        input_stream.reconfigure(errors="surrogateescape")
    lm, tokenizer = causal_lm.TASK.load_for_use(resolve_model_dir(model))
    if not getattr(tokenizer, "chat_template", None):
        raise LmforgeError(f"{model} has no chat template, so it cannot chat",
                           "fine-tune it with task: sft (which adds one), or use lmforge generate for plain text")
    lm.to(inference_device())
    interactive = input_stream.isatty()
    if interactive:
        _line_editing()
    messages = [{"role": "system", "content": system}] if system else []
    if interactive:
        output.write(f"chatting with {model} ({HELP})\n")
    while True:
        line = _read(input_stream, interactive, output)
        if line is None:
            break
        text = line.rstrip("\n")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            output.write("(that line is not UTF-8 text, so it was skipped; set your terminal to UTF-8)\n")
            continue
        if not text.strip():
            continue
        command = text.strip().split()[0]
        if command == "/exit":
            break
        if command == "/help":
            output.write(HELP + "\n")
            continue
        if command == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            output.write("(conversation reset)\n")
            continue
        if command == "/system":
            messages = [{"role": "system", "content": text[len("/system"):].strip()}]
            output.write("(system message set; conversation reset)\n")
            continue
        if text.startswith("/"):
            output.write(f"unknown command {command} ({HELP})\n")
            continue
        messages.append({"role": "user", "content": text})
        messages, dropped = _fit(lm, tokenizer, messages, sampling.max_new_tokens)
        if dropped:
            output.write(f"(the conversation outgrew the model's context: dropped its {dropped} oldest "
                         f"message{'s' if dropped > 1 else ''}; /reset starts afresh)\n")
        if interactive:
            output.write("model> ")
        try:
            reply = generate_texts(lm, tokenizer, [list(messages)], sampling, stream=output)[0][0]
        except LmforgeError as e:  # e.g. one message longer than the whole context: said, the chat goes on
            output.write(f"({e.message}; the message was not sent)\n")
            messages.pop()
            continue
        output.flush()
        messages.append({"role": "assistant", "content": reply})
    return messages
