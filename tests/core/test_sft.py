"""SFT glue: masking, training smoke tests, checkpoints and resume, settings plumbing.

Most tests train a tiny random-init Llama (built from a config, with SmolLM2's tokenizer and
chat template); one integration test trains the real packaged SmolLM2 for two steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback

from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.sft import (
    SFTSettings,
    _peft_config,
    build_sft_config,
    build_trainer,
    samples_to_dataset,
    train_sft,
)
from prismatic_assets.core.sft_checkpoints import FINAL_DIR, RUN_INFO_FILE, complete_checkpoints

FAST = dict(max_steps=3, learning_rate=1e-3, per_device_batch_size=2, warmup_ratio=0.0,
            max_length=128, save_steps=100, logging_steps=1)


@pytest.fixture(scope="module")
def tokenizer_dir() -> str:
    return resolve_model(PACKAGED_MODEL)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer, saved like a real model folder."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_samples(n: int = 6) -> list[Sample]:
    return [Sample(sample_id=f"t:{i}", prompt=f"What is {i} plus {i + 1}?",
                   response=f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.",
                   answer=str(2 * i + 1)) for i in range(n)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def max_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------------------- masking


def test_prompt_tokens_are_masked_and_do_not_enter_the_loss(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = make_samples(3)
    trainer = build_trainer(model, tok, samples_to_dataset(samples), tmp_path, SFTSettings(**FAST))
    assert len(trainer.train_dataset) == 3
    for sample, example in zip(samples, trainer.train_dataset):
        prompt_ids = tok.apply_chat_template([{"role": "user", "content": sample.prompt}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        ids, labels = example["input_ids"], example["labels"]
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids  # the sequence starts with the exact inference prompt
        assert all(label == -100 for label in labels[:n])  # system, user turn, "<|im_start|>assistant\n"
        assert labels[n:] == ids[n:]  # every response token is learned, including <|im_end|>
        assert tok.decode(ids[n:]).strip() == sample.response + "<|im_end|>"
        assert tok.convert_tokens_to_ids("<|im_end|>") in labels[n:]

        # The model's loss with these labels is the mean cross-entropy over response tokens only.
        with torch.no_grad():
            x = torch.tensor([ids])
            out = model(input_ids=x, labels=torch.tensor([labels]))
            logits = model(input_ids=x).logits[0]  # (seq, vocab)
        targets = torch.tensor(ids[1:])
        per_token = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")  # (seq-1,)
        response_only = per_token[n - 1:].mean()
        everything = per_token.mean()
        assert torch.allclose(out.loss, response_only, atol=1e-5)
        assert not torch.allclose(out.loss, everything, atol=1e-3)


def test_prompt_alone_filling_max_length_is_dropped(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = Sample(sample_id="long", prompt="word " * 200, response="ok")
    trainer = build_trainer(model, tok, samples_to_dataset([long] + make_samples(2)), tmp_path,
                            SFTSettings(**{**FAST, "max_length": 64}))
    assert len(trainer.train_dataset) == 2
    assert all(len(e["input_ids"]) <= 64 for e in trainer.train_dataset)


# ---------------------------------------------------------------------------- training


def test_train_smoke_parameters_change_loss_finite_and_final_generates(tiny_model_dir, tmp_path):
    seen: list[tuple[int, float]] = []
    result = train_sft(str(tiny_model_dir), make_samples(), tmp_path / "run", SFTSettings(**FAST),
                       callbacks=lambda step, loss: seen.append((step, loss)))
    assert result.final_model_dir == tmp_path / "run" / FINAL_DIR
    assert result.steps == 3 and result.train_samples == 6 and result.dropped_samples == 0
    assert result.resumed_from is None and result.seconds > 0
    assert [s for s, _ in result.loss_history] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in result.loss_history)
    assert seen == result.loss_history  # the plain progress hook got every logged step
    assert max_change(weights(tiny_model_dir), weights(result.final_model_dir)) > 1e-4

    # The final folder is a complete model: it reloads and generates.
    model = AutoModelForCausalLM.from_pretrained(result.final_model_dir)
    tok = AutoTokenizer.from_pretrained(result.final_model_dir)
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 1 plus 2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    info = json.loads((result.final_model_dir / RUN_INFO_FILE).read_text())
    assert info["run_key"] == result.run_key and info["num_samples"] == 6
    assert not list((tmp_path / "run").glob(".final-*"))  # no temp folders left


def test_trainer_callback_objects_are_accepted(tiny_model_dir, tmp_path):
    class Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            Count.steps += 1

    train_sft(str(tiny_model_dir), make_samples(4), tmp_path, SFTSettings(**{**FAST, "max_steps": 2}),
              callbacks=[Count()])
    assert Count.steps == 2


class Interrupted(Exception):
    pass


class StopAt(TrainerCallback):
    """Simulates a crash (a killed process) after `step` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"interrupted at step {self.step}")


def test_resume_continues_from_last_checkpoint_and_matches_uninterrupted(tiny_model_dir, tmp_path):
    settings = SFTSettings(**{**FAST, "max_steps": 4, "save_steps": 2})
    samples = make_samples()
    with pytest.raises(Interrupted):
        train_sft(str(tiny_model_dir), samples, tmp_path / "a", settings, callbacks=[StopAt(3)])
    assert [p.name for p in complete_checkpoints(tmp_path / "a")] == ["checkpoint-2"]
    assert not (tmp_path / "a" / FINAL_DIR).exists()

    steps_after_resume: list[int] = []
    resumed = train_sft(str(tiny_model_dir), samples, tmp_path / "a", settings,
                        callbacks=lambda step, loss: steps_after_resume.append(step))
    assert resumed.resumed_from == tmp_path / "a" / "checkpoint-2"
    assert steps_after_resume == [3, 4]  # not from 0
    assert resumed.steps == 4
    assert [s for s, _ in resumed.loss_history] == [1, 2, 3, 4]

    straight = train_sft(str(tiny_model_dir), samples, tmp_path / "b", settings)
    assert max_change(weights(resumed.final_model_dir), weights(straight.final_model_dir)) < 1e-5
    assert [round(v, 4) for _, v in resumed.loss_history] == [round(v, 4) for _, v in straight.loss_history]

    # Re-running a finished run trains no further (the Trainer alone would take a 5th step) ...
    late: list[int] = []
    again = train_sft(str(tiny_model_dir), samples, tmp_path / "b", settings, callbacks=lambda s, _: late.append(s))
    assert again.resumed_from == tmp_path / "b" / "checkpoint-4" and again.steps == 4 and late == []
    assert again.seconds == 0.0 and again.loss_history == straight.loss_history and again.train_samples == 6
    assert max_change(weights(again.final_model_dir), weights(straight.final_model_dir)) == 0
    # ... and a crash between the last checkpoint and `final` is repaired from the checkpoint.
    shutil.rmtree(tmp_path / "b" / FINAL_DIR)
    repaired = train_sft(str(tiny_model_dir), samples, tmp_path / "b", settings)
    assert repaired.steps == 4 and repaired.seconds == 0.0
    assert max_change(weights(repaired.final_model_dir), weights(straight.final_model_dir)) == 0
    assert json.loads((repaired.final_model_dir / RUN_INFO_FILE).read_text())["steps"] == 4


def test_resume_false_discards_checkpoints_and_mismatch_is_refused(tiny_model_dir, tmp_path):
    settings = SFTSettings(**{**FAST, "max_steps": 2, "save_steps": 1})
    samples = make_samples(4)
    train_sft(str(tiny_model_dir), samples, tmp_path, settings)
    assert settings.save_total_limit == 1  # the default keeps only the newest checkpoint
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2"]

    other = dataclasses.replace(settings, learning_rate=5e-4)
    with pytest.raises(ValueError, match=r"different training run.*settings.*resume=False"):
        train_sft(str(tiny_model_dir), samples, tmp_path, other)
    with pytest.raises(ValueError, match=r"data_digest"):
        train_sft(str(tiny_model_dir), samples[:3], tmp_path, settings)

    fresh = train_sft(str(tiny_model_dir), samples, tmp_path, dataclasses.replace(settings, max_steps=1),
                      resume=False)
    assert fresh.resumed_from is None and fresh.steps == 1
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-1"]


def test_incomplete_checkpoint_is_skipped(tmp_path):
    good = tmp_path / "checkpoint-2"
    good.mkdir()
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    half = tmp_path / "checkpoint-4"  # crashed while saving: no trainer state yet
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    torn = tmp_path / "checkpoint-6"
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_st')
    assert complete_checkpoints(tmp_path) == [good]


def test_lora_trains_adapter_only_and_merges_into_final(tiny_model_dir, tmp_path):
    settings = SFTSettings(**{**FAST, "lora": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                              "learning_rate": 1e-2})
    result = train_sft(str(tiny_model_dir), make_samples(), tmp_path, settings)
    before, after = weights(tiny_model_dir), weights(result.final_model_dir)
    assert set(after) == set(before)  # merged: a plain model, no lora_A/lora_B keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(m in k for m in settings.lora_target_modules) for k in changed)
    assert all(math.isfinite(v) for _, v in result.loss_history)
    # A LoRA checkpoint holds only the adapter: re-exporting `final` from it merges again.
    shutil.rmtree(result.final_model_dir)
    again = train_sft(str(tiny_model_dir), make_samples(), tmp_path, settings)
    assert again.seconds == 0.0 and max_change(weights(again.final_model_dir), after) < 1e-6


@pytest.mark.integration
def test_real_packaged_smollm2_two_steps(tmp_path):
    path = resolve_model(PACKAGED_MODEL)
    settings = SFTSettings(max_steps=2, per_device_batch_size=2, max_length=128, learning_rate=1e-4,
                           warmup_ratio=0.0, save_steps=100)
    result = train_sft(path, make_samples(4), tmp_path, settings)
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)
    before = load_file(str(Path(path) / "model.safetensors"))
    after = weights(result.final_model_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[key], after[key])
    assert AutoTokenizer.from_pretrained(result.final_model_dir).chat_template


# ---------------------------------------------------------------------------- settings


# Every public setting reaches TRL: (field, other value, where it lands).
SETTING_CASES = [
    ("max_steps", 7, lambda c, p: c.max_steps),
    ("learning_rate", 1e-4, lambda c, p: c.learning_rate),
    ("per_device_batch_size", 8, lambda c, p: c.per_device_train_batch_size),
    ("gradient_accumulation_steps", 4, lambda c, p: c.gradient_accumulation_steps),
    ("max_length", 256, lambda c, p: c.max_length),
    ("warmup_ratio", 0.3, lambda c, p: c.get_warmup_steps(c.max_steps)),
    ("weight_decay", 0.1, lambda c, p: c.weight_decay),
    ("lr_scheduler_type", "linear", lambda c, p: str(c.lr_scheduler_type)),
    ("bf16", True, lambda c, p: c.bf16),
    ("gradient_checkpointing", True, lambda c, p: c.gradient_checkpointing),
    ("seed", 5, lambda c, p: (c.seed, c.data_seed)),
    ("save_steps", 3, lambda c, p: c.save_steps),
    ("save_total_limit", None, lambda c, p: c.save_total_limit),
    ("logging_steps", 5, lambda c, p: c.logging_steps),
    ("lora", True, lambda c, p: p is not None),
    ("lora_r", 4, lambda c, p: p.r),
    ("lora_alpha", 8, lambda c, p: p.lora_alpha),
    ("lora_dropout", 0.2, lambda c, p: p.lora_dropout),
    ("lora_target_modules", ("q_proj",), lambda c, p: sorted(p.target_modules)),
    ("sharding", "fsdp", lambda c, p: (c.fsdp, c.deepspeed)),
]


def test_every_setting_has_a_case():
    # padding_free lands in the collator, not in SFTConfig: its own tests are in "padding-free" below.
    cases = {name for name, _, _ in SETTING_CASES} | {"padding_free"}
    assert {f.name for f in dataclasses.fields(SFTSettings)} == cases


@pytest.mark.parametrize("name,value,read", SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_each_setting_changes_the_trainer_configuration(name, value, read, tmp_path):
    base = SFTSettings(lora=name.startswith("lora_"))
    changed = dataclasses.replace(base, **{name: value})

    def view(s: SFTSettings):
        return read(build_sft_config(s, tmp_path), _peft_config(s))

    assert view(base) != view(changed)


def test_fixed_trl_choices(tmp_path):
    config = build_sft_config(SFTSettings(), tmp_path)
    assert config.completion_only_loss is True and config.assistant_only_loss is False
    assert config.report_to == [] or config.report_to in ("none", ["none"])  # never an implicit MLflow run
    assert config.bf16 is False and config.gradient_checkpointing is False  # TRL defaults both to True


def test_training_behaviour_follows_settings(tiny_model_dir, tmp_path):
    """max_steps, logging_steps, save_steps, learning_rate and seed change what training produces."""
    samples = make_samples()
    a = train_sft(str(tiny_model_dir), samples, tmp_path / "a",
                  SFTSettings(**{**FAST, "max_steps": 4, "logging_steps": 2, "save_steps": 3,
                                 "save_total_limit": None}))
    assert a.steps == 4 and [s for s, _ in a.loss_history] == [2, 4]
    assert [p.name for p in complete_checkpoints(tmp_path / "a")] == ["checkpoint-3", "checkpoint-4"]

    b = train_sft(str(tiny_model_dir), samples, tmp_path / "b", SFTSettings(**{**FAST, "learning_rate": 1e-5}))
    c = train_sft(str(tiny_model_dir), samples, tmp_path / "c", SFTSettings(**FAST))
    d = train_sft(str(tiny_model_dir), samples, tmp_path / "d", SFTSettings(**{**FAST, "seed": 1}))
    base = weights(tiny_model_dir)
    assert max_change(base, weights(b.final_model_dir)) < max_change(base, weights(c.final_model_dir)) / 10
    assert max_change(weights(c.final_model_dir), weights(d.final_model_dir)) > 1e-6  # other data order


@pytest.mark.parametrize("kwargs,match", [
    ({"max_steps": 0}, "max_steps"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"save_total_limit": 0}, "save_total_limit"),
    ({"lora": True, "lora_target_modules": ()}, "lora_target_modules"),
])
def test_invalid_settings_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTSettings(**kwargs)


def test_bad_samples_are_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_sft("does-not-matter", [], tmp_path, SFTSettings())
    with pytest.raises(ValueError, match=r"sample 'x:1'.*empty"):
        train_sft("does-not-matter", [Sample(sample_id="x:1", prompt="p", response="  ")], tmp_path, SFTSettings())


def test_callbacks_are_normalised_to_trainer_callback_instances():
    from prismatic_assets.core.sft_callbacks import ProgressCallback as _ProgressCallback
    from prismatic_assets.core.sft_callbacks import as_callbacks as _as_callbacks

    class Marker(TrainerCallback):
        pass

    seen = []
    instance = Marker()
    out = _as_callbacks([instance, Marker, lambda step, loss: seen.append((step, loss))])
    assert out[0] is instance
    assert type(out[1]) is Marker  # a class is instantiated, as the Trainer would
    assert isinstance(out[2], _ProgressCallback)
    out[2].on_log(None, type("State", (), {"global_step": 3})(), None, logs={"loss": 0.5})
    assert seen == [(3, 0.5)]
    single = _as_callbacks(instance)
    assert single == [instance]
    assert _as_callbacks(None) == []
    with pytest.raises(TypeError, match="TrainerCallback or a callable"):
        _as_callbacks([42])


# ---------------------------------------------------------------------------- padding-free


def uneven_samples() -> list[Sample]:
    """Responses of very different lengths, so that padding a batch to its longest would waste most of it."""
    return [Sample(sample_id=f"u:{i}", prompt=f"Count to {n}.", response=" ".join(str(k) for k in range(1, n + 1)),
                   answer=str(n)) for i, n in enumerate((2, 40, 7, 25, 3, 60))]


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_padding_free_batch_has_the_padded_batchs_samples_loss_and_gradients(tiny_model_dir, tmp_path, seed):
    """The same samples end to end in one row give the loss and gradients of the padded batch: nothing
    is spent on padding and no sample attends to another (a leak would change the loss)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = samples_to_dataset(uneven_samples())
    results = {}
    for padding_free in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        settings = SFTSettings(**{**FAST, "per_device_batch_size": 3, "seed": seed, "padding_free": padding_free})
        trainer = build_trainer(model, tok, dataset, tmp_path / str(padding_free), settings)
        batch = first_batch(trainer)
        model.train()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=batch["labels"].ne(-100).sum())
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results[padding_free] = batch, loss.item(), grads
        if padding_free:  # the control: one sequence without the restarts lets samples attend to each other
            leaky = {k: v for k, v in batch.items() if k in ("input_ids", "labels")}
            leaky["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
            with torch.no_grad():
                leaky_loss = trainer.compute_loss(model, leaky, num_items_in_batch=batch["labels"].ne(-100).sum())

    padded, padded_loss, padded_grads = results[False]
    flat, flat_loss, flat_grads = results[True]
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    assert padded["input_ids"].shape == (3, max(lengths)) and len(set(lengths)) > 1  # padding was there
    assert flat["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in flat
    rows = [padded["input_ids"][i, :n] for i, n in enumerate(lengths)]
    assert torch.equal(flat["input_ids"][0], torch.cat(rows))  # the same samples, in the same order
    assert flat["position_ids"][0].tolist() == [k for n in lengths for k in range(n)]
    # Every learned token of the padded batch is learned in the flat one, and nothing else.
    assert torch.equal(flat["labels"][0], torch.cat([padded["labels"][i, :n] for i, n in enumerate(lengths)]))
    assert flat_loss == pytest.approx(padded_loss, rel=1e-6)
    assert abs(leaky_loss.item() - padded_loss) > 20 * 1e-6 * padded_loss  # a leak would show at this tolerance
    for name, grad in padded_grads.items():
        assert torch.allclose(flat_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_padding_free_and_padded_runs_learn_the_same_and_share_a_checkpoint(tiny_model_dir, tmp_path):
    """Whole runs agree step by step, and a run started padded resumes padding-free (same run key)."""
    samples = uneven_samples()
    runs = {flag: train_sft(str(tiny_model_dir), samples, tmp_path / str(flag),
                            SFTSettings(**{**FAST, "max_steps": 4, "padding_free": flag}))
            for flag in (False, True)}
    padded, flat = runs[False], runs[True]
    assert [s for s, _ in flat.loss_history] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(padded.loss_history, flat.loss_history):
        assert b == pytest.approx(a, rel=1e-4)
    assert max_change(weights(padded.final_model_dir), weights(flat.final_model_dir)) < 1e-5
    assert padded.run_key == flat.run_key
    assert AutoModelForCausalLM.from_pretrained(flat.final_model_dir).generation_config.pad_token_id == \
        AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
