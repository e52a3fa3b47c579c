"""Notebook 06, trusted side: oracles and known mistakes.

* ``score_choices``: ``transformers``' own loss. The prompt + choice is fed with ``labels`` that
  are -100 on the prompt, and ``loss * (number of choice tokens)`` is minus the summed
  log-probability. The split between prompt and choice tokens follows lm-evaluation-harness
  (trailing whitespace of the prompt moves to the choice; the choice's tokens are those of
  ``prompt + choice`` after the prompt's own). The oracle builds the same tiny model from the
  case's seed as the manifest's ``call`` (a test checks that the weights are identical).
* ``LoRALinear``: ``peft``'s LoRA layer (``LoraConfig(r, lora_alpha)`` on the same ``nn.Linear``,
  ``lora_A``/``lora_B`` set to the case's weights): output, gradients of A and B, and the weight of
  ``merge_and_unload()``.
* ``build_few_shot_prompt`` and ``build_sft_labels``: their contracts, written out here.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..manifests.finetuning import FEW_SHOT, LORA_LINEAR, SCORE_CHOICES, SFT_LABELS, _decode, _decode_list
from ..spec import Detector, Oracle
from .common import tensor as _t

# --------------------------------------------------------------------------- score_choices


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    from utils.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir(prepare=False))


@functools.lru_cache(maxsize=8)
def _tiny_model(seed: int):
    """The model ``call_score`` builds for this seed (tests/test_finetuning.py checks they are the same)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             initializer_range=0.5)
        return LlamaForCausalLM(config).eval()


def _run_score(fn, inputs):
    """``call_score`` of the manifest, with the tokenizer and the tiny model cached (the grader's side only)."""
    scores = fn(_tiny_model(int(inputs["model_seed"])), _tokenizer(), _decode(inputs["prompt"]),
                _decode_list(inputs["choices"]))
    return {"scores": scores.detach().float()}


def _lm_eval_split(tokenizer, prompt, choice):
    stripped = prompt.rstrip()
    choice = prompt[len(stripped):] + choice
    context = tokenizer(stripped)["input_ids"]
    whole = tokenizer(stripped + choice)["input_ids"]
    assert whole[:len(context)] == context, (stripped, choice)
    return context, whole[len(context):]


@torch.no_grad()
def _transformers_loss(model, tokenizer, prompt, choices):
    scores = []
    for choice in choices:
        context, continuation = _lm_eval_split(tokenizer, prompt, choice)
        ids = torch.tensor([context + continuation])                     # (1, T)
        labels = ids.clone()
        labels[:, :len(context)] = -100                                  # the prompt is context, not scored
        loss = model(input_ids=ids, labels=labels).loss                  # mean over the choice's tokens
        scores.append(-loss * len(continuation))
    return torch.stack(scores)


def _token_log_probs(model, ids):
    return F.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)   # (T, V)


def _wrong_score(kind):
    @torch.no_grad()
    def score(model, tokenizer, prompt, choices):
        scores = []
        for choice in choices:
            if kind == "separate tokens":                                # ids of prompt and choice, each on its own
                context, continuation = tokenizer(prompt)["input_ids"], tokenizer(choice)["input_ids"]
            elif kind == "trailing space kept":                          # no whitespace moved: the slice may be empty
                context = tokenizer(prompt)["input_ids"]
                continuation = tokenizer(prompt + choice)["input_ids"][len(context):]
            else:
                context, continuation = _lm_eval_split(tokenizer, prompt, choice)
            ids = context + continuation
            lp = _token_log_probs(model, ids)
            targets = torch.tensor(ids)
            if kind == "prompt included":                                # every token after the first
                scores.append(lp[torch.arange(len(ids) - 1), targets[1:]].sum())
                continue
            positions = torch.arange(len(context), len(ids))             # where the choice's tokens are
            predicting = positions if kind == "no shift" else positions - 1
            per_token = lp[predicting, targets[positions]]
            scores.append(per_token.mean() if kind == "mean" else per_token.sum())
        return torch.stack(scores)
    return lambda inputs: _run_score(score, inputs)


# --------------------------------------------------------------------------- few-shot prompt


def _examples(inputs):
    k = int(inputs["k"])
    return list(zip(_decode_list(inputs["inputs"]), _decode_list(inputs["outputs"]))) if k else []


def _prompt(inputs, separator="\n\n", strip=True, end_separator=True, instruction=True):
    template = _decode(inputs["template"])
    parts = [_decode(inputs["instruction"])] if instruction and _decode(inputs["instruction"]) else []
    parts += [template.format(input=text, output=answer) for text, answer in _examples(inputs)]
    query = template.format(input=_decode(inputs["query"]), output="")
    query = query.rstrip() if strip else query
    body = separator.join(parts)
    prompt = body + (separator if end_separator else "") + query if parts else query
    return {"prompt": np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).copy()}


# --------------------------------------------------------------------------- LoRA


def lora_reference(inputs):
    from peft import LoraConfig, get_peft_model

    weight = _t(inputs, "weight")
    d_out, d_in = weight.shape
    r, alpha = int(inputs["r"]), float(inputs["alpha"])

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d_in, d_out)

        def forward(self, x):
            return self.proj(x)

    wrapper = Wrapper()
    with torch.no_grad():
        wrapper.proj.weight.copy_(weight)
        wrapper.proj.bias.copy_(_t(inputs, "bias"))
    x = _t(inputs, "x")
    with torch.no_grad():
        y_base = wrapper(x).clone()
    model = get_peft_model(wrapper, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0,
                                               bias="none"))
    layer = model.base_model.model.proj
    with torch.no_grad():
        init_is_identity = bool(torch.allclose(model(x), y_base, atol=1e-6, rtol=0))
        a_random = bool(layer.lora_A["default"].weight.abs().sum() > 0)
        layer.lora_A["default"].weight.copy_(_t(inputs, "A"))
        layer.lora_B["default"].weight.copy_(_t(inputs, "B"))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    y = model(x)
    (y * _t(inputs, "g")).sum().backward()
    grad_A = layer.lora_A["default"].weight.grad.clone()
    grad_B = layer.lora_B["default"].weight.grad.clone()
    merged = model.merge_and_unload().proj
    with torch.no_grad():
        y_merged = merged(x)
    return {"init_is_identity": init_is_identity, "A_random": a_random, "n_trainable": np.asarray(n_trainable),
            "y": y.detach(), "grad_A": grad_A, "grad_B": grad_B,
            "merged_weight": merged.weight.detach().clone(), "y_merged": y_merged}


def _lora_by_hand(inputs, scaling_of=lambda r, alpha: alpha / r, merge_scaled=True):
    """LoRA written out, with the scaling the mistake uses: y, its gradients and the merged layer."""
    W, b, x, g = _t(inputs, "weight"), _t(inputs, "bias"), _t(inputs, "x"), _t(inputs, "g")
    A = _t(inputs, "A").requires_grad_(True)
    B = _t(inputs, "B").requires_grad_(True)
    s = scaling_of(int(inputs["r"]), float(inputs["alpha"]))
    y = x @ W.T + b + (x @ A.T @ B.T) * s
    (y * g).sum().backward()
    merged = W + (B @ A).detach() * (s if merge_scaled else 1.0)
    return {"y": y.detach(), "grad_A": A.grad, "grad_B": B.grad, "merged_weight": merged, "y_merged": x @ merged.T + b}


def _forward_only(outputs):
    """The outputs of forward and backward: a mistake there shows whatever merge() does."""
    return {key: outputs[key] for key in ("y", "grad_A", "grad_B")}


def _lora_trainable_with_base(inputs):
    d_out, d_in = np.asarray(inputs["weight"]).shape
    r = int(inputs["r"])
    return {"n_trainable": np.asarray(r * (d_in + d_out) + d_out * d_in + d_out)}


# --------------------------------------------------------------------------- SFT labels


def _rows(inputs):
    def split(flat, lengths):
        edges = np.concatenate([[0], np.cumsum(lengths)])
        return [np.asarray(flat[a:b], dtype=np.int64) for a, b in zip(edges[:-1], edges[1:])]
    return split(inputs["prompts"], inputs["prompt_lengths"]), split(inputs["answers"], inputs["answer_lengths"])


def _sft(inputs, prompt_in_labels=False, padding_in_labels=False, mask_pad_value=False, shifted=False):
    prompts, answers = _rows(inputs)
    pad = int(inputs["pad_token_id"])
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    input_ids = np.full((len(prompts), length), pad, dtype=np.int64)
    attention = np.zeros((len(prompts), length), dtype=np.int64)
    labels = np.full((len(prompts), length), -100, dtype=np.int64)
    for b, (p, a) in enumerate(zip(prompts, answers)):
        row = np.concatenate([p, a])
        input_ids[b, :len(row)] = row
        attention[b, :len(row)] = 1
        start = 0 if prompt_in_labels else len(p)
        labels[b, start:len(row)] = row[start:]
        if padding_in_labels:
            labels[b, len(row):] = pad
    if mask_pad_value:                                       # padding found by its value: also hits a real <|im_end|>
        labels = np.where(input_ids == pad, -100, labels)
    if shifted:                                              # labels moved one step left (the model shifts them itself)
        labels = np.concatenate([labels[:, 1:], np.full((len(labels), 1), -100)], axis=1)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


ORACLES = {
    SCORE_CHOICES.id: Oracle(
        reference=lambda inputs: _run_score(_transformers_loss, inputs),
        detectors=(
            Detector("prompt included", _wrong_score("prompt included"),
                     "you summed the log-probabilities of the prompt's tokens too: only the choice's tokens are "
                     "scored (the prompt is the same for every choice, it is context)"),
            Detector("no shift", _wrong_score("no shift"),
                     "off by one: the token at position t is predicted by the logits at position t - 1, so the "
                     "choice's tokens at positions n..T-1 are scored with log_probs[n-1 : T-1]"),
            Detector("mean", _wrong_score("mean"),
                     "this is the mean log-probability per token; the contract is the sum over the choice's tokens"),
            Detector("separate tokens", _wrong_score("separate tokens"),
                     "the token boundary: the prompt ends with a space, and tokenizing prompt and choice separately "
                     "gives 'Ġ' + 'yes' where the text has ' yes'. Move the prompt's trailing whitespace to the start "
                     "of each choice, then take the tokens of prompt + choice after the prompt's own"),
            Detector("trailing space kept", _wrong_score("trailing space kept"),
                     "the token boundary: with the prompt's trailing space left in place, the prompt's last token "
                     "'Ġ' merges with the choice ('Ġyes'), so slicing after len(prompt tokens) loses the choice's "
                     "first token. Move the trailing whitespace to the start of each choice first"),
        ),
    ),
    FEW_SHOT.id: Oracle(
        reference=_prompt,
        detectors=(
            Detector("trailing space", lambda inputs: _prompt(inputs, strip=False),
                     "the prompt ends with a space ('Testament: '): strip it, the answer brings its own space "
                     "(' Old' is one token, ' ' + 'Old' two)"),
            Detector("single newline", lambda inputs: _prompt(inputs, separator="\n"),
                     "separate the instruction, the examples and the query with a blank line ('\\n\\n')"),
            Detector("no separator before the query", lambda inputs: _prompt(inputs, end_separator=False),
                     "the query must be separated from the last example by a blank line too"),
            Detector("instruction left out", lambda inputs: _prompt(inputs, instruction=False),
                     "when an instruction is given it comes first, followed by a blank line"),
        ),
    ),
    LORA_LINEAR.id: Oracle(
        reference=lora_reference,
        detectors=(
            Detector("B random", lambda inputs: {"init_is_identity": False},
                     "the layer does not start as the base layer: initialise lora_B with zeros (and lora_A randomly), "
                     "so that B A = 0 and fine-tuning starts from the pretrained model"),
            Detector("A zero", lambda inputs: {"A_random": False},
                     "lora_A is all zeros: with A = 0 and B = 0 both gradients are zero and LoRA never learns; "
                     "initialise A randomly (nn.init.kaiming_uniform_(A, a=math.sqrt(5)), as peft does)"),
            Detector("base not frozen", _lora_trainable_with_base,
                     "the base layer is still trainable: set requires_grad_(False) on its weight and bias, only "
                     "lora_A and lora_B train"),
            Detector("no scaling", lambda inputs: _forward_only(_lora_by_hand(inputs, lambda r, alpha: 1.0)),
                     "the update must be scaled by alpha / r: y = base(x) + (alpha / r) * x A^T B^T"),
            Detector("scaling r / alpha", lambda inputs: _forward_only(_lora_by_hand(inputs, lambda r, alpha: r / alpha)),
                     "the scaling is upside down: it is alpha / r"),
            Detector("merge without scaling", lambda inputs: {"merged_weight": _lora_by_hand(inputs, merge_scaled=False)["merged_weight"]},
                     "merge() must add the SCALED update: W + (alpha / r) * B @ A"),
        ),
    ),
    SFT_LABELS.id: Oracle(
        reference=_sft,
        detectors=(
            Detector("prompt in labels", lambda inputs: _sft(inputs, prompt_in_labels=True),
                     "the prompt's tokens are in the labels: set them to -100, so the model is trained to write the "
                     "answer, not to predict the prompt"),
            Detector("padding in labels", lambda inputs: _sft(inputs, padding_in_labels=True),
                     "padding positions must be -100 in the labels, not the pad id"),
            Detector("pad found by value", lambda inputs: _sft(inputs, mask_pad_value=True),
                     "you masked every token equal to pad_token_id, which also removes the answer's own end token "
                     "(SmolLM2's pad token is <|im_end|>): mask the positions after each row's length instead"),
            Detector("labels shifted", lambda inputs: _sft(inputs, shifted=True),
                     "labels are aligned with input_ids (labels[t] = input_ids[t] on the answer): the model shifts "
                     "them by one inside its loss"),
        ),
    ),
}
