"""The reference solutions of notebook 05 (the decoding half): generate with a KV cache, logits
processors, sampling, beam search, speculative decoding and a choice-set constraint.

Every function decodes with any model of the course's **model interface** (``utils.llama``):
``model(input_ids (B, T), cache=None) -> logits (B, T, V)`` and ``model.new_cache()``. The
grader runs them on ``transformers``' ``LlamaForCausalLM`` behind a five-line adapter, and
checks each against the ``transformers`` implementation of the same thing (``generate``,
``TopPLogitsWarper``, ...).

While notebook 05 is graded the sandbox leaves this module out (it holds the answers).

>>> import torch
>>> from utils.llama import Llama, LlamaShape
>>> model = Llama(LlamaShape(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
>>> ids = torch.randint(0, 64, (1, 5))
>>> torch.equal(generate(model, ids, 8), generate(model, ids, 8, use_cache=False))
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- generate


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, eos_token_id=None, use_cache=True, next_token=None):
    """Decode ``max_new_tokens`` tokens after ``input_ids`` (B, T): returns (B, T + n) with the prompt.

    Greedy (the argmax at each step) unless ``next_token(logits (B, V), ids (B, t)) -> (B,)`` picks
    the token. With ``use_cache`` the prompt is fed once (prefill), then one token per step; without
    it, the whole sequence is fed at every step. A row that has produced ``eos_token_id`` is done:
    it is filled with ``eos_token_id``, and decoding stops when every row is done.
    """
    cache = model.new_cache() if use_cache else None
    ids, feed = input_ids, input_ids
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)   # (B,)
    for _ in range(max_new_tokens):
        logits = model(feed, cache=cache)[:, -1]                                         # (B, V): the last position
        token = logits.argmax(-1) if next_token is None else next_token(logits, ids)     # (B,)
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            done |= token == eos_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)                                    # (B, t + 1)
        feed = token[:, None] if use_cache else ids
        if done.all():
            break
    return ids


# --------------------------------------------------------------------------- logits processors


def top_k_filter(logits, k):
    """Keep the k largest logits of each row (and every logit tied with the k-th), -inf elsewhere: (B, V) -> (B, V)."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]         # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus filtering: keep the most probable tokens until their total probability reaches p
    (at least one token), -inf elsewhere: (B, V) -> (B, V)."""
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)                                # (B, V)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs                                 # (B, V): mass of better tokens
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False                                                         # the top token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)                             # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits, min_p):
    """Keep tokens whose probability is at least min_p times the top token's, -inf elsewhere: (B, V) -> (B, V)."""
    probs = logits.softmax(-1)
    threshold = min_p * probs.amax(-1, keepdim=True)                                     # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def repetition_penalty(logits, input_ids, penalty):
    """CTRL's penalty (Keskar et al., 2019) on every token already in ``input_ids`` (B, T): a positive
    logit is divided by ``penalty``, a negative one multiplied, so both get less likely: (B, V) -> (B, V)."""
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, input_ids, True)       # (B, V)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def sample(logits, generator=None, temperature=1.0):
    """One token per row from softmax(logits / temperature), drawn with ``generator``: (B, V) -> (B,).

    ``temperature == 0`` is greedy (the argmax). Tokens at -inf are never drawn.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)                                  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)                  # (B,)


# --------------------------------------------------------------------------- beam search


@torch.no_grad()
def beam_search(model, input_ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    """Beam search as ``transformers``' ``generate(num_beams=..., do_sample=False, early_stopping=True)``.

    input_ids (1, T). Keeps the ``num_beams`` most probable partial sequences (sum of token
    log-probabilities). At each step the best ``2 * num_beams`` (beam, token) continuations are
    ranked; among the first ``num_beams`` of them, those that end in EOS (or reach
    ``max_new_tokens``) become *finished* hypotheses, scored sum_logprobs / generated_length **
    length_penalty; the best ``num_beams`` continuations that are not finished go on. Decoding stops
    when ``num_beams`` hypotheses are finished; returns the best one, (1, T + its length).
    """
    beams = input_ids                                                  # (n, t): the running beams
    scores = torch.zeros(1)                                            # (n,): their log-probabilities
    finished: list[tuple[float, torch.Tensor]] = []                    # (normalised score, sequence)
    for step in range(1, max_new_tokens + 1):
        logprobs = torch.log_softmax(model(beams)[:, -1].float(), -1)  # (n, V)
        V = logprobs.shape[-1]
        totals = (scores[:, None] + logprobs).flatten()                # (n * V,)
        top_scores, top_index = totals.topk(2 * num_beams)             # the best 2 * num_beams continuations
        next_beams, next_scores = [], []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            beam, token = divmod(index, V)
            sequence = torch.cat([beams[beam], torch.tensor([token])])
            if (eos_token_id is not None and token == eos_token_id) or step == max_new_tokens:
                if rank < num_beams:
                    finished.append((score / step ** length_penalty, sequence))
            elif len(next_beams) < num_beams:
                next_beams.append(sequence)
                next_scores.append(score)
        finished = sorted(finished, key=lambda item: -item[0])[:num_beams]
        if len(finished) == num_beams or not next_beams:
            break
        beams, scores = torch.stack(next_beams), torch.tensor(next_scores)
    return finished[0][1][None]


# --------------------------------------------------------------------------- speculative decoding


@torch.no_grad()
def speculative_generate(model, draft, input_ids, max_new_tokens, k=4, eos_token_id=None):
    """Greedy speculative decoding (Leviathan et al., 2023; Chen et al., 2023): the same tokens as
    ``generate(model, ...)``, in fewer calls of ``model``. Returns ``(ids (1, T + n), acceptance_rate)``.

    Each round the cheap ``draft`` proposes ``k`` tokens greedily; ``model`` scores them all in one
    call (the prompt's missing tokens, then the k proposals); the longest prefix of proposals that
    ``model`` would itself have chosen is accepted, plus ``model``'s own next token (a correction,
    or a bonus when all k were right). Both caches are cropped back to the accepted text.
    acceptance_rate = accepted proposals / proposals made.
    """
    ids = input_ids
    target_cache, draft_cache = model.new_cache(), draft.new_cache()
    accepted = proposed = 0
    while ids.shape[1] - input_ids.shape[1] < max_new_tokens:
        n = ids.shape[1]
        proposals, feed = [], ids[:, draft_cache.get_seq_length():]               # what the draft has not seen
        for _ in range(k):
            token = draft(feed, cache=draft_cache)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            proposals.append(token)
            feed = token
        proposals = torch.cat(proposals, dim=1)                                    # (1, k)
        seen = target_cache.get_seq_length()
        logits = model(torch.cat([ids[:, seen:], proposals], dim=1), cache=target_cache)   # (1, n - seen + k, V)
        choices = logits[:, n - seen - 1:].argmax(-1)                              # (1, k + 1): the model's picks
        a = 0
        while a < k and proposals[0, a] == choices[0, a]:
            a += 1
        accepted, proposed = accepted + a, proposed + k
        new = torch.cat([proposals[:, :a], choices[:, a:a + 1]], dim=1)            # (1, a + 1)
        new = new[:, :max_new_tokens - (n - input_ids.shape[1])]
        if eos_token_id is not None and (new[0] == eos_token_id).any():
            new = new[:, :int((new[0] == eos_token_id).nonzero()[0]) + 1]
            ids = torch.cat([ids, new], dim=1)
            break
        ids = torch.cat([ids, new], dim=1)
        target_cache.crop(n + a)                       # keep the accepted text; its last new token is fed next round
        draft_cache.crop(min(draft_cache.get_seq_length(), n + a))
    return ids, accepted / max(proposed, 1)


class PromptLookup:
    """A draft "model" with no weights (prompt-lookup decoding, Saxena, 2023): it predicts the token that
    followed the last earlier occurrence of the current ``ngram`` tokens, as one-hot logits.

    Free to run, and right whenever the output copies its input (code edits, quotes, summaries).
    """

    def __init__(self, vocab_size: int, ngram: int = 3):
        self.vocab_size, self.ngram = vocab_size, ngram

    class Cache:
        def __init__(self):
            self.ids = torch.zeros(1, 0, dtype=torch.long)

        def get_seq_length(self, layer_idx=0):
            return self.ids.shape[1]

        def crop(self, length):
            self.ids = self.ids[:, :length]

    def new_cache(self):
        return PromptLookup.Cache()

    def __call__(self, input_ids, cache=None):
        if cache is not None:
            cache.ids = torch.cat([cache.ids, input_ids], dim=1)
            input_ids = cache.ids
        sequence = input_ids[0].tolist()
        guess = sequence[-1]                                   # no match: repeat the last token
        for n in range(min(self.ngram, len(sequence) - 1), 0, -1):
            tail = sequence[-n:]
            for start in range(len(sequence) - n - 1, -1, -1):
                if sequence[start:start + n] == tail:
                    guess = sequence[start + n]
                    break
            else:
                continue
            break
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab_size)
        logits[:, -1, guess] = 1.0
        return logits


# --------------------------------------------------------------------------- structured output


class ChoiceLogitsProcessor:
    """Constrain generation to one of ``choices`` (lists of token ids), then EOS: a ``transformers``
    ``LogitsProcessor`` (``generate(..., logits_processor=LogitsProcessorList([...]))``).

    The tokens generated so far, ``input_ids[:, prompt_length:]``, are a prefix of some choices; the
    allowed next tokens are those that continue one of them, plus EOS when the prefix is a whole
    choice. Every other logit becomes -inf. The choices are stored as a trie (nested dicts).
    """

    END = -1                                             # the trie key that marks a complete choice

    def __init__(self, choices, prompt_length, eos_token_id):
        self.prompt_length, self.eos_token_id = prompt_length, eos_token_id
        self.trie: dict = {}
        for choice in choices:
            node = self.trie
            for token in choice:
                node = node.setdefault(int(token), {})
            node[self.END] = {}

    def allowed(self, generated: list[int]) -> list[int]:
        node = self.trie
        for token in generated:
            if token not in node:
                return [self.eos_token_id]               # off the trie (cannot happen under the constraint)
            node = node[token]
        return [self.eos_token_id if token == self.END else token for token in node]

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            mask[row, self.allowed(input_ids[row, self.prompt_length:].tolist())] = 0.0
        return scores + mask
