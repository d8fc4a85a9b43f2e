"""Generated preference data for the RLHF tests and benchmark: helpful answers preferred over dismissive ones.

Every prompt asks a customer-service question about a topic; the chosen answer is polite and helpful, the rejected
one dismissive. Held-out pairs use topics never seen in training, so a model must learn the style, not the topic.
"""

from __future__ import annotations

import random

from L07_learning.models import PreferencePair

TOPICS = [
    "order", "parcel", "invoice", "ticket", "refund", "booking", "account", "password", "delivery", "payment",
    "subscription", "warranty", "receipt", "voucher", "reservation", "flight", "hotel", "train", "contract", "bill",
    "upgrade", "license", "device", "laptop", "phone", "router", "printer", "camera", "charger", "battery",
    "package", "shipment", "appointment", "request", "complaint", "claim", "report", "profile", "card", "loan",
]
PROMPTS = ["Where is my {t}?", "Can you help me with my {t}?", "What happened to my {t}?", "Please check my {t}."]
CHOSEN = [
    "Thank you for asking. Your {t} is ready and I am happy to help.",
    "Happy to help! Your {t} is on its way, thank you for your patience.",
]
REJECTED = [
    "No. Figure out the {t} yourself.",
    "Go away, I will not look at your {t}.",
]


def build_word_model(out_dir, seed: int = 0, hidden_size: int = 32):
    """A tiny Llama causal LM over a word-level vocabulary of this module's texts (about 150 tokens).

    ``build_tiny_model`` carries SmolLM2's 49 152-token vocabulary, whose output layer dominates every step; these
    tests train several models on a shared 2-core machine, so they use a vocabulary the size of their data. The
    pipelines treat it like any other Hugging Face model folder.
    """
    import re

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words: set[str] = set()
    for text in PROMPTS + CHOSEN + REJECTED + TOPICS:
        words.update(re.findall(r"\w+|[^\w\s]+", text.replace("{t}", "")))
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<eos>", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                        unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def make_pairs(topics: list[str], per_topic: int = 2, seed: int = 0) -> list[PreferencePair]:
    """Preference pairs over ``topics`` (``per_topic`` prompts each), deterministic for a seed."""
    rng = random.Random(seed)
    pairs = []
    for t in topics:
        for _ in range(per_topic):
            pairs.append(PreferencePair(
                prompt=rng.choice(PROMPTS).format(t=t), chosen=rng.choice(CHOSEN).format(t=t),
                rejected=rng.choice(REJECTED).format(t=t), margin=40.0, task_type="support", source="generated",
            ))
    return pairs


def train_and_heldout(n_train_topics: int = 30, per_topic: int = 2, seed: int = 0) -> tuple[list, list]:
    """Training pairs and held-out pairs on disjoint topics."""
    return (make_pairs(TOPICS[:n_train_topics], per_topic, seed),
            make_pairs(TOPICS[n_train_topics:], per_topic, seed + 1))


def sft_tiny(base_dir, out_dir, pairs: list[PreferencePair], chosen_every: int = 3, epochs: int = 6,
             lr: float = 3e-3, seed: int = 0):
    """Supervised warm-up of a tiny model so that it answers in sentences before preference optimisation.

    It learns the *rejected* style for most prompts and the chosen style for every ``chosen_every``-th one, so its
    greedy answers start mostly dismissive: preference optimisation then has something to fix. (A plain full
    fine-tune: the SFT engine is not what these tests are about.)
    """
    import torch
    from transformers import AutoModelForCausalLM

    from L07_learning.pipelines.rlhf_pipeline import format_prompt, load_tokenizer

    torch.manual_seed(seed)
    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    texts = [format_prompt(tok, p.prompt) + (p.chosen if i % chosen_every == 0 else p.rejected) + tok.eos_token
             for i, p in enumerate(pairs)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(texts), 8):
            enc = tok(texts[i : i + 8], return_tensors="pt", padding=True)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir
