"""Break-even of `train.compile: auto`: how many training steps pay back compiling the decoder layers.

    python benchmarks/compile_breakeven.py [STEPS] [BATCH] [BLOCK]    (default 16 4 256)

Two child processes, one after the other, each with a cold inductor cache (a fresh
TORCHINDUCTOR_CACHE_DIR, as on a user's first run): smollm2-135m trained with lmforge's chunked
causal-LM loss and fused AdamW on random token blocks, eager in one, with each decoder layer
compiled (`RegionalCompile`, what `train.compile` does) in the other. Every step is timed.

    overhead  = sum(compiled step times) - sum(eager step times) over the first W steps
    gain/step = median eager step - median compiled step over the steps after W
    break-even steps = W + overhead / gain
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WARM = 4


def child(mode: str, steps: int, batch: int, block: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.models.zoo import resolve_model
    from lmforge.tasks.lm_loss import CausalLMLoss
    from lmforge.train.compiling import RegionalCompile
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=torch.float32)
    m.train()
    m.config.use_cache = False
    if mode == "compiled":
        RegionalCompile(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
    loss_fn = CausalLMLoss(chunked=True)
    times = []
    for _ in range(steps):
        ids = torch.randint(0, 49152, (batch, block))
        t = time.perf_counter()
        b = {"input_ids": ids, "position_ids": torch.arange(block).repeat(batch, 1), "labels": ids.clone()}
        loss = loss_fn(m, b) / (batch * (block - 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        print(mode, len(times), round(times[-1], 2), file=sys.stderr, flush=True)
    print(json.dumps(times))


def main() -> None:
    steps, batch, block = (int(a) for a in (sys.argv[1:4] + ["16", "4", "256"][len(sys.argv[1:4]):]))
    res = {}
    for mode in ("eager", "compiled"):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="ind-"))
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(steps), str(batch), str(block)],
                             env=env, check=True, capture_output=True, text=True).stdout
        res[mode] = json.loads(out.strip().splitlines()[-1])
    e, c = res["eager"], res["compiled"]
    tok = batch * block
    overhead = sum(c[:WARM]) - sum(e[:WARM])
    gain = statistics.median(e[WARM:]) - statistics.median(c[WARM:])
    print(f"{batch} x {block} tokens per step, {steps} steps each, cold inductor cache")
    print("first steps (s)   eager:", [round(x, 1) for x in e[:WARM]], " compiled:", [round(x, 1) for x in c[:WARM]])
    print(f"steady (median of steps {WARM + 1}-{steps}): eager {statistics.median(e[WARM:]):.2f} s "
          f"({tok / statistics.median(e[WARM:]):.0f} tokens/s), compiled {statistics.median(c[WARM:]):.2f} s "
          f"({tok / statistics.median(c[WARM:]):.0f} tokens/s)")
    print(f"compile overhead over the first {WARM} steps: {overhead:.1f} s; gain per later step: {gain:.2f} s")
    if gain > 0:
        print(f"break-even: {WARM + overhead / gain:.0f} steps")
    else:
        print("break-even: never (compiled steps are not faster here)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], *(int(a) for a in sys.argv[3:6]))
    else:
        main()
