"""Per-step levers of the causal-LM step, in one process: smollm2-135m, 8 x 256 random tokens.

    python benchmarks/causal_lm_levers.py hf_full,lmf_chunked,lmf_chunked_fused,lmf_chunked_fused_rcompile 3

Each variant gets its own model and AdamW; after one warm-up step (which includes compiling) the
variants take turns, step by step, and the median step time is reported (tokens/s = 2048 / s).
Variant names are made of parts:
  hf_full   the model's own loss (full-vocabulary logits)    lmf_*    lmforge's CausalLMLoss
  full      lmforge's loss with full logits                  chunked  the chunked LM head + loss
  bound     a document boundary in row 0 (block-diagonal mask)
  fused     fused AdamW                                      compile  torch.compile(whole base model)
  rcompile  torch.compile of each decoder layer              clip     + clip_grad_norm_(1.0)
  trim      + malloc_trim after the step
"""
import os, sys, time
import torch
os.environ["HF_HUB_OFFLINE"]="1"
from transformers import AutoModelForCausalLM
from lmforge.models.zoo import resolve_model
from lmforge.tasks.lm_loss import CausalLMLoss
torch.manual_seed(0)
path = resolve_model("smollm2-135m")
variants = sys.argv[1].split(",")
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
B, L = 8, 256
ids = torch.randint(0, 49152, (B, L))
pos = torch.arange(L).repeat(B, 1)
pos_b = pos.clone(); pos_b[0, 100:] = torch.arange(L-100)
def mk():
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32); m.train()
    m.config.use_cache = False
    return m
models = {}
def step(name, m, opt):
    if name.startswith("hf"):
        out = m(input_ids=ids, labels=ids, use_cache=False); loss = out.loss
    else:
        p = pos_b if "bound" in name else pos
        batch = {"input_ids": ids, "position_ids": p, "labels": ids.clone()}
        loss = CausalLMLoss(chunked="full" not in name)(m, batch) / (B * (L - 1))
    loss.backward()
    if "clip" in name: torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    if "trim" in name:
        from lmforge.train.perf import release_memory
    return float(loss.detach())
res = {v: [] for v in variants}
state = {}
for v in variants:
    m = mk()
    if "rcompile" in v:
        for layer in m.model.layers: layer.compile()
    elif "compile" in v:
        m.model = torch.compile(m.model)
    fused = "fused" in v
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=fused) if fused else torch.optim.AdamW(m.parameters(), lr=1e-5)
    t = time.perf_counter(); step(v, m, opt); print(v, "first step", round(time.perf_counter()-t, 1), flush=True)
    state[v] = (m, opt)
for r in range(reps):
    for v in variants:
        m, opt = state[v]
        t = time.perf_counter(); step(v, m, opt); dt = time.perf_counter() - t
        res[v].append(dt)
        print(v, r, round(dt, 2), round(B*L/dt, 1), "tok/s", flush=True)
for v in variants:
    s = sorted(res[v]); print("MEDIAN", v, round(s[len(s)//2], 2), round(B*L/s[len(s)//2], 1), "tok/s")
