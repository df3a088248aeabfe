"""What `lmforge init TASK`, `lmforge runs` and the task classes share about each task family, in a module that
imports nothing heavy, so those commands answer without loading torch (the task classes read it from here: one
copy).

    STARTERS["sft"]["model"]   # the built-in model a starter config uses
    BEST_METRICS["classification"]
"""

from __future__ import annotations

# Laptop-sized: every starter trains in minutes on 2 CPU cores as written (caps on rows and steps, each with a
# comment on how to scale up); "minutes" is what one run of it took here, the whole `lmforge train` command on 2 CPU
# cores, 2026-12-07 (embedding, reranker, reward, distill: 2026-12-08) (docs/results.md; dpo: 4.2 min plus its 2.8 min reference pass, which a run computes once).
SCALE_UP = {
    "data.max_train_samples": "laptop-sized: remove this line to train on every row",
    "data.max_eval_samples": "laptop-sized: remove to evaluate on every held-out row (slower evaluations)",
    "train.max_steps": "laptop-sized: -1 trains for num_train_epochs over all the (capped) rows",
    "data.max_eval_blocks": "laptop-sized: remove to evaluate on every held-out block (slower evaluations)",
}

STARTERS: dict[str, dict] = {
    "classification": {
        "minutes": 3.6,
        "model": "minilm-l6", "data": "finefood", "about": "label texts (or text pairs) with one of a fixed set of labels",
        "keys": {"data": ["text_column", "text_pair_column", "label_column", "max_length"]},
        "values": {"data": {"max_train_samples": 2000, "max_eval_samples": 400},
                   # 1e-4 with a short warmup: a small encoder leaves the majority-class plateau within the
                   # starter's 60 steps (5e-5 was still at accuracy 0.65, MCC 0 there)
                   # 16 x 2 accumulation = 32 per step: the peak memory of batch 32 at 512 tokens was 12 GB
                   "train": {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2, "max_steps": 60,
                             "learning_rate": 1e-4, "warmup_ratio": 0.1}}},
    "causal-lm": {
        "minutes": 8.2,
        "model": "smollm2-135m", "data": "kjv", "about": "continue text: fine-tune (or pretrain) a decoder on documents",
        "keys": {"data": ["block_size", "packing", "document_separator", "max_eval_blocks"]},
        # a row of a corpus is a whole document (a book of kjv): the evaluation is capped in blocks
        "values": {"data": {"block_size": 256, "max_eval_blocks": 32},
                   "train": {"per_device_train_batch_size": 8, "max_steps": 30}}},
    "masked-lm": {
        "minutes": 2.1,
        "model": "minilm-l6", "data": "kjv", "about": "adapt an encoder to a domain by filling in masked words",
        "keys": {"data": ["block_size", "masking", "mlm_probability", "max_eval_blocks"]},
        "values": {"data": {"block_size": 256, "max_eval_blocks": 64},
                   "train": {"per_device_train_batch_size": 8, "max_steps": 60}}},
    "sft": {
        "minutes": 6.2,
        "model": "smollm2-135m", "data": "kjv-to-web", "about": "chat / instruction fine-tuning on conversations",
        "keys": {"data": ["block_size", "packing", "chat_format", "train_on"]},
        "values": {"data": {"block_size": 256, "max_train_samples": 2000, "max_eval_samples": 64},
                   "train": {"per_device_train_batch_size": 8, "max_steps": 30}}},
    "dpo": {
        "minutes": 7.0,
        "model": "smollm2-135m", "data": "kjv-to-web-pairs",
        "about": "preference tuning (DPO, IPO, SimPO, ORPO) on chosen / rejected pairs",
        "keys": {"data": ["block_size"], "dpo": ["loss_type", "beta", "label_smoothing", "reference",
                                                 "max_prompt_length"]},
        "values": {"data": {"block_size": 256, "max_train_samples": 400, "max_eval_samples": 64},
                   # preference tuning moves a tuned model gently
                   "train": {"per_device_train_batch_size": 8, "learning_rate": 5e-6, "max_steps": 20}}},
    "grpo": {
        "minutes": 4.6,
        "model": "smollm2-135m", "data": "arithmetic",
        "about": "online RL with verifiable rewards (GRPO): sample answers to prompts, reward the right ones",
        "keys": {"data": ["prompt_column", "block_size"], "grpo": ["rewards", "reward_weights", "format_pattern", "answer_column",
                                                     "num_generations", "max_completion_length", "temperature",
                                                     "loss_type", "beta"]},
        # exact_match alone gives smollm2-135m no signal on arithmetic (every group scores 0 and the preflight
        # stops the run); the lenient and format rewards give partial credit, as examples/grpo-smollm2-arithmetic.yaml
        "values": {"data": {"block_size": 128, "max_eval_samples": 50},
                   "grpo": {"num_generations": 8, "max_completion_length": 16, "temperature": 0.8,
                            "rewards": ["exact_match", "contains", "format"], "reward_weights": [1.0, 0.5, 0.5],
                            "format_pattern": r"^\s*-?\d+\s*\.?\s*$"},
                   "train": {"per_device_train_batch_size": 4, "learning_rate": 1e-5, "max_steps": 30,
                             "eval_strategy": "steps", "eval_steps": 15, "logging_steps": 5}}},
    "embedding": {
        "minutes": 2.2,
        "model": "minilm-l6", "data": "kjv-web-retrieval",
        "about": "an embedding model (bi-encoder) for semantic search, trained on query / document pairs",
        "keys": {"data": ["max_length"], "embedding": ["pooling", "normalize", "scale", "matryoshka_dims",
                                                       "mini_batch_size"]},
        "values": {"data": {"max_length": 128, "max_train_samples": 4000, "max_eval_samples": 400},
                   "train": {"per_device_train_batch_size": 32, "learning_rate": 2e-5, "max_steps": 60,
                             "warmup_ratio": 0.1}}},
    "reranker": {
        "minutes": 5.4,
        "model": "minilm-l6", "data": "kjv-web-retrieval",
        "about": "a reranker (cross-encoder) that scores (query, document) pairs to reorder search results",
        "keys": {"data": ["max_length"], "reranker": ["loss", "negatives", "mine", "candidates"]},
        # a cross-encoder reads every (query, candidate) pair: 100 held-out queries x 20 candidates per evaluation
        "values": {"data": {"max_length": 256, "max_train_samples": 2000, "max_eval_samples": 100},
                   "train": {"per_device_train_batch_size": 16, "learning_rate": 5e-5, "max_steps": 60,
                             "warmup_ratio": 0.1}}},
    "reward": {
        "minutes": 3.5,
        "model": "smollm2-135m", "data": "kjv-to-web-pairs",
        "about": "a reward model: score replies, trained on chosen / rejected pairs (Bradley-Terry)",
        "keys": {"data": ["block_size"], "reward": ["center_rewards_coefficient"]},
        # a step reads 2 x 4 conversations of ~200 tokens (smollm2's template adds its system turn)
        "values": {"data": {"block_size": 256, "max_train_samples": 800, "max_eval_samples": 64},
                   "train": {"per_device_train_batch_size": 4, "learning_rate": 1e-5, "max_steps": 30,
                             "warmup_ratio": 0.1}}},
    "distill": {
        "minutes": 2.8,
        "model": "smollm2-135m", "data": "kjv",
        "about": "distil a teacher into a smaller student (by default, every other layer of the teacher)",
        "keys": {"data": ["block_size", "max_eval_blocks"], "distill": ["teacher", "student", "loss", "alpha",
                                                                      "temperature", "top_k", "lmbda"]},
        "values": {"data": {"block_size": 256, "max_eval_blocks": 32},
                   "distill": {"teacher": "smollm2-135m", "student": {"from_teacher": {"layers": "every_other"}}},
                   # a step runs the teacher forward and the student forward and backward over 4 x 256 tokens
                   "train": {"per_device_train_batch_size": 4, "learning_rate": 3e-4, "max_steps": 20}}},
}

# the default train.metric_for_best_model of each task, and whether greater is better
BEST_METRICS: dict[str, tuple[str, bool]] = {
    "classification": ("accuracy", True), "causal-lm": ("loss", False), "masked-lm": ("loss", False),
    "sft": ("loss", False), "dpo": ("loss", False),
    "grpo": ("reward", True), "embedding": ("ndcg@10", True), "reranker": ("ndcg@10", True),
    "reward": ("accuracy", True), "distill": ("loss", False),
}
