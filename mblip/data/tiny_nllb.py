"""A random NLLB-shaped translation model built on the spot: offline smoke runs, tests and the benchmark.

The tokenizer is a real ``NllbTokenizer`` (source-language prefix token, all 202 FLORES-200 language codes as
special tokens) over a small BPE vocabulary trained here on a few sentences in several scripts; the model is an
``M2M100ForConditionalGeneration`` with random weights, NLLB's architecture. Its translations are noise, but they
take exactly the code path of ``facebook/nllb-200-distilled-1.3B``: forced target-language BOS token, generate,
decode. Nothing is downloaded.

    python -m mblip.data.tiny_nllb /tmp/tiny-nllb      # then: python -m mblip.data.translate ... --model /tmp/tiny-nllb
"""

from __future__ import annotations

import argparse
import json


CORPUS = (
    "A dog runs along the beach.",
    "Two people ride bicycles down a busy street.",
    "What color is the bus? Short answer: red.",
    "Is the caption a good match for the image? Yes, it is.",
    "Caption the image in German. Briefly describe the picture.",
    "Ein Hund läuft am Strand entlang. Zwei Menschen fahren Fahrrad.",
    "Un chien court sur la plage. Deux personnes font du vélo.",
    "Un perro corre por la playa. ¿De qué color es el autobús?",
    "Собака бежит по пляжу. Два человека едут на велосипедах.",
    "Σκύλος τρέχει στην παραλία.",
    "一只狗在海滩上奔跑。两个人在繁忙的街道上骑自行车。",
    "犬が浜辺を走っている。",
    "개가 해변을 따라 달린다.",
    "कुत्ता समुद्र तट पर दौड़ता है।",
    "كلب يركض على طول الشاطئ.",
    "כלב רץ לאורך החוף.",
    "สุนัขวิ่งไปตามชายหาด",
    "Mbwa anakimbia ufukweni.",
    "Bir köpek sahil boyunca koşuyor.",
)


def build_tokenizer(vocab_size: int = 300, corpus=CORPUS):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    # NLLB's fixed ids: <s>=0, <pad>=1, </s>=2, <unk>=3; Metaspace pre-tokenization like its SentencePiece model.
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
    )
    bpe.train_from_iterator(list(corpus) * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return NllbTokenizer(vocab=model["vocab"], merges=merges, src_lang="eng_Latn")


def build_model(
    tokenizer, d_model: int = 32, layers: int = 1, heads: int = 2, ffn: int = 64, seed: int = 0, init_std: float = 0.5
):
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,  # as NLLB: decoding starts from </s>
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        # Far above the training default (0.02): with tiny weights the random decoder ignores its source and writes
        # the same string for every sentence, which would make output comparisons meaningless.
        init_std=init_std,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    # With random weights the 202 language codes would win the argmax as often as words and decode to nothing.
    # Shrinking their (tied) embeddings keeps the random output text-like; the forced BOS token still works.
    special = [i for i in tokenizer.added_tokens_decoder if i > tokenizer.unk_token_id]
    with torch.no_grad():
        model.get_input_embeddings().weight[special] *= 0.01
    return model


def build_tiny_nllb(
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    ffn: int = 64,
    vocab_size: int = 300,
    seed: int = 0,
    init_std: float = 0.5,
    corpus=CORPUS,
):
    tokenizer = build_tokenizer(vocab_size, corpus)
    return build_model(tokenizer, d_model, layers, heads, ffn, seed, init_std), tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--d_model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args(argv)
    model, tokenizer = build_tiny_nllb(args.d_model, args.layers, ffn=2 * args.d_model)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(
        f"Saved a random NLLB-shaped model ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.output_dir}"
    )


if __name__ == "__main__":
    main()
