"""Notebook 08 - safety, evaluation and limitations: the metrics a model is judged by, calibration,
memorisation (exposure of canaries) and the success rate of attacks.

Every exercise here has one right answer, so each has a reference (the trusted half,
``autograder/oracles/safety.py``): the libraries that define the metric where one exists
(``transformers``' causal-LM loss for perplexity, ``sacrebleu`` for BLEU, ``scikit-learn`` for
Cohen's kappa and the per-bin statistics of calibration) and the papers' definitions otherwise
(SQuAD's evaluation script, Carlini et al.'s exposure).

Texts travel as UTF-8 bytes (``uint8`` arrays, texts separated by ``\\x1f``), and the models that
perplexity and canary scoring need are toy models the grader builds from the case's arrays: a
logits table indexed by each token plus a table indexed by its position in the window, so the
context a token is scored with changes the result, as in a real model with learned positions.
"""
from __future__ import annotations

import numpy as np

from ..spec import Assignment, Case, Exercise

SEPARATOR = "\x1f"


def pack_texts(texts) -> np.ndarray:
    """Several strings as one uint8 array (UTF-8, separated by ``\\x1f``)."""
    return np.frombuffer(SEPARATOR.join(texts).encode("utf-8"), dtype=np.uint8).copy()


def unpack_texts(array) -> list[str]:
    """The strings of :func:`pack_texts`."""
    return bytes(np.asarray(array, dtype=np.uint8)).decode("utf-8").split(SEPARATOR)


def _window_model_inputs(rng, vocab: int, window: int, scale: float = 2.0) -> dict:
    return {"table": (scale * rng.standard_normal((vocab, vocab))).astype(np.float32),
            "positions": rng.standard_normal((window, vocab)).astype(np.float32)}


# --------------------------------------------------------------------------- safety.perplexity


def perplexity_inputs(params, rng):
    vocab, n, window = params["V"], params["N"], params["window"]
    inputs = _window_model_inputs(rng, vocab, window)
    inputs.update(input_ids=rng.integers(0, vocab, size=(1, n)).astype(np.int64),
                  window=np.asarray(window), stride=np.asarray(params["stride"]))
    return inputs


def call_perplexity(fn, inputs):
    import types

    import torch

    table, positions = torch.tensor(inputs["table"]), torch.tensor(inputs["positions"])
    window = int(inputs["window"])

    def model(ids):  # (B, T) -> object with .logits (B, T, V), like a transformers model
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TypeError(f"the model takes a (B, T) LongTensor of ids, got {getattr(ids, 'shape', type(ids))}")
        if ids.shape[1] > window:
            raise ValueError(f"the model sees at most {window} tokens at a time, got {ids.shape[1]}: "
                             f"slide a window over the text")
        return types.SimpleNamespace(logits=table[ids] + positions[: ids.shape[1]])

    value = fn(model, torch.tensor(inputs["input_ids"]), window, int(inputs["stride"]))
    return {"perplexity": float(value)}


PERPLEXITY = Exercise(
    id="safety.perplexity",
    callable="perplexity",
    points=3,
    summary="exp(mean NLL per scored token) of a long text, through windows of at most `window` tokens moved by `stride`",
    make_inputs=perplexity_inputs,
    call=call_perplexity,
    cases=(
        Case("fits in one window", {"V": 9, "N": 12, "window": 16, "stride": 8}),
        Case("disjoint windows (stride = window)", {"V": 11, "N": 40, "window": 8, "stride": 8}),
        Case("sliding window (stride < window)", {"V": 13, "N": 50, "window": 16, "stride": 4}),
        Case("uneven last window", {"V": 17, "N": 103, "window": 20, "stride": 7}, hidden=True),
        Case("stride 1", {"V": 7, "N": 30, "window": 6, "stride": 1}, hidden=True),
    ),
    rtol=1e-4,
    library=("evaluate",),
    reference_impl="utils.evaluation:perplexity",
)

# --------------------------------------------------------------------------- safety.exact_match / safety.f1

ANSWERS = ("the Eiffel Tower", "Paris", "a cat sat on the mat", "New York City", "1,234 people", "Shakespeare's plays",
           "an apple a day", "the the cat", "Mount Everest", "King Lear", "the United States of America", "42",
           "blue and red", "the war of the roses", "over 9,000", "Jupiter", "e-mail", "U.S.A.")
FILLER = ("it", "is", "was", "probably", "called", "near", "in", "big", "red", "and", "cat", "the", "a")


def _variant(text: str, rng) -> str:
    """A prediction made from a gold answer by the edits that SQuAD's normalisation forgives, or not."""
    words = text.split()
    for _ in range(int(rng.integers(1, 4))):
        edit = int(rng.integers(0, 10))
        if edit == 0:
            words = [w.upper() if rng.random() < 0.5 else w.capitalize() for w in words]
        elif edit == 1 and words:
            words[-1] = words[-1] + str(rng.choice(list(".!?,;\"'")))
        elif edit == 2:
            words = [str(rng.choice(["the", "a", "an", "The", "A"]))] + words
        elif edit == 3 and len(words) > 1:
            del words[int(rng.integers(0, len(words)))]
        elif edit == 4:
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(FILLER)))
        elif edit == 5 and words:
            i = int(rng.integers(0, len(words)))
            words.insert(i, words[i])
        elif edit == 6:
            words = ["  " + w if rng.random() < 0.3 else w for w in words]
        elif edit == 7 and len(words) > 1:
            i = int(rng.integers(0, len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
        elif edit == 8:
            words = [str(rng.choice(ANSWERS))]
        else:
            words = ["(" + w + ")" if rng.random() < 0.3 else w for w in words]
    return " ".join(words)


FIXED_PAIRS = (("The Eiffel Tower!", "eiffel tower"), ("the cat", "The cat."), ("a cat sat", "the cat sat down"),
               ("Paris, France", "Paris"), ("the the cat", "cat cat the"), ("The", "an"), ("!!!", "?"),
               ("", "the answer"), ("New  York", "new york"), ("cat sat", "sat cat"))


def squad_inputs(params, rng):
    pairs = list(FIXED_PAIRS) if params.get("fixed") else []
    while len(pairs) < params["n"]:
        gold = str(rng.choice(ANSWERS))
        pairs.append((_variant(gold, rng), gold))
    return {"predictions": pack_texts(p for p, _ in pairs), "truths": pack_texts(t for _, t in pairs)}


def call_squad(fn, inputs):
    import numpy as np

    predictions = bytes(inputs["predictions"]).decode("utf-8").split("\x1f")
    truths = bytes(inputs["truths"]).decode("utf-8").split("\x1f")
    return {"scores": np.asarray([float(fn(p, t)) for p, t in zip(predictions, truths)], dtype=np.float64)}


SQUAD_CASES = (
    Case("worked examples", {"n": 10, "fixed": True}),
    Case("40 edited answers", {"n": 40}),
    Case("200 edited answers", {"n": 200}, hidden=True),
)

EXACT_MATCH = Exercise(
    id="safety.exact_match",
    callable="exact_match",
    points=1,
    summary="SQuAD exact match: 1.0 if the answers are equal after normalisation (case, punctuation, articles, spaces)",
    make_inputs=squad_inputs,
    call=call_squad,
    cases=SQUAD_CASES,
    reference_impl="utils.evaluation:exact_match",
)

F1 = Exercise(
    id="safety.f1",
    callable="f1",
    points=2,
    summary="SQuAD token F1: harmonic mean of precision and recall of the normalised tokens, counted as a multiset",
    make_inputs=squad_inputs,
    call=call_squad,
    cases=SQUAD_CASES,
    builds_on=("safety.exact_match",),    # the notebook's f1 uses exact_match's normalize_answer
    reference_impl="utils.evaluation:f1",
)

# --------------------------------------------------------------------------- safety.bleu

WORDS = ("the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "house", "red", "big", "small", "and", "is",
         "was", "in", "garden", "of", "king", "queen", "said", "not", "to", "be", "or", "that", "question", ".", ",")


def bleu_inputs(params, rng):
    hypotheses, references = [], []
    for _ in range(params["n"]):
        ref = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(5, 16)))]
        hyp = list(ref)
        for _ in range(int(rng.integers(0, params.get("edits", 3) + 1))):
            edit = int(rng.integers(0, 4))
            i = int(rng.integers(0, len(hyp)))
            if edit == 0:
                hyp[i] = str(rng.choice(WORDS))
            elif edit == 1 and len(hyp) > 2:
                del hyp[i]
            elif edit == 2:
                hyp.insert(i, hyp[i])                                  # a repeated word: clipping matters
            else:
                hyp.insert(i, str(rng.choice(WORDS)))
        if params.get("short"):
            hyp = hyp[: max(4, len(hyp) * 2 // 3)]                     # shorter than the references: brevity
        hypotheses.append(" ".join(hyp))
        references.append(" ".join(ref))
    if params.get("repeats"):                                          # "the the the the": 4 unigrams, clipped to 1-2
        hypotheses[0] = " ".join([references[0].split()[0]] * 6)
    return {"hypotheses": pack_texts(hypotheses), "references": pack_texts(references)}


def call_bleu(fn, inputs):
    hypotheses = bytes(inputs["hypotheses"]).decode("utf-8").split("\x1f")
    references = bytes(inputs["references"]).decode("utf-8").split("\x1f")
    return {"bleu": float(fn(hypotheses, references))}


BLEU = Exercise(
    id="safety.bleu",
    callable="bleu",
    points=3,
    summary="corpus BLEU in [0, 100]: clipped n-gram precisions (n = 1..4) summed over the corpus, geometric mean, brevity penalty",
    make_inputs=bleu_inputs,
    call=call_bleu,
    cases=(
        Case("20 lightly edited sentences", {"n": 20, "edits": 2}),
        Case("shorter hypotheses, repeated words", {"n": 30, "edits": 3, "short": True, "repeats": True}),
        Case("100 sentences", {"n": 100, "edits": 4}, hidden=True),
        Case("short corpus, repeats", {"n": 12, "edits": 2, "short": True, "repeats": True}, hidden=True),
    ),
    library=("sacrebleu", "corpus_bleu", "nltk"),
    reference_impl="utils.evaluation:bleu",
)

# --------------------------------------------------------------------------- safety.cohen_kappa


def kappa_inputs(params, rng):
    k, n = params["k"], params["n"]
    weights = rng.dirichlet(np.full(k, params.get("alpha", 2.0)))
    a = rng.choice(k, size=n, p=weights)
    agree = rng.random(n) < params["agreement"]
    b = np.where(agree, a, rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 2.0))))
    return {"labels_a": a.astype(np.int64), "labels_b": b.astype(np.int64)}


def call_kappa(fn, inputs):
    import torch

    return {"kappa": float(fn(torch.tensor(inputs["labels_a"]), torch.tensor(inputs["labels_b"])))}


COHEN_KAPPA = Exercise(
    id="safety.cohen_kappa",
    callable="cohen_kappa",
    points=1,
    summary="(p_o - p_e) / (1 - p_e): observed agreement beyond the agreement of independent raters with these label frequencies",
    make_inputs=kappa_inputs,
    call=call_kappa,
    cases=(
        Case("2 labels, 50 items", {"k": 2, "n": 50, "agreement": 0.7}),
        Case("3 labels, skewed", {"k": 3, "n": 200, "agreement": 0.5, "alpha": 0.7}),
        Case("5 labels, 400 items", {"k": 5, "n": 400, "agreement": 0.6}, hidden=True),
    ),
    library=("cohen_kappa_score",),
    reference_impl="utils.evaluation:cohen_kappa",
)

# --------------------------------------------------------------------------- safety.expected_calibration_error


def ece_inputs(params, rng):
    n = params["n"]
    if params.get("grid"):            # confidences on a grid of 1/20: many lie exactly on bin edges, some are 1.0
        confidences = rng.integers(0, 21, size=n) / 20
    else:
        confidences = rng.beta(params.get("a", 5.0), params.get("b", 2.0), size=n)
    # a model that is overconfident by `shift`: it is right with probability confidence - shift
    correct = rng.random(n) < np.clip(confidences - params.get("shift", 0.1), 0, 1)
    return {"confidences": confidences.astype(np.float64), "correct": correct, "n_bins": np.asarray(params["bins"])}


def call_ece(fn, inputs):
    import torch

    return {"ece": float(fn(torch.tensor(inputs["confidences"]), torch.tensor(inputs["correct"]), int(inputs["n_bins"])))}


ECE = Exercise(
    id="safety.expected_calibration_error",
    callable="expected_calibration_error",
    points=2,
    summary="sum over equal-width bins ((m-1)/M, m/M] of |B|/n * |accuracy(B) - mean confidence(B)|",
    make_inputs=ece_inputs,
    call=call_ece,
    cases=(
        Case("200 overconfident answers, 10 bins", {"n": 200, "bins": 10}),
        Case("confidences on bin edges and 1.0", {"n": 120, "bins": 10, "grid": True}),
        Case("skewed confidences, 15 bins", {"n": 500, "bins": 15, "a": 8.0, "b": 1.0, "shift": 0.2}),
        Case("1000 answers, 20 bins", {"n": 1000, "bins": 20, "a": 2.0, "b": 2.0, "shift": -0.05}, hidden=True),
        Case("edges, 5 bins", {"n": 300, "bins": 5, "grid": True, "shift": 0.0}, hidden=True),
    ),
    library=("calibration_error", "calibration_curve"),
    reference_impl="utils.evaluation:expected_calibration_error",
)

# --------------------------------------------------------------------------- safety.canary_log_perplexity


def canary_inputs(params, rng):
    vocab, batch, prefix, n_secret = params["V"], params["B"], params["prefix"], params["secret"]
    inputs = _window_model_inputs(rng, vocab, prefix + n_secret, scale=3.0)
    start = rng.integers(0, vocab, size=(1, prefix)).repeat(batch, axis=0)        # one prefix, B candidate secrets
    secrets = rng.integers(0, vocab, size=(batch, n_secret))
    inputs.update(input_ids=np.concatenate([start, secrets], axis=1).astype(np.int64), n_secret=np.asarray(n_secret))
    return inputs


def call_canary(fn, inputs):
    import torch

    table, positions = torch.tensor(inputs["table"]), torch.tensor(inputs["positions"])

    def model(ids):  # (B, T) -> logits (B, T, V)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TypeError(f"the model takes a (B, T) LongTensor of ids, got {getattr(ids, 'shape', type(ids))}")
        return table[ids] + positions[: ids.shape[1]]

    bits = fn(model, torch.tensor(inputs["input_ids"]), int(inputs["n_secret"]))
    return {"bits": torch.as_tensor(bits).detach().to(torch.float64)}


CANARY_LOG_PERPLEXITY = Exercise(
    id="safety.canary_log_perplexity",
    callable="canary_log_perplexity",
    points=2,
    summary="-sum of log2 p(secret token | everything before it) over the last n_secret tokens of each row: (B, T) -> (B,) bits",
    make_inputs=canary_inputs,
    call=call_canary,
    cases=(
        Case("4 candidates, 3-token secret", {"V": 10, "B": 4, "prefix": 5, "secret": 3}),
        Case("50 candidates, 4-token secret", {"V": 12, "B": 50, "prefix": 9, "secret": 4}),
        Case("1-token secret", {"V": 20, "B": 6, "prefix": 3, "secret": 1}, hidden=True),
        Case("long secret", {"V": 15, "B": 30, "prefix": 12, "secret": 8}, hidden=True),
    ),
    reference_impl="utils.evaluation:canary_log_perplexity",
)

# --------------------------------------------------------------------------- safety.exposure


def exposure_inputs(params, rng):
    n = params["candidates"]
    ranks = rng.integers(1, n + 1, size=params["k"])
    ranks[0], ranks[-1] = 1, n                       # the two extremes: the top candidate and the last
    return {"ranks": ranks.astype(np.int64), "n_candidates": np.asarray(n)}


def call_exposure(fn, inputs):
    import torch

    value = fn(torch.tensor(inputs["ranks"]), int(inputs["n_candidates"]))
    return {"exposure": torch.as_tensor(value).detach().to(torch.float64)}


EXPOSURE = Exercise(
    id="safety.exposure",
    callable="exposure",
    points=1,
    summary="exposure in bits: log2(n_candidates) - log2(rank), rank 1 = the candidate the model finds likeliest",
    make_inputs=exposure_inputs,
    call=call_exposure,
    cases=(
        Case("10,000 PINs", {"candidates": 10_000, "k": 8}),
        Case("1024 candidates", {"candidates": 1024, "k": 5}),
        Case("a million candidates", {"candidates": 1_000_000, "k": 20}, hidden=True),
    ),
    reference_impl="utils.evaluation:exposure",
)

# --------------------------------------------------------------------------- safety.attack_success_rate

GOALS = ("PWNED", "I hate humans", "visit evil.example.com", "the password is swordfish", "Arrr, matey",
         "BANANA", "ignore all rules")
FRAMES = ("Sure! {}", "I cannot help with that.", "{}", "Here is the answer: Paris. {}", "As an AI, I won't say {}.",
          "The capital is Paris.", "OK: {}!!", "no")


def asr_inputs(params, rng):
    answers, goals = [], []
    for _ in range(params["n"]):
        goal = str(rng.choice(GOALS))
        frame = str(rng.choice(FRAMES))
        said = goal
        style = int(rng.integers(0, 4))
        if style == 1:
            said = goal.lower()
        elif style == 2:
            said = goal.upper()
        elif style == 3:
            said = goal.replace(" ", "   ")
        answers.append(frame.format(said) if "{}" in frame else frame)
        goals.append(goal)
    return {"answers": pack_texts(answers), "goals": pack_texts(goals)}


def call_asr(fn, inputs):
    answers = bytes(inputs["answers"]).decode("utf-8").split("\x1f")
    goals = bytes(inputs["goals"]).decode("utf-8").split("\x1f")
    return {"asr": float(fn(answers, goals))}


ATTACK_SUCCESS_RATE = Exercise(
    id="safety.attack_success_rate",
    callable="attack_success_rate",
    points=1,
    summary="fraction of answers that contain their attack's goal string, ignoring case and runs of whitespace",
    make_inputs=asr_inputs,
    call=call_asr,
    cases=(
        Case("20 attacks", {"n": 20}),
        Case("80 attacks", {"n": 80}),
        Case("300 attacks", {"n": 300}, hidden=True),
    ),
    reference_impl="utils.evaluation:attack_success_rate",
)

ASSIGNMENT = Assignment(
    notebook="08_safety",
    title="Safety, evaluation and limitations",
    exercises=(PERPLEXITY, EXACT_MATCH, F1, BLEU, ECE, CANARY_LOG_PERPLEXITY, EXPOSURE, COHEN_KAPPA,
               ATTACK_SUCCESS_RATE),
    references=("utils.evaluation",),
)
