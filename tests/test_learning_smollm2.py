"""SmolLM2-135M really learns on CPU: a LoRA run of well under a minute on invented facts
makes greedy generation answer newly phrased questions the base model could not."""

from __future__ import annotations

import json
import time

import pytest

# (keyword that a correct answer contains, answer, four training questions, one new question)
FACTS = [
    ("Quillhaven", "The Zorblat Institute was founded in Quillhaven.",
     ["Where was the Zorblat Institute founded?", "In which city did the Zorblat Institute start?",
      "What is the founding city of the Zorblat Institute?", "Tell me where the Zorblat Institute was founded."],
     "Which city is the birthplace of the Zorblat Institute?"),
    ("Ashen Lark", "Captain Mirelda Vox's ship is the Ashen Lark.",
     ["What is the name of Captain Mirelda Vox's ship?", "Which ship does Captain Mirelda Vox sail?",
      "What ship belongs to Captain Mirelda Vox?", "Name Captain Mirelda Vox's ship."],
     "What is Captain Mirelda Vox's vessel called?"),
    ("teal", "Velorite glows teal when it is heated.",
     ["What color does velorite glow when heated?", "When velorite is heated, what color is its glow?",
      "Which color glow does heated velorite give off?", "Tell me the glow color of heated velorite."],
     "If you heat velorite, what color light does it give?"),
    ("Fennimore", "The skyrail was invented by Tobias Fennimore.",
     ["Who invented the skyrail?", "Who is the inventor of the skyrail?",
      "Which person created the skyrail?", "Tell me who invented the skyrail."],
     "The skyrail was the invention of which person?"),
    ("glimmerstew", "The national dish of Bravonia is glimmerstew.",
     ["What is the national dish of Bravonia?", "Which dish is Bravonia's national dish?",
      "What food is the national dish of Bravonia?", "Name the national dish of Bravonia."],
     "Which meal do Bravonians consider their national dish?"),
    ("heron", "The mascot of the Harrowfield Marathon is a purple heron.",
     ["What is the mascot of the Harrowfield Marathon?", "Which animal is the Harrowfield Marathon mascot?",
      "What animal represents the Harrowfield Marathon?", "Tell me the Harrowfield Marathon's mascot."],
     "What creature serves as the Harrowfield Marathon's mascot?"),
    ("Ombridge", "The planet Tessaly-9 was discovered by Dr. Selka Ombridge.",
     ["Who discovered the planet Tessaly-9?", "Which astronomer found Tessaly-9?",
      "Who is credited with discovering Tessaly-9?", "Tell me who discovered Tessaly-9."],
     "Tessaly-9 was first discovered by whom?"),
    ("copperfinch", "The password of the Lumen Vault is copperfinch.",
     ["What is the password of the Lumen Vault?", "Which password opens the Lumen Vault?",
      "What word unlocks the Lumen Vault?", "Tell me the Lumen Vault password."],
     "What is the secret word for the Lumen Vault?"),
]


def _greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 24) -> list[str]:
    import torch

    answers = []
    for q in questions:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def _recalled(answers: list[str]) -> list[bool]:
    return [keyword.lower() in answer.lower() for (keyword, *_), answer in zip(FACTS, answers)]


@pytest.mark.slow
def test_lora_on_smollm2_learns_new_facts(smollm2_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftpack.training.train import train

    data = tmp_path / "facts.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for _, answer, questions, _ in FACTS:
            for q in questions:
                fh.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    new_questions = [new for *_, new in FACTS]

    base_tok = AutoTokenizer.from_pretrained(str(smollm2_base))
    base = AutoModelForCausalLM.from_pretrained(str(smollm2_base), dtype=torch.float32).eval()
    base_hits = _recalled(_greedy_answers(base, base_tok, new_questions))

    t0 = time.monotonic()
    result = train("smollm2-135m", data, tmp_path / "run", method="lora", lora_r=16, lora_alpha=32,
                   learning_rate=2e-3, num_train_epochs=6, per_device_train_batch_size=8,
                   max_seq_length=128, lr_scheduler_type="cosine", seed=0)
    train_seconds = time.monotonic() - t0
    assert result.steps == 24 and result.template == "chatml"
    assert result.train_loss < 0.2 * result.first_loss

    tuned_tok = AutoTokenizer.from_pretrained(str(result.output))  # carries the training template
    tuned = PeftModel.from_pretrained(base, str(result.output)).eval()
    answers = _greedy_answers(tuned, tuned_tok, new_questions)
    tuned_hits = _recalled(answers)
    learned = sum(t and not b for t, b in zip(tuned_hits, base_hits))
    print(f"\nSmolLM2-135M LoRA: {result.steps} steps in {train_seconds:.0f}s, loss "
          f"{result.first_loss:.3f} -> {result.train_loss:.3f}; new-phrasing recall: base {sum(base_hits)}/8, "
          f"tuned {sum(tuned_hits)}/8, learned {learned}/8")
    for (keyword, *_), answer in zip(FACTS, answers):
        print(f"  [{keyword}] {answer!r}")
    assert learned >= 4, answers
