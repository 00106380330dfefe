"""Tiny mBLIP models and a multilingual tokenizer, built on the spot: nothing is downloaded, ever.

Used by the tests, the benchmarks and the offline demo. Sizes: a 30 px ViT with 6 px patches,
hidden sizes of 32 (vision) and 64 (text: bitsandbytes' 4-bit CPU kernels need 64-wide blocks), two layers, and a byte-pair tokenizer of a few hundred tokens trained on sentences in five
scripts. Special token ids are fixed: <pad>=0, </s>=1, <s>=2, <unk>=3.

The recipes behind them (`bpe_tokenizer`, `llm_config`, `vit_config`, `qformer_config`, `square_image_processor`)
are also those of the benchmarks' CPU-sized models (bench/common.py) and of the demo's own pre-trained parts
(demo/pretrain.py): one place for the conventions every model made here shares, each caller naming only its sizes.
"""

from transformers import (
    BlipImageProcessor,
    BloomConfig,
    LlamaConfig,
    MT5Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig

from mblip.configuration_mblip import MBlipConfig
from mblip.processing_mblip import MBlipProcessor


FAMILIES = ("mt5", "bloom", "llama")
# Built on request only (the suite's table is FAMILIES): English T5, BLIP-2's own LLM family.
EXTRA_FAMILIES = ("t5",)
PAD, EOS, BOS, UNK = 0, 1, 2, 3
IMAGE_SIZE = 30

CORPUS = [
    "a red circle above a blue square",
    "two green triangles on the left",
    "Question: how many circles are there? Short answer in English: two",
    "Caption the image in German.",
    "ein roter Kreis über einem blauen Quadrat",
    "zwei grüne Dreiecke auf der linken Seite",
    "un cercle rouge au-dessus d'un carré bleu",
    "deux triangles verts à gauche",
    "красный круг над синим квадратом",
    "два зелёных треугольника слева",
    "蓝色正方形上方有一个红色圆圈",
    "左边有两个绿色三角形",
    "دائرة حمراء فوق مربع أزرق",
    "مثلثان أخضران على اليسار",
    "नीले वर्ग के ऊपर एक लाल वृत्त",
    "बाईं ओर दो हरे त्रिकोण",
    "yes no one two three four five six seven eight nine ten",
]


# ================================================================================================ recipes
def bpe_tokenizer(texts: list[str], vocab_size: int, family: str, pre_tokenizer=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with the fixed special-token ids above and the special-token
    behaviour of each LLM family: mt5 (and t5) append </s> to every text (like T5's tokenizer); llama prepends <s>;
    bloom adds nothing. `pre_tokenizer`: how texts are cut before BPE (default: GPT-2's byte-level split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    if pre_tokenizer is None:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if family in ("mt5", "t5"):
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    elif family == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def llm_config(family: str, vocab_size: int, **shape) -> PretrainedConfig:
    """An LLM of `family` at the size that `shape` gives, in the family's own parameter names (`d_model` for mt5,
    `n_layer` for bloom, ...), with what every model here shares: the special-token ids above and no dropout (models
    that are compared output for output). mt5 also gets mT0's gated-GELU feed-forward and untied output layer, and
    llama an untied output layer (as Llama 2); t5 keeps T5's defaults there. `shape` may override any of these."""
    settings = dict(vocab_size=vocab_size, pad_token_id=PAD, eos_token_id=EOS)
    if family in ("mt5", "t5"):
        settings.update(dropout_rate=0.0, decoder_start_token_id=PAD)
        if family == "t5":
            return T5Config(**{**settings, **shape})
        settings.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        return MT5Config(**{**settings, **shape})
    if family == "bloom":
        settings.update(hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=BOS)
        return BloomConfig(**{**settings, **shape})
    if family == "llama":
        settings.update(bos_token_id=BOS, tie_word_embeddings=False)
        return LlamaConfig(**{**settings, **shape})
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES + EXTRA_FAMILIES}")


def vit_config(**shape) -> Blip2VisionConfig:
    """BLIP-2's ViT at the size that `shape` gives, without dropout."""
    return Blip2VisionConfig(**{"attention_dropout": 0.0, **shape})


def qformer_config(**shape) -> Blip2QFormerConfig:
    """BLIP-2's Q-Former at the size that `shape` gives, without dropout."""
    return Blip2QFormerConfig(**{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **shape})


def square_image_processor(image_size: int) -> BlipImageProcessor:
    """BLIP's preprocessing, resizing every image to the ViT's square input."""
    return BlipImageProcessor(size={"height": image_size, "width": image_size})


# ================================================================================================ tiny sizes
# mt5 and English t5 share their shape; llm_config adds what tells them apart.
_TINY_T5_SHAPE = dict(
    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8
)
_TINY_SHAPES = {
    "mt5": _TINY_T5_SHAPE,
    "t5": _TINY_T5_SHAPE,
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "llama": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
}


def tiny_tokenizer(family: str, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """`bpe_tokenizer` over CORPUS, sentences in several scripts."""
    if family not in FAMILIES + EXTRA_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES + EXTRA_FAMILIES}")
    return bpe_tokenizer(CORPUS, vocab_size, family)


def tiny_text_config(family: str, vocab_size: int):
    if family not in _TINY_SHAPES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES + EXTRA_FAMILIES}")
    return llm_config(family, vocab_size, **_TINY_SHAPES[family])


def tiny_vision_config() -> Blip2VisionConfig:
    return vit_config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=6,
        initializer_range=0.02,
    )


def tiny_qformer_config() -> Blip2QFormerConfig:
    return qformer_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        cross_attention_frequency=1,
        vocab_size=64,
        max_position_embeddings=64,
    )


def tiny_config(family: str, vocab_size: int, num_query_tokens: int = 4) -> MBlipConfig:
    return MBlipConfig(
        vision_config=tiny_vision_config(),
        qformer_config=tiny_qformer_config(),
        text_config=tiny_text_config(family, vocab_size),
        num_query_tokens=num_query_tokens,
    )


def tiny_image_processor() -> BlipImageProcessor:
    return square_image_processor(IMAGE_SIZE)


def tiny_processor(family: str, config: MBlipConfig | None = None) -> MBlipProcessor:
    tokenizer = tiny_tokenizer(family)
    config = config or tiny_config(family, len(tokenizer))
    return MBlipProcessor.for_model_config(config, tiny_image_processor(), tokenizer)


def main(output_dir: str = "outputs/tiny-mblip"):
    """Offline smoke demo: build a tiny random mBLIP, save it as a model repository, load it back through the Auto
    classes with trust_remote_code, and caption two images. Random weights: the text is noise, the plumbing is real."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mblip.cards import model_card
    from mblip.hub import save_model_repository
    from mblip.modeling_mblip import MBlipForConditionalGeneration

    processor = tiny_processor("mt5")
    torch.manual_seed(0)
    model = MBlipForConditionalGeneration(tiny_config("mt5", len(processor.tokenizer)))
    card = model_card("Tiny random mBLIP", "Random weights, for offline smoke tests.", base_models=[])
    save_model_repository(model, processor, output_dir, card, overwrite=True)
    model = AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output_dir, trust_remote_code=True)
    images = [Image.new("RGB", (64, 48), (220, 30, 30)), Image.new("L", (40, 40), 128)]
    prompts = ["Caption the image in German.", "Question: how many circles are there? Short answer in English:"]
    output = model.generate(**processor(images=images, text=prompts), max_new_tokens=8)
    for prompt, text in zip(prompts, processor.batch_decode(output, skip_special_tokens=True)):
        print(f"{prompt!r} -> {text!r}")
    print(f"model repository: {output_dir}")


if __name__ == "__main__":
    main()
