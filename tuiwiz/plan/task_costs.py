"""What a training task adds to a step's memory beyond SFT's, read from what TRL 1.16's trainers do.

- Pairs (DPO, ORPO, SimPO, reward): chosen and rejected go through the model as one batch of twice the
  micro-batch (DataCollatorForPreference; the reward collator; ORPO's and CPO's concatenated_forward), so
  activations and logits count every sequence: ``Plan.sequences_per_example`` (memory.py).
- A reference model (DPO and KTO unless ``precompute_ref_log_probs``; GRPO with ``beta > 0``): under full
  fine-tuning TRL loads a second, frozen copy (create_model_from_path, in the policy's dtype); under peft the
  reference is the same weights with the adapter disabled (use_adapter), no copy. Its forward runs under
  torch.no_grad: a transient, not saved activations. DPO and KTO run it inside compute_loss, after the
  policy's forward, so it overlaps the policy's saved activations; KTO also scores its mismatched KL
  completions, one more forward of the same shape at a time (_compute_kl_logps).
- GRPO: each optimizer step generates ``generation_batch`` completions at once (prompts repeated
  num_generations times) of up to max_completion_length tokens, with a KV cache, before any forward with
  gradients (_generate_and_score_completions); the reference's log-probabilities are computed there too, a
  micro-batch at a time. Then it trains on prompt + completion sequences, a micro-batch of completions.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuiwiz.methods import METHODS
from tuiwiz.plan.activations import no_grad_forward_bytes
from tuiwiz.plan.fine_tune import Constants, Plan
from tuiwiz.plan.modelinfo import ModelInfo
from tuiwiz.tasks import TASKS
from tuiwiz.units import size


@dataclass(frozen=True)
class TaskTerms:
    reference: int = 0  # a second, frozen copy of the weights, held all along
    reference_forward: int = 0  # the reference's forward without gradients, while the policy's activations are held
    generation: int = 0  # GRPO's generation phase: KV cache and sampling, then the reference's scoring
    notes: tuple[str, ...] = ()


def reference_copy(plan: Plan) -> bool:
    """Whether the reference is a second copy of the model: peft disables the adapter instead."""
    return plan.reference and not METHODS[plan.method].uses_peft


def reference_copy_fix(plan: Plan) -> str:
    """What would drop a reference copy the plan holds, as the estimate's notes and the recommender's reasons say it."""
    if TASKS[plan.task].generates:
        return "grpo.beta 0 needs no reference"
    if plan.strategy == "single":
        return "preference.precompute_ref_log_probs scores the data with it once before training instead"
    return "TRL precomputes its scores on one process only, so on several processes it stays"


def kv_cache_bytes(model: ModelInfo, sequences: int, tokens: int, r: int) -> int:
    """transformers' DynamicCache: keys and values of every layer, before GQA repeats them, in the dtype the
    hidden states have (the residual stream's: generation runs outside autocast)."""
    return 2 * model.num_layers * model.kv_dim * r * sequences * tokens


def task_terms(model: ModelInfo, plan: Plan, *, weights: int, a: int, r: int, c: Constants) -> TaskTerms:
    """The reference copy, the reference forward and GRPO's generation for ``plan``; ``weights`` are the policy's
    bytes on one device (the reference copy has the same dtype and sharding)."""
    task = TASKS[plan.task]
    notes: list[str] = []
    reference = weights if reference_copy(plan) else 0
    if reference:
        notes.append(f"{task.title} under {METHODS[plan.method].title} keeps a second, frozen copy of the model as "
                     f"its reference ({size(reference)}): {reference_copy_fix(plan)}")
    elif plan.reference:
        notes.append(f"{task.title}'s reference is the base model with the adapter disabled: no second copy")
    elif task.reference:
        notes.append(f"{task.title}'s reference scores the data once before training "
                     f"(preference.precompute_ref_log_probs): no reference in memory while it trains")
    if not task.generates:
        ref_forward = 0
        if plan.reference:
            tokens = plan.micro_batch * plan.sequences_per_example * plan.sequence_len
            ref_forward = no_grad_forward_bytes(model, plan, tokens, a, r, c)
        return TaskTerms(reference, ref_forward, 0, tuple(notes))

    sequences, tokens = plan.generation_batch, plan.sequence_len
    cache = kv_cache_bytes(model, sequences, tokens, r)
    # DynamicCache grows by torch.cat: one layer's keys (or values) exist twice for a moment
    growth = cache // (2 * max(1, model.num_layers))
    # each new token: a forward over one position per sequence, and the last position's logits only
    decoding = int(sequences * model.vocab_size * 4 * c.sampling_copies) + no_grad_forward_bytes(
        model, plan, sequences, a, r, c, scored=False)
    prefill = no_grad_forward_bytes(model, plan, sequences * plan.seq_len, a, r, c, scored=False)
    scoring = 0
    if plan.reference:  # after generation: the cache is gone, a micro-batch of full sequences at a time
        scoring = no_grad_forward_bytes(model, plan, plan.micro_batch * tokens, a, r, c)
    prompt_cache = kv_cache_bytes(model, sequences, plan.seq_len, r)
    generation = max(prompt_cache + prefill, cache + growth + decoding, scoring)
    notes.append(f"GRPO generates {sequences} completions at once (micro-batch × accumulation) of up to "
                 f"{plan.completion_len} tokens after {plan.seq_len}-token prompts: their KV cache takes {size(cache)}")
    return TaskTerms(reference, 0, generation, tuple(notes))
