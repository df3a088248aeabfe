"""Knowledge distillation: a student causal LM learns from a teacher's next-token distributions (the `distill:`
section).

    lmforge train examples/distill-smollm2-kjv.yaml

Data are those of causal-lm (text corpora in packed blocks) or sft (conversations, the assistant tokens only, the
same mask): the student is set up exactly as those tasks set it up, and its held-out perplexity is theirs. The loss
at every target token is

    alpha x divergence(teacher || student at temperature T)  +  (1 - alpha) x cross-entropy with the next token

(`distill.alpha`: 1 = the teacher's distribution only, 0 = plain next-token training, the control run on the same
student), the divergence forward KL, reverse KL or generalized JSD (tasks/distill_loss.py).

- The teacher (`distill.teacher`: a model name, folder or run) runs without gradients at each step; with
  `distill.top_k` only its k most likely tokens are used, and `distill.cache: true` computes them once before
  training and keeps them on disk (the size is logged).
- On-policy (GKD, Agarwal et al. 2024): a share `distill.lmbda` of the batches is replaced by the student's own
  continuations of the batch's opening tokens (sampled, `distill.max_new_tokens`), scored by the teacher; those
  batches use the divergence only.
- `distill.student: {from_teacher: {layers: every_other}}` builds the student from a subset of the teacher's layers
  (DistilBERT's recipe, any architecture with one list of decoder layers): embeddings, final norm and head copied,
  layer i of the student = the teacher's i-th kept layer. `model/` is a plain transformers model.
- Teacher and student must share one tokenizer: a mismatch is one line naming both vocabulary sizes.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from ..config import Config, Permissions
from ..data import kinds
from ..data.cache import fingerprint
from ..errors import LmforgeError
from ..fs import cache_dir
from ..models.load import model_source
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer
from .base import RolloutInfo, Task, TaskParts
from .causal_lm import TASK as CAUSAL_LM
from .chat_template import ensure_chat_template
from .distill_loss import distill_loss
from .lm_loss import IGNORE, CausalLMLoss
from .sft import TASK as SFT

log = logging.getLogger("lmforge")


# ----------------------------------------------------------------------------------- a student from the teacher
def decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """(name, module list) of a causal LM's decoder layers: the ModuleList as long as its config's layer count."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name, module
    raise LmforgeError(f"cannot find the decoder layers of this {type(model).__name__}",
                       "give distill.student as a model (model.name) instead of from_teacher")


def kept_layers(spec, n: int) -> list[int]:
    """every_other -> 0, 2, 4, ... (DistilBERT's choice); a list of indices as given."""
    if spec == "every_other":
        return list(range(0, n, 2))
    if isinstance(spec, list) and spec and all(isinstance(i, int) and 0 <= i < n for i in spec) \
            and spec == sorted(set(spec)):
        return spec
    raise LmforgeError(f"distill.student.from_teacher.layers {spec!r} is not 'every_other' or increasing layer "
                       f"indices in 0..{n - 1}", "write layers: every_other, or layers: [0, 2, 4]")


def build_student(teacher_dir: str, layers, out: Path) -> list[int]:
    """Save a student made of the teacher's kept layers (and everything outside the layers) into `out`."""
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    name, module = decoder_layers(teacher)
    keep = kept_layers(layers, len(module))
    cfg = teacher.config.to_dict()
    for key in ("num_hidden_layers", "n_layer"):
        if key in cfg:
            cfg[key] = len(keep)
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = [cfg["layer_types"][i] for i in keep]
    student_cfg = type(teacher.config).from_dict(cfg)
    student = AutoModelForCausalLM.from_config(student_cfg)
    state = {}
    prefix = name + "."
    for k, v in teacher.state_dict().items():
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            if int(i) in keep:
                state[f"{prefix}{keep.index(int(i))}.{rest}"] = v
        else:
            state[k] = v
    missing, unexpected = student.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise LmforgeError(f"could not copy the teacher's weights into the student ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected)")
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    load_tokenizer(teacher_dir).save_pretrained(out)
    (out / "student.json").write_text(json.dumps({"teacher": str(teacher_dir), "layers": keep}))
    return keep


def student_folder(teacher_dir: str, layers, log: logging.Logger) -> tuple[Path, list[int]]:
    """The student built from the teacher's layers, cached by the teacher folder and the layers."""
    out = cache_dir() / "students" / fingerprint(str(Path(teacher_dir).resolve()), json.dumps(layers), "v1")
    if (out / "student.json").exists():
        return out, json.loads((out / "student.json").read_text())["layers"]
    keep = build_student(teacher_dir, layers, out)
    log.info("student built from the teacher's layers %s (%d of them), saved in %s", keep, len(keep), out)
    return out, keep


# ----------------------------------------------------------------------------------- the teacher
def check_same_tokenizer(teacher_tok, student_tok, teacher: str, student: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise LmforgeError(f"the teacher ({teacher}, vocabulary of {len(teacher_tok):,} tokens) and the student "
                           f"({student}, {len(student_tok):,} tokens) do not share a tokenizer, so their next-token "
                           "distributions cannot be compared", "distill into a student with the teacher's tokenizer "
                           "(e.g. distill.student: {from_teacher: {layers: every_other}})")


@dataclass
class Teacher:
    model: torch.nn.Module
    lm: CausalLMLoss  # its inputs and hidden states, as the student's

    @torch.no_grad()
    def logits_at(self, batch: dict, keep: torch.Tensor) -> torch.Tensor:
        """The teacher's logits [N, V] at the kept (target) positions of a batch."""
        hidden, head = self.lm.hidden_and_head(self.model, batch)
        return head(hidden[:, :-1][keep]).float()


class DistillLoss:
    """alpha x divergence + (1 - alpha) x cross-entropy, summed over target tokens."""

    def __init__(self, lm: CausalLMLoss, teacher: Teacher, d, cache: Optional["TopKCache"] = None):
        self.lm, self.teacher, self.d, self.cache = lm, teacher, d, cache

    def __call__(self, model, batch: dict) -> torch.Tensor:
        labels = self.lm.shifted(batch)
        keep = labels != IGNORE
        hidden, head = self.lm.hidden_and_head(model, batch)
        student = head(hidden[:, :-1][keep]).float()
        d = self.d
        on_policy = bool(batch.get("on_policy", False))
        alpha = 1.0 if on_policy else d.alpha
        total = student.new_zeros(())
        if alpha > 0:
            if self.cache is not None and "row" in batch:
                idx, val = self.cache.lookup(batch["row"].tolist(), keep.sum(1).tolist(), student.device)
                total = total + alpha * distill_loss(student, None, d.loss, d.beta, d.temperature, idx, val)
            else:
                teacher = self.teacher.logits_at(batch, keep)
                idx = teacher.topk(d.top_k, -1).indices if d.top_k else None
                total = total + alpha * distill_loss(student, teacher, d.loss, d.beta, d.temperature, idx)
        if alpha < 1:
            total = total + (1 - alpha) * torch.nn.functional.cross_entropy(student, labels[keep], reduction="sum")
        return total

    def eval_step(self, model, batch):
        return self.lm.eval_step(model, batch)


# ----------------------------------------------------------------------------------- the top-k cache
class TopKCache:
    """The teacher's top-k tokens and log-probs at every target position of the training rows, on disk (memory-
    mapped): row r's positions are entries offsets[r] .. offsets[r + 1]."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        self.k, self.offsets = meta["k"], np.asarray(meta["offsets"], dtype=np.int64)
        n = int(self.offsets[-1])
        self.idx = np.memmap(folder / "idx.i32", dtype=np.int32, mode="r", shape=(n, self.k))
        self.val = np.memmap(folder / "logp.f32", dtype=np.float32, mode="r", shape=(n, self.k))
        self.bytes = (folder / "idx.i32").stat().st_size + (folder / "logp.f32").stat().st_size

    def lookup(self, rows: list[int], counts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        for (a, b), c in zip(spans, counts):
            if b - a != c:
                raise LmforgeError("the distillation cache does not match the training rows",
                                   "delete it (lmforge's cache folder, distill-topk) and train again")
        sel = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, dtype=np.int64)
        return (torch.from_numpy(np.asarray(self.idx[sel], dtype=np.int64)).to(device),
                torch.from_numpy(np.asarray(self.val[sel])).to(device))


def build_cache(folder: Path, teacher: Teacher, split, collate, k: int, batch_size: int, log) -> TopKCache:
    """Run the teacher once over the training rows (in order) and write its top-k log-probs."""
    if (folder / "meta.json").exists():
        return TopKCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_idx, tmp_val, offsets = [], [], [0]
    for at in range(0, len(split), batch_size):
        batch = collate(split.take(list(range(at, min(at + batch_size, len(split))))))
        keep = teacher.lm.shifted(batch) != IGNORE
        logp = torch.log_softmax(teacher.logits_at(batch, keep), -1)
        top = logp.topk(k, -1)
        tmp_idx.append(top.indices.to(torch.int32).numpy())
        tmp_val.append(top.values.numpy().astype(np.float32))
        for c in keep.sum(1).tolist():
            offsets.append(offsets[-1] + int(c))
    idx = np.concatenate(tmp_idx) if tmp_idx else np.zeros((0, k), np.int32)
    val = np.concatenate(tmp_val) if tmp_val else np.zeros((0, k), np.float32)
    idx.tofile(folder / "idx.i32")
    val.tofile(folder / "logp.f32")
    (folder / "meta.json").write_text(json.dumps({"k": k, "offsets": offsets}))
    return TopKCache(folder)


class WithRows:
    """A collate function that also passes the training rows' positions in the split (for the cache)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows: list[dict]) -> dict:
        if not rows or "row" not in rows[0]:  # evaluation rows
            return self.collate(rows)
        batch = self.collate([{k: v for k, v in r.items() if k != "row"} for r in rows])
        batch["row"] = torch.tensor([r["row"] for r in rows])
        return batch


# ----------------------------------------------------------------------------------- on-policy batches
def on_policy(d, seed: int, pad_id: int, eos_ids):
    """The rollout hook of GKD: with probability lmbda (a seeded draw per batch), the batch becomes the student's
    sampled continuations of each row's opening tokens (half its real tokens, at most 64), targets = the sampled
    tokens."""
    def rollout(model, batch: dict, info: RolloutInfo) -> dict:
        if random.Random(f"{seed}-{info.epoch}-{info.batch_index}").random() >= d.lmbda:
            return batch
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        lengths = mask.sum(1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
        prompts = [ids[i, :max(1, min(64, int(n) // 2))].tolist() for i, n in enumerate(lengths)]
        width = max(map(len, prompts))
        left = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=ids.device)
        left_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=ids.device)
        was = model.training
        model.eval()
        torch.manual_seed(hash((seed, info.epoch, info.batch_index)) % (2**31))
        with torch.no_grad():
            out = getattr(model, "module", model).generate(
                input_ids=left, attention_mask=left_mask, do_sample=True, temperature=d.temperature,
                max_new_tokens=d.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids)
        model.train(was)
        rows, labels = [], []
        for p, seq in zip(prompts, out[:, width:].tolist()):
            gen = []
            for t in seq:
                gen.append(t)
                if t in eos_ids:
                    break
            rows.append(p + gen)
            labels.append([IGNORE] * len(p) + gen)
        n = max(map(len, rows))
        new = {"input_ids": torch.tensor([r + [pad_id] * (n - len(r)) for r in rows], device=ids.device),
               "attention_mask": torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], device=ids.device),
               "labels": torch.tensor([lab + [IGNORE] * (n - len(lab)) for lab in labels], device=ids.device),
               "on_policy": True}
        targets = int((new["labels"][:, 1:] != IGNORE).sum())
        new.update(n_items=targets, n_tokens=int(new["attention_mask"].sum()))
        return new
    return rollout


# ----------------------------------------------------------------------------------- the task
def data_task(cfg: Config) -> Task:
    """sft for conversations, causal-lm for text corpora."""
    src = cfg.data.train if isinstance(cfg.data.train, str) else None
    kind = kinds.kind_of_source(src, cfg) if src else None
    return SFT if kind == kinds.CONVERSATIONS else CAUSAL_LM


class Distill(Task):
    name = "distill"
    auto_class = AutoModelForCausalLM
    architectures = ()  # the distilled student is a causal LM to task_of; distill runs say so in config.yaml
    best_metric, greater_is_better = BEST_METRICS["distill"]
    endpoint = "/v1/generate"
    playground = "generate"
    data_kind = "corpus"
    length_key = "data.block_size"
    samples_title = "Sample generations"
    pipeline_tag = "text-generation"
    usage_example = 'print(pipe("And God said", max_new_tokens=40)[0]["generated_text"])'
    try_command = 'lmforge generate {run} "And God said"'
    starter = STARTERS["distill"]

    def intended_use(self, summary: dict) -> str:
        return (f"A smaller model distilled from {summary.get('teacher', 'a teacher')}: continue text (or answer "
                "conversations) like the teacher, faster.")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        d = cfg.distill
        if not d.teacher:
            raise LmforgeError("task distill needs a teacher", "set distill.teacher (a model name, folder or run)")
        if d.cache and not d.top_k:
            raise LmforgeError("distill.cache keeps the teacher's top-k log-probs, so it needs distill.top_k",
                               "set distill.top_k (e.g. 50), or distill.cache: false")
        teacher_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": d.teacher})})
        teacher_dir = model_source(teacher_cfg, permissions)
        notes: list[str] = []
        if d.student is not None:
            folder, keep = student_folder(teacher_dir, d.student.from_teacher.layers, log)
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": str(folder)})})
            notes.append(f"student: the teacher's layers {keep} ({len(keep)} layers)")
        inner = data_task(cfg)
        student_tok = load_tokenizer(model_source(cfg, permissions))
        teacher_tok = load_tokenizer(teacher_dir)
        if inner is SFT:
            ensure_chat_template(student_tok)
            ensure_chat_template(teacher_tok)
        check_same_tokenizer(teacher_tok, student_tok, d.teacher, cfg.model.name)
        parts = inner.setup(cfg.model_copy(update={"task": inner.name}), log, permissions)
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=next(parts.model.parameters()).dtype)
        teacher.eval().requires_grad_(False)
        rows_t, rows_s = teacher.get_output_embeddings().weight.shape[0], parts.model.get_output_embeddings().weight.shape[0]
        if rows_t != rows_s:
            raise LmforgeError(f"the teacher's output layer has {rows_t:,} rows and the student's {rows_s:,}",
                               "use a teacher and student with the same vocabulary")
        lm = parts.loss if isinstance(parts.loss, CausalLMLoss) else CausalLMLoss()
        t = Teacher(teacher, CausalLMLoss(attention=lm.attention))
        cache = None
        if d.cache:
            parts.train = with_row_ids(parts.train)
            key = fingerprint(str(Path(teacher_dir).resolve()), parts.fingerprints.get("train"), d.top_k, "topk-v1")
            cache = build_cache(cache_dir() / "distill-topk" / key, t, parts.train, parts.collate, d.top_k,
                                cfg.train.per_device_train_batch_size, log)
            notes.append(f"teacher top-{d.top_k} log-probs cached for {int(cache.offsets[-1]):,} target tokens: "
                         f"{cache.bytes / 2**20:,.1f} MB on disk")
            parts.collate = WithRows(parts.collate)
        parts.loss = DistillLoss(lm, t, d, cache)
        if d.lmbda > 0:
            eos = [i for i in {parts.tokenizer.eos_token_id, getattr(parts.model.generation_config, "eos_token_id", None)}
                   if isinstance(i, int)]
            parts.rollout = on_policy(d, cfg.train.seed, parts.tokenizer.pad_token_id, eos)
        notes.append(f"distillation from {d.teacher}: alpha {d.alpha:g} x {d.loss}"
                     + (f" (beta {d.beta:g})" if d.loss == "gjsd" else "") + f" at temperature {d.temperature:g}"
                     + (f" over the teacher's top {d.top_k} tokens" if d.top_k else "")
                     + (f" + {1 - d.alpha:g} x next-token cross-entropy" if d.alpha < 1 else "")
                     + (f"; {d.lmbda:.0%} of the batches on-policy (the student's own samples)" if d.lmbda else ""))
        for note in notes:
            log.info("%s", note)
        parts.task = self
        parts.notes = list(parts.notes) + notes
        parts.summary = {**parts.summary, "teacher": d.teacher, "data_task": inner.name}
        return parts

    def model_check_config(self, cfg: Config) -> Config:
        if cfg.distill.student is not None and cfg.distill.teacher:  # the student is made of the teacher
            return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": cfg.distill.teacher})})
        return cfg

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        return CAUSAL_LM.load_for_use(model_dir, allow_untrained)

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        parts = CAUSAL_LM.eval_setup(model_dir, data, overrides)
        parts.task = self
        return parts

    def metric_inputs(self, outputs: dict) -> tuple:
        return CAUSAL_LM.metric_inputs(outputs)


def with_row_ids(split):
    """The split with each row's position in it (a `row` field), for the cache lookups."""
    rows = split.rows
    if isinstance(rows, list):
        rows = [{**r, "row": i} for i, r in enumerate(rows)]
    else:
        rows = rows.add_column("row", list(range(len(rows))))
    return type(split)(rows, split.lengths, split.finalize, split.whole)


TASK = Distill()
