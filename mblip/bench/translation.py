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

The second comparison, run_engines(), is between engines: CTranslate2 (``data.translate --engine ctranslate2``)
against the transformers engine, both on the same length-sorted batches with the same decoding settings. The model
is converted once with CTranslate2's own converter, as data.translate does; float32 outputs are compared sentence
by sentence, and where they differ, the transformers model's scores at the first differing token show whether the
two engines' arithmetic merely broke a near-tie. int8 is timed and its changed outputs counted.

    python -m mblip.bench.translation            # markdown tables; run() and run_engines() return the numbers
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


def build_model(d_model: int, layers: int, seed: int = 0):
    """The random NLLB-shaped model both comparisons time."""
    from mblip.data.tiny_nllb import CORPUS, build_tiny_nllb

    # The vocabulary is trained on the benchmark's words too, so English costs about 1.5 tokens per word, as with
    # NLLB's 256k vocabulary; otherwise every word would split into letters and every budget hit the cap.
    return build_tiny_nllb(
        d_model=d_model,
        layers=layers,
        heads=4,
        ffn=4 * d_model,
        seed=seed,
        vocab_size=400,
        corpus=CORPUS + (" ".join(WORDS),) * 3,
    )


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
    from mblip.data.translate import Translator

    from .common import alternate, machine, paired_ratio, summary

    torch.set_num_threads(threads)  # one thread: stable numbers on a shared machine
    model, tokenizer = build_model(d_model, layers, seed)
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


# ---------------------------------------------------------------------------------------------------- engines
# A first differing token whose two logits are this close (relative to the logits' spread) is a tie; so is one whose
# gap is within the two engines' own disagreement on the sentences they translate identically (engine_disagreement).
NEAR_TIE = 1e-3


def sentence_ids(translator, texts: list[str], language: str) -> list[list[int]]:
    """Each sentence's new tokens as the translator produces them in translate()'s batches (texts are unique), with
    EOS appended where the sentence ended by itself."""
    token_id = translator.target_token_id(language)
    encoded = translator.tokenizer(texts)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # translate()'s order: stable, longest first
    out: list[list[int]] = [[] for _ in texts]
    for start in range(0, len(order), translator.batch_size):
        chunk = order[start : start + translator.batch_size]
        for i, (ids, truncated) in zip(chunk, translator.generate_ids([encoded[i] for i in chunk], token_id)):
            out[i] = list(ids) + ([] if truncated else [translator.eos_token_id])
    return out


@torch.inference_mode()
def first_difference(model, tokenizer, text: str, a: list[int], b: list[int], start_id: int) -> dict:
    """Where token lists ``a`` (the transformers engine's) and ``b`` first differ, and the transformers model's logits
    of both tokens there, given ``a``'s prefix: a gap far below the logits' spread is a near-tie."""
    k = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    source = tokenizer([text], return_tensors="pt").to(model.device)
    decoder = torch.tensor([[start_id, *a[:k]]], device=model.device)
    logits = model(**source, decoder_input_ids=decoder).logits[0, -1].float()
    gap = (logits[a[k]] - logits[b[k]]).abs().item()
    spread = logits.std().item()
    return {"position": k, "gap": gap, "spread": spread, "relative_gap": gap / spread}


@torch.inference_mode()
def engine_disagreement(reference, engine, texts: list[str], ids: list[list[int]], indices: list[int]) -> float:
    """How far the two engines' float32 arithmetic alone moves a score on this model: the largest difference between
    their log-probabilities of the same tokens, the transformers engine's outputs ``ids`` of sentences ``indices``
    scored teacher-forced by each engine. A first differing token whose gap is below it is within their rounding."""
    model, tokenizer = reference.model, reference.tokenizer
    start_id = model.generation_config.decoder_start_token_id
    largest = 0.0
    for i in indices:
        tokens = ids[i]
        source = tokenizer([texts[i]], return_tensors="pt").to(model.device)
        decoder = torch.tensor([[start_id, *tokens[:-1]]], device=model.device)
        log_probs = torch.log_softmax(model(**source, decoder_input_ids=decoder).logits[0].float(), -1)
        ours = log_probs[torch.arange(len(tokens)), torch.tensor(tokens)].cpu()
        (scored,) = engine.model.score_batch(
            [tokenizer.convert_ids_to_tokens(source["input_ids"][0].tolist())],
            [tokenizer.convert_ids_to_tokens(tokens)],
        )
        theirs = torch.tensor(scored.log_probs[: len(tokens)])  # CTranslate2 scores an EOS after the target too
        largest = max(largest, (ours - theirs).abs().max().item())
    return largest


def run_engines(
    repeats: int = 5,
    n_sentences: int = 192,
    batch_size: int = 32,
    profile: str = "task_mix",
    d_model: int | None = 256,
    layers: int = 2,
    language: str = "de",
    threads: int = 1,
    seed: int = 0,
    compute_types: tuple[str, ...] = ("float32", "int8"),
    model: str | None = None,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> dict:
    """CTranslate2 at each compute type against the transformers engine, ``repeats`` alternating rounds.

    ``model`` (a local folder or Hub id) replaces the random CPU-size model: the GPU command times NLLB-1.3B itself.
    The first compute type is the one whose outputs are checked for near-ties.
    """
    import tempfile
    import time

    import ctranslate2

    from mblip.data.translate import CTranslate2Translator, Translator, ctranslate2_model

    from .common import alternate, machine, paired_ratio, summary

    torch.set_num_threads(threads)
    texts = make_sentences(n_sentences, seed, profile)
    with tempfile.TemporaryDirectory() as tmp:
        # The converted copy goes next to the model, not inside it: inside, it would change the folder's fingerprint,
        # and each compute type's engine would convert the model again.
        cache_dir = cache_dir or tmp + "/ct2"
        if model is None:
            reference_model, tokenizer = build_model(d_model, layers, seed)
            source = tmp + "/model"
            reference_model.save_pretrained(source)
            tokenizer.save_pretrained(source)
            reference = Translator(reference_model, tokenizer, batch_size=batch_size, show_progress=False)
        else:
            reference = Translator.from_pretrained(model, device=device, batch_size=batch_size, show_progress=False)
            source = model
        started = time.perf_counter()
        ctranslate2_model(source, cache_dir)  # timed apart: a real run converts once, ever
        conversion_s = time.perf_counter() - started
        engines = {
            compute_type: CTranslate2Translator.from_pretrained(
                source,
                device=device,
                compute_type=compute_type,
                cache_dir=cache_dir,
                batch_size=batch_size,
                show_progress=False,
            )
            for compute_type in compute_types
        }
        # Warm-up, which also gives the outputs to compare.
        outputs = {"transformers": [t.text for t in reference.translate(texts, language)]}
        outputs.update({c: [t.text for t in e.translate(texts, language)] for c, e in engines.items()})
        sides = {"transformers": lambda: reference.translate(texts, language)}
        sides.update({f"ctranslate2 {c}": (lambda e=e: e.translate(texts, language)) for c, e in engines.items()})
        times = alternate(sides, repeats, device)

        checked = compute_types[0]
        differing = [i for i, (a, b) in enumerate(zip(outputs["transformers"], outputs[checked])) if a != b]
        ties, disagreement = [], None
        if differing:
            ids_a = sentence_ids(reference, texts, language)
            ids_b = sentence_ids(engines[checked], texts, language)
            start_id = reference.model.generation_config.decoder_start_token_id
            for i in differing:
                if ids_a[i] != ids_b[i]:
                    ties.append(
                        first_difference(reference.model, reference.tokenizer, texts[i], ids_a[i], ids_b[i], start_id)
                    )
            same = [i for i in range(len(texts)) if i not in set(differing)]
            disagreement = engine_disagreement(reference, engines[checked], texts, ids_a, same)
    result = {
        name: {**summary(values), "sentences_per_s": n_sentences / summary(values)["median"]}
        for name, values in times.items()
    }
    result["compute_types"] = {}
    for compute_type in compute_types:
        name = f"ctranslate2 {compute_type}"
        identical = sum(a == b for a, b in zip(outputs["transformers"], outputs[compute_type], strict=True))
        result["compute_types"][compute_type] = {
            "side": name,
            "speedup_per_round": paired_ratio(times["transformers"], times[name]),
            "n_identical": identical,
        }
    result.update(
        checked_compute_type=checked,
        differences=ties,
        # On the sentences both engines translate identically, the largest difference of their log-probabilities.
        engine_disagreement=disagreement,
        near_ties=all(t["relative_gap"] < NEAR_TIE or t["gap"] <= disagreement for t in ties),
        conversion_s=conversion_s,
        setup={
            "repeats": repeats,
            "n_sentences": n_sentences,
            "batch_size": batch_size,
            "profile": profile,
            "d_model": d_model if model is None else None,
            "layers": layers if model is None else None,
            "model": model or "random",
            "threads": threads,
            "device": str(reference.device),
            "parameters": sum(p.numel() for p in reference.model.parameters()),
            "compute_types": list(compute_types),
            "ctranslate2": ctranslate2.__version__,
        },
        machine=machine(device),
    )
    return result


def markdown_engines(results: list[dict]) -> str:
    """One table per model."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["setup"]["model"], result["setup"]["d_model"]), []).append(result)
    return "\n\n".join(_markdown_engines(group) for group in groups.values())


def _markdown_engines(results: list[dict]) -> str:
    setup = results[0]["setup"]
    model = (
        f"Random M2M100 d_model {setup['d_model']}, {setup['layers']}+{setup['layers']} layers"
        if setup["model"] == "random"
        else setup["model"]
    )
    lines = [
        f"{model} ({setup['parameters'] / 1e6:.1f}M parameters), greedy, batch {setup['batch_size']}, length-sorted "
        f"batches on both sides, {setup['n_sentences']} unique sentences per run, {setup['device']}, "
        f"{setup['threads']} thread(s), {setup['repeats']} alternating repeats, CTranslate2 {setup['ctranslate2']}.",
        "",
        "| sentence lengths (words) | transformers engine: s (min-max), sent/s "
        + "".join(
            f"| CTranslate2 {c}: s (min-max), sent/s | speed-up (min-max) | identical outputs "
            for c in setup["compute_types"]
        )
        + "|",
        "| --- | --- " + "| --- | --- | --- " * len(setup["compute_types"]) + "|",
    ]
    for result in results:
        profile = result["setup"]["profile"]
        ranges = " / ".join(f"{low}-{high}" for low, high in PROFILES[profile])
        cells = [_seconds(result["transformers"])]
        for compute_type, entry in result["compute_types"].items():
            ratio = entry["speedup_per_round"]
            cells += [
                _seconds(result[entry["side"]]),
                f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})",
                f"{entry['n_identical']}/{result['setup']['n_sentences']}",
            ]
        lines.append(f"| {profile}: {ranges} | " + " | ".join(cells) + " |")
    for result in results:
        ties = result["differences"]
        if ties:
            worst = max(ties, key=lambda t: t["relative_gap"])
            lines += [
                "",
                f"{result['setup']['profile']}, {result['checked_compute_type']}: {len(ties)} differing outputs; at the "
                f"first differing token the transformers model's logits of the two engines' tokens differ by at most "
                f"{worst['gap']:.2g} (logits' standard deviation {worst['spread']:.2g}, relative {worst['relative_gap']:.1e}); "
                f"on the sentences both translate identically, the engines' log-probabilities of the same tokens differ "
                f"by up to {result['engine_disagreement']:.2g}: "
                + ("near-ties of float32 arithmetic." if result["near_ties"] else "NOT all near-ties."),
            ]
    return "\n".join(lines)


def _seconds(r: dict) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}), {r['sentences_per_s']:.1f}"


if __name__ == "__main__":
    print(markdown([run(profile=profile) for profile in PROFILES]))
    print()
    print(markdown_engines([run_engines(profile=profile) for profile in PROFILES]))
