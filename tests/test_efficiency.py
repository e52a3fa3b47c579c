"""Notebook 09 without running the notebook: its grading, its references against outside
measurements, the shared inference helpers and the completion server.

The references in ``utils.efficiency`` are the course's own code, so each is checked against
something it did not write: the bytes of a real ``DynamicCache``, PyTorch's ``FlopCounterMode`` on a
real Llama decode step, ``torch.quantize_per_channel``'s integers and ``torch.distributions``' KL.
The server is tested with a tiny random Llama and SmolLM2's tokenizer (no weights to load): bad
bodies, a client that disconnects mid-stream, a full queue, and a batch that must give each request
what it would get alone.
"""
from __future__ import annotations

import threading
import time
import warnings

import httpx
import pytest
import torch
import torch.nn as nn

from autograder.manifests import assignment, exercise
from benchmarks.common import solution_namespace
from utils import efficiency, inference, serving
from conftest import outcomes

ASSIGNMENT = assignment("09_efficiency")


def hints(ex_id, fn):
    """The messages of the failing cases of a wrong implementation (at least one must fail)."""
    failures = [message for _, passed, message in outcomes(exercise(ex_id), fn) if not passed]
    assert failures, f"{ex_id}: a wrong implementation passed every case"
    return " ".join(failures)


# ----------------------------------------------------------------------------- grading


@pytest.fixture(scope="module")
def solution():
    return solution_namespace("09_efficiency")


@pytest.mark.parametrize("secret", ["llm-course-default-secret", "another secret"])
def test_the_solutions_pass_every_case(solution, monkeypatch, secret):
    monkeypatch.setenv("AUTOGRADER_SECRET", secret)
    for ex in ASSIGNMENT.exercises:
        failures = [(name, message) for name, passed, message in outcomes(ex, solution[ex.callable]) if not passed]
        assert not failures, (ex.id, failures)


def test_the_references_in_utils_pass_every_case():
    for ex in ASSIGNMENT.exercises:
        module, name = ex.reference_impl.split(":")
        assert module == "utils.efficiency"
        failures = [(case, message) for case, passed, message in outcomes(ex, getattr(efficiency, name)) if not passed]
        assert not failures, (ex.id, failures)


def test_kv_cache_mistakes_get_their_hints():
    def all_heads(config, batch, seq_len, dtype_bytes=2):
        return 2 * config.num_hidden_layers * batch * seq_len * config.num_attention_heads * config.head_dim * dtype_bytes

    def k_only(config, batch, seq_len, dtype_bytes=2):
        return efficiency.kv_cache_bytes(config, batch, seq_len, dtype_bytes) // 2

    assert "num_key_value_heads" in hints("efficiency.kv_cache_bytes", all_heads)
    assert "K AND V" in hints("efficiency.kv_cache_bytes", k_only)
    assert "int" in hints("efficiency.kv_cache_bytes", lambda c, b, t, d=2: "lots")


def test_decode_step_mistakes_get_their_hints():
    def no_attention(config, seq_len, dtype_bytes=4):
        weights = efficiency.matmul_weights(config)
        return 2 * weights, weights * dtype_bytes

    def one_flop_per_mac(config, seq_len, dtype_bytes=4):
        flops, n_bytes = efficiency.decode_flops_and_bytes(config, seq_len, dtype_bytes)
        return flops // 2, n_bytes

    assert "attention over the cache" in hints("efficiency.decode_flops_and_bytes", no_attention)
    assert "2 FLOPs" in hints("efficiency.decode_flops_and_bytes", one_flop_per_mac)


def test_int8_mistakes_get_their_hints():
    def truncating(w, dim=None):
        q, scale = efficiency.quantize_absmax_int8(w, dim)
        return (w / scale).clamp(-127, 127).to(torch.int8), scale

    def by_128(w, dim=None):
        _, scale = efficiency.quantize_absmax_int8(w, dim)
        scale = scale * 127 / 128
        return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale

    def no_zero_guard(w, dim=None):
        others = [a for a in range(w.dim()) if dim is not None and a != dim]
        amax = w.abs().amax() if dim is None else w.abs().amax(dim=others, keepdim=True)
        scale = amax / 127
        return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale

    def as_int64(w, dim=None):
        q, scale = efficiency.quantize_absmax_int8(w, dim)
        return q.long(), scale

    assert "torch.round" in hints("efficiency.quantize_absmax_int8", truncating)
    assert "127" in hints("efficiency.quantize_absmax_int8", by_128)
    assert "scale 1" in hints("efficiency.quantize_absmax_int8", no_zero_guard)
    assert "torch.int8" in hints("efficiency.quantize_absmax_int8", as_int64)


def test_int4_mistakes_get_their_hints():
    def high_first(w, group_size=128):
        packed, scale, minimum = efficiency.quantize_int4_groupwise(w, group_size)
        return (packed >> 4) | ((packed & 15) << 4), scale, minimum

    def unpacked(w, group_size=128):
        packed, scale, minimum = efficiency.quantize_int4_groupwise(w, group_size)
        return efficiency.unpack_int4(packed), scale, minimum

    def by_16(w, group_size=128):
        out_features, in_features = w.shape
        groups = w.reshape(out_features, -1, group_size)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = (high - low) / 16
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).reshape(w.shape)
        return q[:, 0::2] | (q[:, 1::2] << 4), scale, low

    assert "low nibble" in hints("efficiency.quantize_int4_groupwise", high_first)
    assert "two 4-bit values per byte" in hints("efficiency.quantize_int4_groupwise", unpacked)
    assert "15 steps" in hints("efficiency.quantize_int4_groupwise", by_16)

    def no_minimum(packed, scale, minimum, group_size=128):
        return efficiency.dequantize_int4_groupwise(packed, scale, torch.zeros_like(minimum), group_size)

    assert "minimum" in hints("efficiency.dequantize_int4_groupwise", no_minimum)


def test_quant_linear_mistakes_get_their_hints():
    class KeepsFloat(nn.Module):
        def __init__(self, linear, bits=8, group_size=128):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x)

    class NoScale(efficiency.QuantLinear):
        def forward(self, x):
            q = self.qweight.float() if self.bits == 8 else efficiency.unpack_int4(self.qweight).float()
            return nn.functional.linear(x, q, self.bias)

    assert "do not store the float one" in hints("efficiency.quant_linear", KeepsFloat)
    assert "dequantize before the matmul" in hints("efficiency.quant_linear", NoScale)


def test_distillation_mistakes_get_their_hints():
    def no_t2(s, t, labels, T=2.0, alpha=0.5):
        V = s.shape[-1]
        soft = nn.functional.kl_div(nn.functional.log_softmax(s.reshape(-1, V) / T, -1),
                                    nn.functional.log_softmax(t.detach().reshape(-1, V) / T, -1), log_target=True,
                                    reduction="batchmean")
        return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(s.reshape(-1, V), labels.reshape(-1))

    def teacher_not_detached(s, t, labels, T=2.0, alpha=0.5):
        V = s.shape[-1]
        soft = nn.functional.kl_div(nn.functional.log_softmax(s.reshape(-1, V) / T, -1),
                                    nn.functional.log_softmax(t.reshape(-1, V) / T, -1), log_target=True,
                                    reduction="batchmean")
        return alpha * T * T * soft + (1 - alpha) * nn.functional.cross_entropy(s.reshape(-1, V), labels.reshape(-1))

    assert "T**2" in hints("efficiency.distillation_loss", no_t2)
    assert "detach" in hints("efficiency.distillation_loss", teacher_not_detached)


# ----------------------------------------------------------------------------- references against outside measurements


def tiny_llama(vocab_size=97, tie=True, layers=2, heads=4, kv_heads=2, hidden=32, seed=0, **options):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         tie_word_embeddings=tie, **options)
    return LlamaForCausalLM(config).eval()


def test_kv_cache_bytes_is_the_size_of_a_real_cache():
    model = tiny_llama()
    ids = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    stored = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                 for layer in cache.layers)
    assert stored == efficiency.kv_cache_bytes(model.config, batch=3, seq_len=11, dtype_bytes=4)


def test_decode_flops_are_what_pytorch_counts_in_a_decode_step():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llama(tie=False, attn_implementation="eager")    # attention as matmuls, which the counter sees
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        with FlopCounterMode(display=False) as counter:
            model(torch.tensor([[5]]), cache=cache, use_cache=True)     # the cache now holds 10 positions
    flops, _ = efficiency.decode_flops_and_bytes(model.config, seq_len=10)
    assert counter.get_total_flops() == flops


def test_int8_integers_are_pytorchs_quantize_per_channel():
    w = torch.randn(16, 40) * torch.logspace(-2, 0, 16)[:, None]
    q, scale = efficiency.quantize_absmax_int8(w, dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # PyTorch's quantized tensors are deprecated, still right
        theirs = torch.quantize_per_channel(w, scale.flatten().double(), torch.zeros(16, dtype=torch.long), 0,
                                            torch.qint8)
    assert torch.equal(q, theirs.int_repr())
    assert (efficiency.dequantize(q, scale) - w).abs().le(scale / 2 + 1e-7).all()


def test_int4_round_trip_error_is_at_most_half_a_step_and_a_4bit_grid_comes_back_exactly():
    w = torch.randn(8, 64)
    packed, scale, minimum = efficiency.quantize_int4_groupwise(w, 32)
    w_hat = efficiency.dequantize_int4_groupwise(packed, scale, minimum, 32)
    assert (w_hat - w).abs().reshape(8, 2, 32).le(scale[..., None] / 2 + 1e-6).all()
    grid = torch.randint(0, 16, (8, 64)).float() * 0.03 - 0.2     # already on a 4-bit grid (as Q4_1 blocks are)
    grid[:, 0::32], grid[:, 1::32] = -0.2, 15 * 0.03 - 0.2       # every group uses levels 0 and 15
    again = efficiency.dequantize_int4_groupwise(*efficiency.quantize_int4_groupwise(grid, 32), 32)
    assert torch.allclose(again, grid, atol=1e-6)


def test_distillation_kl_is_torch_distributions_kl():
    s, t = torch.randn(6, 9), torch.randn(6, 9)
    labels = torch.randint(0, 9, (6,))
    T = 3.0
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t / T),
                                                 torch.distributions.Categorical(logits=s / T)).mean()
    assert torch.allclose(efficiency.distillation_loss(s, t, labels, T=T, alpha=1.0), T * T * expected, atol=1e-6)


# ----------------------------------------------------------------------------- inference helpers


def test_quantize_model_shares_the_tied_matrix_and_stays_close():
    model = tiny_llama(hidden=64)
    ids = torch.randint(0, 97, (2, 12))
    for bits, dequantize, ratio in ((8, efficiency.dequantize, 0.30), (4, efficiency.dequantize_int4_groupwise, 0.30)):
        quantized = inference.quantize_model(
            model, lambda name, linear: efficiency.QuantLinear(linear, bits, group_size=16), embedding_dequantize=dequantize)
        assert isinstance(quantized.get_input_embeddings(), inference.QuantizedEmbedding)
        assert inference.model_bytes(quantized) < ratio * inference.model_bytes(model)
        with torch.no_grad():
            head = quantized.get_output_embeddings()
            assert torch.allclose(quantized.get_input_embeddings()(ids), head.weight_hat()[ids])
            assert (quantized(ids).logits - model(ids).logits).abs().max() < (0.05 if bits == 8 else 0.5)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert inference.model_bytes(model) == sum(p.numel() * 4 for p in model.parameters()) + buffers   # tied: once


def test_library_int8_and_skipping_layers():
    model = tiny_llama()
    names = inference.linear_names(model)
    assert names[-1] == "lm_head" and len(names) == 2 * 7 + 1
    quantized = inference.library_int8(model, skip=lambda name: name.endswith("down_proj"))
    kinds = {name: type(module) for name, module in quantized.named_modules() if name in names}
    assert kinds["model.layers.0.mlp.down_proj"] is nn.Linear and kinds["model.layers.0.self_attn.q_proj"] is not nn.Linear
    assert 0 < inference.library_bytes(quantized) < inference.model_bytes(model)
    absmax = inference.input_absmax(model, torch.randint(0, 97, (1, 8)))
    assert set(absmax) == set(names) and all(value > 0 for value in absmax.values())


def test_greedy_decode_matches_generate():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 5))
    new, times = inference.greedy_decode(model, ids, 6)
    expected = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)[:, 5:]
    assert torch.equal(new, expected) and len(times) == 5


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from utils.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def server_model(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer))
    model.config.eos_token_id = None                      # random weights: never stop early
    return model


def test_completions_json_stream_and_batches_agree(server_model, tokenizer):
    with serving.LocalServer(server_model, tokenizer, max_batch_size=4, max_wait_ms=50) as server:
        answer = serving.complete(server.url, "The king said", max_tokens=6)
        assert answer["object"] == "text_completion" and answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 6
        assert "".join(serving.stream(server.url, "The king said", max_tokens=6)) == answer["choices"][0]["text"]
        prompts = ["The king said", "a much longer prompt than the other one, to need padding", "x"]
        results = {}
        threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, serving.complete(server.url, p, max_tokens=6)))
                   for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    assert stats["largest_batch"] >= 2, stats                    # they were decoded together ...
    assert results["The king said"]["choices"][0]["text"] == answer["choices"][0]["text"]   # ... as if alone

@pytest.mark.parametrize("continuous", [True, False])
def test_a_request_that_arrives_mid_batch_joins_it_and_decodes_as_if_alone(server_model, tokenizer, continuous):
    """Continuous batching: the newcomers' cache rows are left-padded to the running length (a longer
    and a shorter prompt than the running one); their greedy text must not change. Static batching
    (``continuous=False``) makes them wait until the running batch ends."""
    newcomers = ["a much longer prompt than the running one, so the running rows get padded", "y"]
    with serving.LocalServer(server_model, tokenizer, max_batch_size=4, max_wait_ms=1, max_tokens_limit=5000,
                             continuous=continuous) as server:
        alone = {p: serving.complete(server.url, p, max_tokens=6)["choices"][0]["text"] for p in newcomers}
        results = {}
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "The king said", "max_tokens": 4000, "stream": True}) as response:
            lines = response.iter_lines()
            next(lines)                                             # the long request is decoding now
            threads = [threading.Thread(target=lambda p=p: results.__setitem__(
                p, serving.complete(server.url, p, max_tokens=6)["choices"][0]["text"])) for p in newcomers]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(results) < 2 and time.monotonic() < deadline and (continuous or
                    httpx.get(f"{server.url}/stats", timeout=10).json()["pending"] < 3):
                time.sleep(0.05)
            during = httpx.get(f"{server.url}/stats", timeout=10).json()
            answered_during = dict(results)
        for thread in threads:                                      # the long stream is closed: they run now
            thread.join(60)
    if continuous:
        assert during["joined"] == 2 and during["largest_batch"] >= 2, during
        assert answered_during == alone                             # answered while the long one ran
    else:
        assert during["joined"] == 0 and during["largest_batch"] == 1 and not answered_during, during
    assert results == alone


def test_bad_bodies_get_a_400_that_names_the_field_and_the_server_goes_on(server_model, tokenizer):
    with serving.LocalServer(server_model, tokenizer, max_tokens_limit=32) as server:
        url = f"{server.url}/v1/completions"
        for body, field in (({"prompt": "", "max_tokens": 4}, "prompt"), ({"prompt": "hi", "max_tokens": 1000}, "max_tokens"),
                            ({"max_tokens": 4}, "prompt"), ({"prompt": "hi", "temperature": -1}, "temperature")):
            response = httpx.post(url, json=body, timeout=10)
            assert response.status_code == 400 and field in response.json()["error"]["message"], (body, response.text)
        response = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 400 and "invalid request" in response.json()["error"]["message"]
        assert serving.complete(server.url, "still there?", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server_model, tokenizer):
    with serving.LocalServer(server_model, tokenizer, max_pending=1, max_tokens_limit=10_000) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=30,
                          json={"prompt": "go on", "max_tokens": 5000, "stream": True}) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number >= 4:
                    break                                              # hang up after a few tokens
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/stats", timeout=10).json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = httpx.get(f"{server.url}/stats", timeout=10).json()
        assert stats["pending"] == 0 and stats["cancelled"] == 1, stats
        assert stats["tokens"] < 5000                                  # the abandoned row stopped decoding
        assert serving.complete(server.url, "next", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_a_full_queue_answers_429_at_once(server_model, tokenizer):
    with serving.LocalServer(server_model, tokenizer, max_pending=1, max_tokens_limit=10_000) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=30,
                          json={"prompt": "go on", "max_tokens": 5000, "stream": True}) as response:
            lines = response.iter_lines()                  # keep it: a dropped iterator closes the stream
            first = next(lines)
            stats = httpx.get(f"{server.url}/stats", timeout=10).json()
            refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "me too", "max_tokens": 2}, timeout=10)
        assert refused.status_code == 429 and "busy" in refused.json()["error"]["message"], (first, stats, refused.text)


def test_load_test_counts_tokens_and_batches(server_model, tokenizer):
    with serving.LocalServer(server_model, tokenizer, max_batch_size=8, max_wait_ms=100) as server:
        result = serving.load_test(server.url, ["a", "b c"], n_clients=4, max_tokens=5)
    assert result["tokens"] == 20 and result["largest_batch"] >= 2
    assert result["latency_p95"] >= result["latency_p50"] > 0 and result["throughput"] > 0


def test_machine_load_and_thread_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.getloadavg", lambda: (100.0, 0.0, 0.0))
        assert inference.choose_threads(0) == 1 and torch.get_num_threads() == 1
        assert "1 thread, load 100.0" in inference.machine_load()
        assert inference.choose_threads(2) == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- Run All on the release


def test_window_perplexity_is_exp_of_the_mean_next_token_loss():
    """Computed by hand: position t predicts token t+1, the last position predicts nothing."""
    import math

    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)   # (39, V)
    expected = math.exp(-logprobs.gather(-1, ids[0, 1:, None]).mean().item())
    assert inference.window_perplexity(model, ids) == pytest.approx(expected, rel=1e-5)
