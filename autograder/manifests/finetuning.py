"""Notebook 06 - fine-tuning vs prompting: scoring choices by likelihood, few-shot prompts, LoRA,
supervised fine-tuning labels.

``score_choices`` is graded on a *tiny randomly initialised* Llama (2 layers, 32 wide, built from a
seed in the kernel and again in the grader) with SmolLM2's real tokenizer: the tokenizer is what
makes the token boundary between prompt and choice matter, and a small random model with large
initial weights gives log-probabilities that differ a lot from token to token, so every mistake
changes the score. The oracle is ``transformers``' own loss (``labels`` with -100 on the prompt).
``LoRALinear`` is compared with ``peft``'s LoRA layer on the same weights (output, gradients,
merged weight). Texts travel as UTF-8 bytes, lists of texts joined by NUL bytes.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- shared input helpers


def _text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def _texts(texts) -> np.ndarray:
    return _text("\x00".join(texts))


def _decode(array) -> str:
    return bytes(np.asarray(array, dtype=np.uint8)).decode("utf-8")


def _decode_list(array) -> list[str]:
    return _decode(array).split("\x00")


WORDS = ("the", "verse", "said", "unto", "them", "and", "date", "March", "answer", "is", "of", "a",
         "model", "token", "Paris", "yes", "no", "1987", "42", "Lord", "Jesus", "king", "city", "river")

# --------------------------------------------------------------------------- finetuning.score_choices

SCORE_PROMPTS = {
    "label words": ("Verse: And Jesus answered and said unto them.\nTestament:", (" Old", " New")),
    "prompt ends with a space": ("Q: Is the sky blue on a clear day?\nA: ", ("yes", "no", "maybe not")),
    "multi-token choices": ("The capital of France is", (" Paris", " the city of Lyon", " Marseille, of course")),
    "a newline before the choices": ("Date: 5 March 1987\nISO date:\n", ("1987-03-05", "1987-05-03")),
}


def score_inputs(params, rng):
    if "fixed" in params:
        prompt, choices = SCORE_PROMPTS[params["fixed"]]
    else:
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=params["prompt_words"])]
        prompt = " ".join(words).capitalize() + params.get("ending", ":")
        choices = [(" " if params.get("space_in_choice", True) else "")
                   + " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(1, 4))))
                   for _ in range(params["n_choices"])]
    return {"prompt": _text(prompt), "choices": _texts(choices), "model_seed": np.asarray(int(rng.integers(1 << 30)))}


def call_score(fn, inputs):
    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from utils.assets import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(prepare=False))
    with torch.random.fork_rng():
        torch.manual_seed(int(inputs["model_seed"]))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             initializer_range=0.5)
        model = LlamaForCausalLM(config).eval()
    prompt = bytes(np.asarray(inputs["prompt"], dtype=np.uint8)).decode("utf-8")
    choices = bytes(np.asarray(inputs["choices"], dtype=np.uint8)).decode("utf-8").split("\x00")
    scores = fn(model, tokenizer, prompt, choices)
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float()
    else:
        scores = torch.tensor([float(s) for s in scores])
    return {"scores": scores}


SCORE_CHOICES = Exercise(
    id="finetuning.score_choices",
    callable="score_choices",
    points=4,
    summary="summed log p(choice tokens | prompt) for each choice; the prompt's tokens are context, not scored",
    make_inputs=score_inputs,
    call=call_score,
    atol=2e-3,
    rtol=1e-4,
    cases=(
        Case("label words", {"fixed": "label words"}),
        Case("prompt ends with a space", {"fixed": "prompt ends with a space"}),
        Case("multi-token choices", {"fixed": "multi-token choices"}),
        Case("a newline before the choices", {"fixed": "a newline before the choices"}, hidden=True),
        Case("random words", {"prompt_words": 9, "n_choices": 4}, hidden=True),
        Case("random words, trailing space", {"prompt_words": 6, "n_choices": 3, "ending": ": ",
                                               "space_in_choice": False}, hidden=True),
    ),
    builds_on=(),
    reference_impl="utils.adaptation:score_choices",
)

# --------------------------------------------------------------------------- finetuning.few_shot_prompt

FEW_SHOT_TEMPLATES = (
    "Verse: {input}\nTestament: {output}",
    "Date: {input}\nISO date: {output}",
    "Q: {input}\nA: {output}",
    "{input} => {output}",
)


def few_shot_inputs(params, rng):
    template = FEW_SHOT_TEMPLATES[params["template"]]

    def phrase(n):
        return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=n))

    examples = [(phrase(int(rng.integers(2, 7))), phrase(int(rng.integers(1, 3)))) for _ in range(params["k"])]
    return {"inputs": _texts([text for text, _ in examples]) if examples else _text(""),
            "outputs": _texts([answer for _, answer in examples]) if examples else _text(""),
            "k": np.asarray(params["k"]),
            "query": _text(phrase(5)), "template": _text(template), "instruction": _text(params.get("instruction", ""))}


def call_few_shot(fn, inputs):
    import numpy as np

    def text(key):
        return bytes(np.asarray(inputs[key], dtype=np.uint8)).decode("utf-8")

    k = int(inputs["k"])
    examples = list(zip(text("inputs").split("\x00"), text("outputs").split("\x00"))) if k else []
    args = (examples, text("query"), text("template"))
    prompt = fn(*args, instruction=text("instruction")) if text("instruction") else fn(*args)
    if not isinstance(prompt, str):
        raise TypeError(f"build_few_shot_prompt must return a str, got {type(prompt).__name__}")
    return {"prompt": np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).copy()}


FEW_SHOT = Exercise(
    id="finetuning.few_shot_prompt",
    callable="build_few_shot_prompt",
    points=2,
    summary="instruction, k filled-in examples, then the query with an empty answer, separated by blank lines, no trailing space",
    make_inputs=few_shot_inputs,
    call=call_few_shot,
    cases=(
        Case("2 examples", {"template": 0, "k": 2}),
        Case("zero-shot, with an instruction", {"template": 1, "k": 0, "instruction": "Write each date as YYYY-MM-DD."}),
        Case("4 examples and an instruction", {"template": 2, "k": 4, "instruction": "Answer briefly."}),
        Case("8 examples, another template", {"template": 3, "k": 8}, hidden=True),
        Case("1 example, an instruction", {"template": 0, "k": 1, "instruction": "Old or New Testament?"}, hidden=True),
    ),
    reference_impl="utils.adaptation:build_few_shot_prompt",
)

# --------------------------------------------------------------------------- finetuning.lora_linear


def lora_inputs(params, rng):
    d_in, d_out, r = params["d_in"], params["d_out"], params["r"]
    return {
        "weight": (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(np.float32),
        "bias": (0.1 * rng.standard_normal(d_out)).astype(np.float32),
        "x": rng.standard_normal((params.get("B", 2), params.get("T", 3), d_in)).astype(np.float32),
        "A": (rng.standard_normal((r, d_in)) / np.sqrt(d_in)).astype(np.float32),
        "B": (0.5 * rng.standard_normal((d_out, r))).astype(np.float32),
        "g": rng.standard_normal((params.get("B", 2), params.get("T", 3), d_out)).astype(np.float32),
        "r": np.asarray(r), "alpha": np.asarray(float(params["alpha"])),
    }


def call_lora(fn, inputs):
    import torch

    weight = torch.tensor(inputs["weight"])
    d_out, d_in = weight.shape
    base = torch.nn.Linear(int(d_in), int(d_out))
    with torch.no_grad():
        base.weight.copy_(weight)
        base.bias.copy_(torch.tensor(inputs["bias"]))
    x = torch.tensor(inputs["x"])
    with torch.no_grad():
        y_base = base(x).clone()
    r, alpha = int(inputs["r"]), float(inputs["alpha"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = fn(base, r, alpha)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"LoRALinear(base, r, alpha) must build an nn.Module, got {type(module).__name__}")
    lora_A, lora_B = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    for name, param, shape in (("lora_A", lora_A, (r, d_in)), ("lora_B", lora_B, (d_out, r))):
        if not isinstance(param, torch.nn.Parameter) or tuple(param.shape) != tuple(shape):
            raise AttributeError(f"LoRALinear needs an nn.Parameter `{name}` of shape {tuple(shape)} "
                                 f"(found {type(param).__name__} {tuple(getattr(param, 'shape', ()))})")
    with torch.no_grad():
        init_is_identity = bool(torch.allclose(module(x), y_base, atol=1e-6, rtol=0))
    a_random = bool(lora_A.detach().abs().sum() > 0 and lora_A.detach().std() > 0)
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    with torch.no_grad():
        lora_A.copy_(torch.tensor(inputs["A"]))
        lora_B.copy_(torch.tensor(inputs["B"]))
    y = module(x)
    (y * torch.tensor(inputs["g"])).sum().backward()
    grad_A = lora_A.grad.clone() if lora_A.grad is not None else torch.zeros_like(lora_A)
    grad_B = lora_B.grad.clone() if lora_B.grad is not None else torch.zeros_like(lora_B)
    merged = module.merge()
    if not isinstance(merged, torch.nn.Linear):
        raise TypeError(f"merge() must return the nn.Linear with the update folded in, got {type(merged).__name__}")
    with torch.no_grad():
        y_merged = merged(x)
    return {"init_is_identity": init_is_identity, "A_random": a_random, "n_trainable": int(n_trainable),
            "y": y.detach(), "grad_A": grad_A, "grad_B": grad_B,
            "merged_weight": merged.weight.detach().clone(), "y_merged": y_merged}


LORA_LINEAR = Exercise(
    id="finetuning.lora_linear",
    callable="LoRALinear",
    points=4,
    summary="frozen base + (alpha/r) x A^T B^T; A random, B zero (starts as the base layer); merge() folds it into W",
    make_inputs=lora_inputs,
    call=call_lora,
    atol=1e-4,
    rtol=1e-4,
    cases=(
        Case("r=2, alpha=4", {"d_in": 8, "d_out": 6, "r": 2, "alpha": 4}),
        Case("r=4, alpha=1", {"d_in": 16, "d_out": 16, "r": 4, "alpha": 1}),
        Case("r=8, alpha=16, wide", {"d_in": 32, "d_out": 48, "r": 8, "alpha": 16, "B": 1, "T": 5}, hidden=True),
        Case("r=1, alpha=3", {"d_in": 5, "d_out": 7, "r": 1, "alpha": 3}, hidden=True),
    ),
    reference_impl="utils.adaptation:LoRALinear",
)

# --------------------------------------------------------------------------- finetuning.sft_labels


def sft_inputs(params, rng):
    pad = params.get("pad", 2)
    lengths_p = rng.integers(1, params["max_prompt"] + 1, size=params["B"])
    lengths_a = rng.integers(1, params["max_answer"] + 1, size=params["B"])
    prompts = rng.integers(3, 500, size=int(lengths_p.sum())).astype(np.int64)
    answers = rng.integers(3, 500, size=int(lengths_a.sum())).astype(np.int64)
    if params.get("answers_end_with_pad"):
        answers[np.cumsum(lengths_a) - 1] = pad          # the answer ends with <|im_end|>, which is also the pad id
    return {"prompt_lengths": lengths_p.astype(np.int64), "answer_lengths": lengths_a.astype(np.int64),
            "prompts": prompts, "answers": answers, "pad_token_id": np.asarray(pad)}


def call_sft(fn, inputs):
    import numpy as np
    import torch

    def split(flat, lengths):
        edges = np.concatenate([[0], np.cumsum(lengths)])
        return [[int(t) for t in flat[a:b]] for a, b in zip(edges[:-1], edges[1:])]

    prompts = split(inputs["prompts"], inputs["prompt_lengths"])
    answers = split(inputs["answers"], inputs["answer_lengths"])
    result = fn(prompts, answers, int(inputs["pad_token_id"]))
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError("build_sft_labels must return a tuple (input_ids, attention_mask, labels)")
    return {name: torch.as_tensor(value) for name, value in zip(("input_ids", "attention_mask", "labels"), result)}


SFT_LABELS = Exercise(
    id="finetuning.sft_labels",
    callable="build_sft_labels",
    points=3,
    summary="right-padded prompt + answer rows; labels = the answer tokens, -100 on the prompt and the padding",
    make_inputs=sft_inputs,
    call=call_sft,
    cases=(
        Case("a batch of 3", {"B": 3, "max_prompt": 6, "max_answer": 4}),
        Case("answers end with the pad id", {"B": 4, "max_prompt": 5, "max_answer": 5, "answers_end_with_pad": True}),
        Case("one row", {"B": 1, "max_prompt": 4, "max_answer": 3, "pad": 0}),
        Case("a batch of 8", {"B": 8, "max_prompt": 20, "max_answer": 12, "answers_end_with_pad": True}, hidden=True),
        Case("pad id 0", {"B": 5, "max_prompt": 3, "max_answer": 9, "pad": 0}, hidden=True),
    ),
    reference_impl="utils.adaptation:build_sft_labels",
)

ASSIGNMENT = Assignment(
    notebook="06_finetuning",
    title="Fine-tuning vs prompting",
    exercises=(SCORE_CHOICES, FEW_SHOT, LORA_LINEAR, SFT_LABELS),
    references=("utils.adaptation",),
)
