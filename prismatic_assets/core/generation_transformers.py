"""`TransformersGenerator`: chat completions from Hugging Face `generate` (see `core.generation`).

The fallback where vLLM is not installed: the chat template, left padding, and each row
(conversation x completion) sampled with its own seeded generator, so outputs do not
depend on the batch. torch and transformers are imported only when the model loads.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from typing import Any, Sequence

from prismatic_assets.core.generation import (
    BaseGenerator,
    GenerationError,
    Message,
    SamplingConfig,
    Usage,
    check_conversations,
    decoded_completions,
)


class _SeededSampler:
    """A logits processor that samples each row with its own torch.Generator.

    Hugging Face's sampling draws from one global RNG across the batch, so a row's tokens
    would depend on its batch neighbours. Instead this processor draws the token of row r
    from its own generator (temperature, top_p applied here) and returns logits that are
    -inf except at that token, so greedy decoding picks it. Rows with temperature 0 take the
    argmax.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], generators: list[Any]) -> None:
        self.temperatures = temperatures
        self.top_ps = top_ps
        self.generators = generators

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()  # (batch, vocab)
        rows = torch.arange(scores.shape[0], device=scores.device)
        temperatures = torch.tensor(self.temperatures, device=scores.device)  # (batch,)
        probs = torch.softmax(scores / temperatures.clamp_min(1e-6)[:, None], dim=-1)  # (batch, vocab)
        top_ps = torch.tensor(self.top_ps, device=scores.device)  # (batch,)
        if bool((top_ps < 1).any()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= top_ps[:, None]] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        chosen = scores.argmax(dim=-1)  # (batch,) greedy rows keep this
        for r, generator in enumerate(self.generators):
            if self.temperatures[r] > 0:
                chosen[r] = torch.multinomial(probs[r], 1, generator=generator)[0]
        out = torch.full_like(scores, float("-inf"))
        out[rows, chosen] = 0.0
        return out


class TransformersGenerator(BaseGenerator):
    """Hugging Face `generate` with the chat template and left padding; no vLLM needed.

    model: a packaged name, GGUF file, folder or hub id (loaded on first use). device /
    dtype: where and in what precision the weights live. batch_size: rows (conversation x
    completion) decoded together. Sampling is per row with its own seeded generator, so the
    outputs do not depend on batch_size or on the other conversations (up to float rounding
    of padded batches).
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 trust_remote_code: bool = False) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
        from prismatic_assets.core.models import torch_dtype

        torch_dtype(dtype)  # fail now on a misspelt dtype, not after a model load
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.trust_remote_code = bool(trust_remote_code)
        self._model: Any = None
        self._tokenizer: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._closed:
                raise GenerationError(f"TransformersGenerator({self.model_name!r}) is closed: create a new one")
            if self._model is None:
                from prismatic_assets.core.models import load_causal_lm

                model, tokenizer = load_causal_lm(self.model_name, dtype=self.dtype, device=self.device,
                                                  trust_remote_code=self.trust_remote_code)
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError(f"model {self.model_name!r} has no chat template: use an instruction-tuned "
                                     "model, or set tokenizer.chat_template")
                tokenizer.padding_side = "left"
                self._model, self._tokenizer = model, tokenizer
            return self._model, self._tokenizer

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        convs, samplings = check_conversations(conversations, sampling)
        if not convs:
            return []
        model, tokenizer = self._load()
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        # One row per (conversation, completion); unseeded configs get a fresh random base seed.
        bases = [s.seed if s.seed is not None else random.SystemRandom().randrange(2**62) for s in samplings]
        rows = [(c, j) for c, s in enumerate(samplings) for j in range(decoded_completions(s))]
        # Rows with the same max_tokens share batches, so no row decodes past its limit.
        rows.sort(key=lambda row: samplings[row[0]].max_tokens)
        eos_ids = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
        eos_ids.discard(None)
        texts: dict[tuple[int, int], str] = {}
        counts: dict[tuple[int, int], int] = {}
        reasons: dict[tuple[int, int], str] = {}
        prompt_tokens = 0
        began = time.perf_counter()
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            max_new = max(samplings[c].max_tokens for c, _ in batch)
            enc = tokenizer([prompts[c] for c, _ in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            prompt_tokens += int(enc["attention_mask"].sum())
            sampler = _SeededSampler([samplings[c].temperature for c, _ in batch],
                                     [samplings[c].top_p for c, _ in batch],
                                     [torch.Generator(device=model.device).manual_seed(bases[c] + j) for c, j in batch])
            config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1,
                                      eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(**enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
            new = out[:, enc["input_ids"].shape[1]:].tolist()  # (batch, <= max_new)
            for row, tokens in zip(batch, new):
                limit = samplings[row[0]].max_tokens
                end = next((i + 1 for i, t in enumerate(tokens[:limit]) if t in eos_ids), None)
                kept = tokens[:end] if end is not None else tokens[:limit]
                texts[row] = tokenizer.decode(kept, skip_special_tokens=True)
                counts[row] = len(kept)
                reasons[row] = "stop" if end is not None else "length"
        seconds = time.perf_counter() - began
        order = [[(c, j % decoded_completions(s)) for j in range(s.n)] for c, s in enumerate(samplings)]
        self._record(Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(counts.values()),
                           completions=sum(s.n for s in samplings), seconds=seconds,
                           completion_token_counts=tuple(tuple(counts[r] for r in conv) for conv in order),
                           finish_reasons=tuple(tuple(reasons[r] for r in conv) for conv in order)))
        return [[texts[r] for r in conv] for conv in order]

    def close(self) -> None:
        """Drop the model and tokenizer."""
        with self._lock:
            self._model = self._tokenizer = None
            self._closed = True
        gc.collect()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
