"""Translation throughput: length-sorted batches (data.translate.Translator) against the naive loop.

The naive loop is how the official mBLIP scripts translate: batches in data order, padded to the longest sentence,
one ``generate`` call each. Both sides run the same model with the same batch size and the same generation settings
(greedy, forced target-language token, per-sentence token budget), so they must produce the same translations; the
only difference is the order sentences are batched in.

The model is a random NLLB-shaped M2M100 (d_model 256, 2+2 layers) built on the spot, big enough for CPU timings to
mean something. A random decoder rarely stops by itself, so each sentence runs to its budget (2 x source tokens +
10), a stand-in for real translations whose length follows the source's. Sentences are unique, so the translator's
deduplication does not count in its favour. Three length profiles: the task mix one shard translates, one
homogeneous caption set, and lengths spread uniformly.

    python -m mblip.bench.translation            # markdown table; run() returns the numbers
"""

from __future__ import annotations

import random

import torch


WORDS = (
    "a the dog cat man woman child people bus train car bicycle street beach park table kitchen room field water "
    "sky tree building window plate pizza ball frisbee umbrella red blue green white black small large two three "
    "is are sits stands runs walks rides holds plays looks eats next to on in under near with of while and"
).split()


# Sentence lengths in words. "task_mix" is what one shard of data.translate sends to the model: every translated
# field of its examples together (VQA answers and class names, questions and captions, instruction turns and
# rationales). "captions" is one homogeneous dataset, the way the official scripts translate a file at a time.
PROFILES = {
    "task_mix": ((1, 3), (5, 15), (16, 40)),
    "captions": ((8, 16),),
    "uniform": ((3, 40),),
}


def make_sentences(n: int, seed: int = 0, profile: str = "task_mix") -> list[str]:
    """``n`` unique English-like sentences with lengths drawn from ``profile`` (equal weight per range)."""
    rng = random.Random(seed)
    sentences: dict[str, None] = {}
    while len(sentences) < n:
        low, high = rng.choice(PROFILES[profile])
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        sentences[" ".join(words).capitalize() + "."] = None
    return list(sentences)


def naive_loop(translator, texts: list[str], language: str, batch_size: int) -> list[str]:
    """The official scripts' loop, with the translator's generation settings so that outputs are comparable."""
    model, tokenizer = translator.model, translator.tokenizer
    token_id = tokenizer.convert_tokens_to_ids(translator.target_token(language))
    outputs = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding="longest").to(model.device)
        caps = translator.budgets(batch["attention_mask"].sum(-1).tolist())
        with torch.inference_mode():
            generated = model.generate(**batch, **translator.generation_kwargs(token_id, caps))
        outputs += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return outputs


def decode_positions(budgets: list[int], batch_size: int) -> int:
    """Token positions a run decodes: each batch runs until its longest budget, for every row in it."""
    chunks = (budgets[i : i + batch_size] for i in range(0, len(budgets), batch_size))
    return sum(max(chunk) * len(chunk) for chunk in chunks)


def padding_bound(translator, texts: list[str], batch_size: int) -> dict:
    """How much decoding each ordering does beyond the sentences' own budgets (1.0 = none wasted).

    The random decoder runs every sentence to its budget, so naive / sorted is what ordering alone can save in the
    decoder at equal batch size.
    """
    lengths = [len(ids) for ids in translator.tokenizer(texts)["input_ids"]]
    budgets = translator.budgets(lengths)
    needed = sum(budgets)
    naive = decode_positions(budgets, batch_size) / needed
    sorted_ = decode_positions(sorted(budgets, reverse=True), batch_size) / needed
    return {"naive": naive, "sorted": sorted_, "naive_over_sorted": naive / sorted_}


def run(
    repeats: int = 5,
    n_sentences: int = 192,
    batch_size: int = 32,
    profile: str = "task_mix",
    d_model: int = 256,
    layers: int = 2,
    language: str = "de",
    threads: int = 1,
    seed: int = 0,
) -> dict:
    """Time both sides ``repeats`` times, alternating, and return medians, spreads, the ratio and output equality."""
    from mblip.data.tiny_nllb import CORPUS, build_tiny_nllb
    from mblip.data.translate import Translator

    from .common import alternate, machine, paired_ratio, summary

    torch.set_num_threads(threads)  # one thread: stable numbers on a shared machine
    # The vocabulary is trained on the benchmark's words too, so English costs about 1.5 tokens per word, as with
    # NLLB's 256k vocabulary; otherwise every word would split into letters and every budget hit the cap.
    model, tokenizer = build_tiny_nllb(
        d_model=d_model,
        layers=layers,
        heads=4,
        ffn=4 * d_model,
        seed=seed,
        vocab_size=400,
        corpus=CORPUS + (" ".join(WORDS),) * 3,
    )
    translator = Translator(model, tokenizer, batch_size=batch_size, show_progress=False)
    texts = make_sentences(n_sentences, seed, profile)

    # Warm-up, which also gives the outputs to compare.
    sorted_out = [t.text for t in translator.translate(texts, language)]
    naive_out = naive_loop(translator, texts, language, batch_size)
    times = alternate(
        {
            "naive": lambda: naive_loop(translator, texts, language, batch_size),
            "sorted": lambda: translator.translate(texts, language),
        },
        repeats,
    )
    result = {
        name: {**summary(values), "sentences_per_s": n_sentences / summary(values)["median"]}
        for name, values in times.items()
    }
    identical = sum(a == b for a, b in zip(sorted_out, naive_out, strict=True))
    result.update(
        speedup=result["naive"]["median"] / result["sorted"]["median"],
        speedup_per_round=paired_ratio(times["naive"], times["sorted"]),
        identical_outputs=identical == len(texts),
        n_identical=identical,
        decode_positions_over_needed=padding_bound(translator, texts, batch_size),
        setup={
            "repeats": repeats,
            "n_sentences": n_sentences,
            "batch_size": batch_size,
            "profile": profile,
            "d_model": d_model,
            "layers": layers,
            "threads": threads,
            "device": str(translator.device),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        machine=machine(),
    )
    return result


def markdown(results: list[dict]) -> str:
    setup = results[0]["setup"]
    lines = [
        f"Random M2M100 d_model {setup['d_model']}, {setup['layers']}+{setup['layers']} layers "
        f"({setup['parameters'] / 1e6:.1f}M parameters), greedy, batch {setup['batch_size']}, {setup['n_sentences']} unique "
        f"sentences per run, {setup['device']}, {setup['threads']} thread(s), {setup['repeats']} alternating repeats.",
        "",
        "| sentence lengths (words) | naive loop, data order: s (min-max), sent/s "
        "| length-sorted batches: s (min-max), sent/s | speed-up: median of per-round ratios (min-max) | identical outputs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        profile = result["setup"]["profile"]
        ratio = result["speedup_per_round"]  # within a round both sides saw the same machine load
        ranges = " / ".join(f"{low}-{high}" for low, high in PROFILES[profile])
        cells = [
            f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}), {r['sentences_per_s']:.1f}"
            for r in (result["naive"], result["sorted"])
        ]
        lines.append(
            f"| {profile}: {ranges} | {cells[0]} | {cells[1]} | {ratio['median']:.2f}x "
            f"({ratio['min']:.2f}-{ratio['max']:.2f}) | "
            f"{result['n_identical']}/{result['setup']['n_sentences']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown([run(profile=profile) for profile in ("task_mix", "captions", "uniform")]))
