"""Notebook 04 - pretraining objectives: the causal loss, BERT's masking, T5's span corruption,
batches and the learning-rate schedule.

Two exercises have a single right answer and an external oracle: ``causal_lm_loss`` is compared
with ``transformers``' ``ForCausalLMLoss`` (value and gradient) and ``lr_at`` with ``transformers``'
cosine-with-min-lr schedule. The other three are random, so each case draws many samples with
seeded ``torch.Generator``s and a *judge* (``autograder/oracles/pretraining.py``) checks exact
invariants on every sample and statistics over all of them with exact binomial tail
probabilities: a correct implementation fails a case with a probability below one in a million,
and "one lucky sample" cannot pass. The course's versions (``reference_impl``, for demos) are in
``utils.pretraining``.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

# --------------------------------------------------------------------------- pretraining.causal_lm_loss


def causal_inputs(params, rng):
    B, T, V = params["shape"]
    ids = rng.integers(0, V, size=(B, T)).astype(np.int64)
    for row, n_pad in enumerate(params.get("padding", ())):
        if n_pad:
            ids[row, T - n_pad:] = -100      # right padding, already marked "ignore"
    return {"logits": (2.0 * rng.standard_normal((B, T, V))).astype(np.float32), "input_ids": ids}


def call_causal(fn, inputs):
    import torch

    logits = torch.tensor(inputs["logits"], requires_grad=True)
    loss = fn(logits, torch.tensor(inputs["input_ids"]))
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise TypeError("the loss must be a tensor still connected to the logits (no .item(), no NumPy), "
                        "so that loss.backward() can train the model")
    loss.backward()
    return {"loss": loss, "grad": logits.grad}


CAUSAL_LM_LOSS = Exercise(
    id="pretraining.causal_lm_loss",
    callable="causal_lm_loss",
    points=3,
    summary="mean next-token cross-entropy: logits[:, t] predicts input_ids[:, t+1]; -100 is ignored",
    make_inputs=causal_inputs,
    call=call_causal,
    cases=(
        Case("no padding", {"shape": (2, 6, 11)}),
        Case("padded batch", {"shape": (3, 8, 13), "padding": (0, 3, 5)}),
        Case("one long padded sequence", {"shape": (1, 40, 29), "padding": (9,)}, hidden=True),
        Case("a bigger vocabulary", {"shape": (4, 12, 300), "padding": (0, 1, 0, 7)}, hidden=True),
    ),
    library=("ForCausalLMLoss",),
    reference_impl="utils.pretraining:causal_lm_loss",
)

# --------------------------------------------------------------------------- pretraining.mask_tokens


def mask_inputs(params, rng):
    B, T, V = params["shape"]
    ids = rng.integers(3, V - 1, size=(B, T)).astype(np.int64)   # 0, 1, 2 are special; V - 1 is [MASK]
    ids[:, 0] = 1                                                # [CLS] opens every row
    lengths = rng.integers(T // 2, T + 1, size=B)
    for row, length in enumerate(lengths):
        ids[row, length:] = 0                                    # [PAD] after the text
    return {"input_ids": ids, "mask_token_id": np.asarray(V - 1), "vocab_size": np.asarray(V),
            "mlm_probability": np.asarray(params["p"]), "special_token_ids": np.asarray([0, 1, 2]),
            "seed": np.asarray(int(rng.integers(1 << 30))), "draws": np.asarray(params.get("draws", 40))}


def call_mask(fn, inputs):
    import torch

    ids = torch.tensor(inputs["input_ids"])
    original = ids.clone()
    args = (int(inputs["mask_token_id"]), int(inputs["vocab_size"]), float(inputs["mlm_probability"]))
    specials = tuple(int(i) for i in inputs["special_token_ids"])
    seed = int(inputs["seed"])

    def draw(i):
        result = fn(ids, *args, generator=torch.Generator().manual_seed(seed + i), special_token_ids=specials)
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"mask_tokens must return a tuple (inputs, labels), got {type(result).__name__}")
        return result

    samples = [draw(i) for i in range(int(inputs["draws"]))]
    again = draw(0)
    return {
        "inputs": torch.stack([s[0] for s in samples]),          # (draws, B, T)
        "labels": torch.stack([s[1] for s in samples]),          # (draws, B, T)
        "same_seed_same_output": bool(torch.equal(again[0], samples[0][0]) and torch.equal(again[1], samples[0][1])),
        "input_untouched": bool(torch.equal(ids, original)),
    }


MASK_TOKENS = Exercise(
    id="pretraining.mask_tokens",
    callable="mask_tokens",
    points=4,
    summary="BERT's masking: select mlm_probability of the non-special tokens; 80% [MASK], 10% random, 10% kept",
    make_inputs=mask_inputs,
    call=call_mask,
    cases=(
        Case("15% of a padded batch", {"shape": (16, 64, 50), "p": 0.15}),
        Case("30%, a larger vocabulary", {"shape": (8, 96, 400), "p": 0.3}, hidden=True),
        Case("15% of long rows", {"shape": (4, 256, 120), "p": 0.15}, hidden=True),
    ),
    library=("DataCollatorForLanguageModeling", "torch_mask_tokens"),
    reference_impl="utils.pretraining:mask_tokens",
)

# --------------------------------------------------------------------------- pretraining.span_corrupt


def span_inputs(params, rng):
    L = params["length"]
    return {"input_ids": rng.integers(0, 90, size=L).astype(np.int64), "noise_density": np.asarray(params["density"]),
            "mean_span_length": np.asarray(params["span"]), "sentinel_ids": np.arange(100, 132),
            "seed": np.asarray(int(rng.integers(1 << 30))), "draws": np.asarray(params.get("draws", 200))}


def call_span(fn, inputs):
    import torch

    ids = torch.tensor(inputs["input_ids"])
    sentinels = [int(s) for s in inputs["sentinel_ids"]]
    encoder, target = [], []
    for i in range(int(inputs["draws"])):
        result = fn(ids, float(inputs["noise_density"]), float(inputs["mean_span_length"]), sentinels,
                    generator=torch.Generator().manual_seed(int(inputs["seed"]) + i))
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"span_corrupt must return a tuple (encoder_input, decoder_target), got {type(result).__name__}")
        encoder.append(result[0])
        target.append(result[1])
    for name, rows in (("encoder_input", encoder), ("decoder_target", target)):
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise ValueError(f"{name} had lengths {lengths[:6]} across draws: with the contract's counts "
                             "(n_noise, n_spans) its length is the same every time")
    return {"encoder_input": torch.stack(encoder), "decoder_target": torch.stack(target)}


SPAN_CORRUPT = Exercise(
    id="pretraining.span_corrupt",
    callable="span_corrupt",
    points=4,
    summary="T5's span corruption: random noise spans become sentinels in the input; the target lists the spans",
    make_inputs=span_inputs,
    call=call_span,
    cases=(
        Case("64 tokens, 15%, spans of 3", {"length": 64, "density": 0.15, "span": 3.0}),
        Case("a short sequence", {"length": 12, "density": 0.25, "span": 2.0}),
        Case("100 tokens, 30%, spans of 2", {"length": 100, "density": 0.3, "span": 2.0}, hidden=True),
        Case("long spans", {"length": 80, "density": 0.5, "span": 8.0}, hidden=True),
    ),
    library=("random_spans_noise_mask",),
    reference_impl="utils.pretraining:span_corrupt",
)

# --------------------------------------------------------------------------- pretraining.get_batch


def batch_inputs(params, rng):
    return {"data": rng.permutation(params["n"]).astype(np.int64),   # every token distinct: a window shows its start
            "block_size": np.asarray(params["T"]), "batch_size": np.asarray(params["B"]),
            "seed": np.asarray(int(rng.integers(1 << 30))), "draws": np.asarray(params.get("draws", 100))}


def call_batch(fn, inputs):
    import torch

    data = torch.tensor(inputs["data"])
    original = data.clone()
    T, B, seed = int(inputs["block_size"]), int(inputs["batch_size"]), int(inputs["seed"])

    def draw(i):
        result = fn(data, T, B, torch.Generator().manual_seed(seed + i))
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"get_batch must return a tuple (x, y), got {type(result).__name__}")
        return result

    samples = [draw(i) for i in range(int(inputs["draws"]))]
    again = draw(0)
    return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples]),   # (draws, B, T)
            "same_seed_same_output": bool(torch.equal(again[0], samples[0][0]) and torch.equal(again[1], samples[0][1])),
            "data_untouched": bool(torch.equal(data, original))}


GET_BATCH = Exercise(
    id="pretraining.get_batch",
    callable="get_batch",
    points=3,
    summary="random windows of a token stream: x = data[i:i+T], y = data[i+1:i+T+1], every start equally likely",
    make_inputs=batch_inputs,
    call=call_batch,
    cases=(
        Case("40 tokens, windows of 8", {"n": 40, "T": 8, "B": 16}),
        Case("windows of 1", {"n": 12, "T": 1, "B": 4}),
        Case("57 tokens, windows of 16", {"n": 57, "T": 16, "B": 12}, hidden=True),
        Case("one window fits twice", {"n": 10, "T": 8, "B": 8}, hidden=True),
    ),
    reference_impl="utils.pretraining:get_batch",
)

# --------------------------------------------------------------------------- pretraining.lr_at


def lr_inputs(params, rng):
    warmup, total = params["warmup"], params["total"]
    return {"steps": np.arange(0, total + params.get("after", 3)), "warmup": np.asarray(warmup),
            "total": np.asarray(total), "max_lr": np.asarray(params["max_lr"]), "min_lr": np.asarray(params["min_lr"])}


def call_lr(fn, inputs):
    import numpy as np

    args = (int(inputs["warmup"]), int(inputs["total"]), float(inputs["max_lr"]), float(inputs["min_lr"]))
    return {"lr": np.array([float(fn(int(step), *args)) for step in inputs["steps"]], dtype=np.float64)}


LR_AT = Exercise(
    id="pretraining.lr_at",
    callable="lr_at",
    points=2,
    summary="learning rate: linear warm-up from 0, then a half cosine from max_lr down to min_lr at `total`",
    make_inputs=lr_inputs,
    call=call_lr,
    atol=1e-9,
    rtol=1e-6,
    cases=(
        Case("warm-up 10 of 100", {"warmup": 10, "total": 100, "max_lr": 1e-3, "min_lr": 1e-4}),
        Case("no warm-up", {"warmup": 0, "total": 20, "max_lr": 0.5, "min_lr": 0.0}),
        Case("long warm-up", {"warmup": 40, "total": 60, "max_lr": 3e-3, "min_lr": 3e-4, "after": 10}, hidden=True),
        Case("one step of warm-up", {"warmup": 1, "total": 7, "max_lr": 1.0, "min_lr": 0.25}, hidden=True),
    ),
    library=("get_cosine_with_min_lr_schedule_with_warmup", "get_cosine_schedule_with_warmup", "get_scheduler"),
    reference_impl="utils.pretraining:lr_at",
)

ASSIGNMENT = Assignment(
    notebook="04_pretraining",
    title="Pretraining objectives and scaling",
    exercises=(CAUSAL_LM_LOSS, MASK_TOKENS, SPAN_CORRUPT, GET_BATCH, LR_AT),
    references=("utils.pretraining",),
)
