r"""Released checkpoints and parts in, Hub-ready mBLIP model repositories out.

    # A transformers BLIP-2 checkpoint (the format the official mBLIP weights were released in) -> mBLIP repository
    python convert_mblip.py --from_blip2 Gregor/mblip-mt0-xl --output_dir mblip-mt0-xl

    # The paper's re-alignment starting point: BLIP-2's ViT + Q-Former, a multilingual LLM, and BLIP-2's projection
    # when it maps into the LLM's hidden size (--projection_init auto; blip2 or random force either)
    python convert_mblip.py --vision_model Salesforce/blip2-flan-t5-xl --language_model bigscience/mt0-xl \
        --output_dir mblip-mt0-xl-init

    # An mBLIP repository -> plain transformers BLIP-2 (no remote code; image placeholder tokens as transformers 5 needs)
    python convert_mblip.py --to_blip2 mblip-mt0-xl --output_dir mblip-mt0-xl-blip2

SRC may be a local folder or a Hub id. Weights are read from safetensors (or from PyTorch .bin files with
`weights_only=True`), one copy at a time, and the output folder appears only when it is complete.
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import (
    AddedToken,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
)

from mblip.arguments import MBlipArgumentParser
from mblip.cards import model_card
from mblip.configuration_mblip import MBlipConfig
from mblip.hub import DEFAULT_MAX_SHARD_SIZE, atomic_directory, remove_loading_keys, save_model_repository
from mblip.loading import DTYPE_HELP, DTYPES, resolve_dtype
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.processing_mblip import MBlipProcessor


logger = logging.getLogger("convert_mblip")

VISION_STACK_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
PROJECTION_PREFIX = "language_projection."
PROJECTION_INITS = ("auto", "blip2", "random")


class ConversionError(Exception):
    """A problem with the user's input, reported as one line."""


# ---------------------------------------------------------------------------------------------------- sources
def resolve_source(src: str, what: str) -> Path:
    """A local folder, or a Hub id fetched into the local cache (config, weights, tokenizer and processor files)."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{what} {src!r} is a file; expected a checkpoint folder or a Hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                src, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.bin", "*.tiktoken", "README.md"]
            )
        )
    except Exception as err:  # the hub client raises many types (offline, not found, auth)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConversionError(f"{what} {src!r} is neither a local folder nor a reachable Hub id ({reason})") from None


def read_config_dict(path: Path, what: str) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{what} {str(path)!r} has no config.json: not a transformers checkpoint")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{what} {str(path)!r} has an unreadable config.json ({err})") from None


def weight_files(path: Path, what: str) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{what} {str(path)!r} holds no weights (*.safetensors or pytorch_model*.bin)")
    return files


def read_tensors(path: Path, prefixes: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    """Only the tensors whose names start with `prefixes`; nothing else is materialised."""
    tensors = {}
    for file in weight_files(path, what):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(prefixes):
                        tensors[key] = handle.get_tensor(key)
        else:
            # Memory-mapped and restricted to tensors: untouched entries are never read, and nothing is unpickled.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({k: v.clone() for k, v in state.items() if k.startswith(prefixes)})
            del state
    return tensors


def mblip_config_from_blip2(config_dict: dict) -> MBlipConfig:
    return MBlipConfig(
        vision_config=config_dict["vision_config"],
        qformer_config=config_dict["qformer_config"],
        text_config=config_dict["text_config"],
        num_query_tokens=config_dict.get("num_query_tokens", 32),
    )


def check_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], what: str):
    expected = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise ConversionError(f"{what}: {len(mismatched)} tensors do not fit the model: " + "; ".join(mismatched[:8]))


def load_processor_parts(path: Path, what: str):
    try:
        image_processor = AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ConversionError(f"{what} {str(path)!r} has no usable image processor config ({err})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ConversionError(f"{what} {str(path)!r} has no usable tokenizer ({err})") from None
    return image_processor, tokenizer


# ---------------------------------------------------------------------------------------------------- conversions
# "checkpoint" keeps each source's own dtype (transformers' dtype="auto"); the others are mblip/loading.py's names, and
# there "auto" means bfloat16 only on a capable CUDA GPU, so float32 here where conversion runs on the CPU.
CONVERT_DTYPES = ("checkpoint", *DTYPES)


def conversion_dtype(name: str):
    """What from_pretrained's `dtype` gets for a --dtype name: "auto" (the checkpoint's own) or a torch dtype."""
    if name not in CONVERT_DTYPES:
        raise ValueError(f"--dtype must be one of {list(CONVERT_DTYPES)}, got {name!r}")
    return "auto" if name == "checkpoint" else resolve_dtype(name, "cpu")


def from_blip2(src: str, dtype: str = "checkpoint"):
    """A transformers BLIP-2 checkpoint as an mBLIP model and processor (same weights, key for key)."""
    path = resolve_source(src, "--from_blip2 source")
    config_dict = read_config_dict(path, "--from_blip2 source")
    if config_dict.get("model_type") not in ("blip-2", "mblip"):
        raise ConversionError(
            f"--from_blip2 source {src!r} has model_type {config_dict.get('model_type')!r}; expected 'blip-2' "
            "(a Blip2ForConditionalGeneration checkpoint) or 'mblip'"
        )
    config = mblip_config_from_blip2(config_dict)
    with torch.device("meta"):
        shapes = MBlipForConditionalGeneration(config)
    check_shapes(shapes, read_shapes(path), f"--from_blip2 source {src!r}")
    del shapes
    model, info = MBlipForConditionalGeneration.from_pretrained(
        str(path), config=config, dtype=conversion_dtype(dtype), output_loading_info=True
    )
    if info["missing_keys"]:
        raise ConversionError(
            f"--from_blip2 source {src!r} lacks {len(info['missing_keys'])} weights, e.g. {sorted(info['missing_keys'])[:5]}"
        )
    if info["unexpected_keys"]:
        logger.warning(
            "Ignored %d tensors that mBLIP has no place for: %s",
            len(info["unexpected_keys"]),
            sorted(info["unexpected_keys"])[:5],
        )
    image_processor, tokenizer = load_processor_parts(path, "--from_blip2 source")
    processor = MBlipProcessor.for_model_config(config, image_processor, tokenizer)
    return model.eval(), processor


def read_shapes(path: Path) -> dict[str, torch.Tensor]:
    """Each tensor's shape as an empty meta tensor, read from the safetensors headers alone."""
    shapes = {}
    for file in weight_files(path, "source"):
        if file.suffix != ".safetensors":
            return {}  # .bin shapes are checked by from_pretrained itself
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = torch.empty(handle.get_slice(key).get_shape(), device="meta")
    return shapes


def from_parts(
    vision_src: str, language_src: str, dtype: str = "checkpoint", seed: int = 0, projection_init: str = "auto"
):
    """The paper's starting point: BLIP-2's ViT, Q-Former and queries, an unchanged LLM, and a projection between them.

    `projection_init`: "auto" starts from the BLIP-2 checkpoint's own projection when it maps into the LLM's hidden size
    (the official mT0-XL run copies BLIP-2 Flan-T5-XL's 768 -> 2048 one), else from a fresh one (BLOOMZ-7B's 4096 does
    not fit); "blip2" requires the checkpoint's; "random" always starts fresh (seeded by `seed`). The BLIP-2
    checkpoint's own LLM is never loaded: only its vision-stack and projection tensors are read.
    """
    if projection_init not in PROJECTION_INITS:
        raise ConversionError(f"projection_init must be one of {PROJECTION_INITS}, got {projection_init!r}")
    vision_path = resolve_source(vision_src, "--vision_model")
    language_path = resolve_source(language_src, "--language_model")
    blip2_dict = read_config_dict(vision_path, "--vision_model")
    if blip2_dict.get("model_type") not in ("blip-2", "mblip"):
        raise ConversionError(
            f"--vision_model {vision_src!r} has model_type {blip2_dict.get('model_type')!r}; expected a BLIP-2 "
            "(or mBLIP) checkpoint holding vision_model.*, qformer.* and query_tokens"
        )
    text_config = AutoConfig.from_pretrained(str(language_path))
    if getattr(text_config, "model_type", None) in ("blip-2", "mblip"):
        raise ConversionError(f"--language_model {language_src!r} is a vision-language checkpoint, not an LLM")
    config = MBlipConfig(
        vision_config=blip2_dict["vision_config"],
        qformer_config=blip2_dict["qformer_config"],
        text_config=text_config,
        num_query_tokens=blip2_dict.get("num_query_tokens", 32),
    )

    wanted = VISION_STACK_PREFIXES + (() if projection_init == "random" else (PROJECTION_PREFIX,))
    vision_tensors = read_tensors(vision_path, wanted, "--vision_model")
    blip2_projection = {
        k[len(PROJECTION_PREFIX) :]: vision_tensors.pop(k)
        for k in list(vision_tensors)
        if k.startswith(PROJECTION_PREFIX)
    }
    with torch.device("meta"):
        model = MBlipForConditionalGeneration(config)
    check_shapes(model, vision_tensors, f"--vision_model {vision_src!r}")
    expected = {k for k in model.state_dict() if k.startswith(VISION_STACK_PREFIXES)}
    missing = sorted(expected - vision_tensors.keys())
    if missing:
        raise ConversionError(
            f"--vision_model {vision_src!r} lacks {len(missing)} vision-stack weights, e.g. {missing[:5]}"
        )
    if dtype != "checkpoint":
        vision_tensors = {k: v.to(conversion_dtype(dtype)) for k, v in vision_tensors.items()}
    model.load_state_dict(vision_tensors, strict=False, assign=True)
    del vision_tensors

    llm_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model.language_model = llm_class.from_pretrained(str(language_path), dtype=conversion_dtype(dtype))

    # The projection from the Q-Former's width into the LLM's embedding space, in the LLM's dtype.
    llm_dtype = model.language_model.get_input_embeddings().weight.dtype
    projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size, dtype=torch.float32)
    shape = tuple(projection.weight.shape)
    seen = tuple(blip2_projection["weight"].shape) if "weight" in blip2_projection else None
    fits = seen == shape and tuple(blip2_projection.get("bias", torch.empty(0)).shape) == shape[:1]
    if projection_init == "blip2" and not fits:
        raise ConversionError(
            f"projection_init='blip2', but --vision_model {vision_src!r} has "
            + (f"a projection of shape {seen}" if seen else "no language_projection")
            + f" and this LLM needs {shape} (Q-Former width {shape[1]} -> LLM hidden size {shape[0]})"
        )
    with torch.no_grad():
        if projection_init != "random" and fits:
            projection.weight.copy_(blip2_projection["weight"])
            projection.bias.copy_(blip2_projection["bias"])
            logger.info("Projection: BLIP-2's own %s -> %s projection from %s", shape[1], shape[0], vision_src)
        else:
            generator = torch.Generator().manual_seed(seed)
            projection.weight.normal_(0.0, config.initializer_range, generator=generator)
            projection.bias.zero_()
            logger.info(
                "Projection: fresh (seed %d); %s",
                seed,
                "projection_init='random'"
                if projection_init == "random"
                else f"BLIP-2's maps to {seen[0] if seen else 'nothing'}, the LLM needs {shape[0]}",
            )
    model.language_projection = projection.to(llm_dtype)
    model.projection_source = "blip2" if projection_init != "random" and fits else "random"  # for the card; not saved
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    assert not still_meta, f"parts left unassigned: {still_meta[:5]}"

    image_processor, _ = load_processor_parts(vision_path, "--vision_model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(language_path))
    except (OSError, ValueError) as err:
        raise ConversionError(f"--language_model {language_src!r} has no usable tokenizer ({err})") from None
    processor = MBlipProcessor.for_model_config(config, image_processor, tokenizer)
    return model.eval(), processor


def to_blip2(
    src: str,
    output_dir: str,
    max_shard_size=DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    license: str | None = None,
    hub_model_id: str | None = None,
) -> Path:
    """An mBLIP repository as plain transformers BLIP-2 (transformers 5 format, no remote code); its card states
    `license`, or by default the source's (mblip/cards.py)."""
    path = resolve_source(src, "--to_blip2 source")
    config_dict = read_config_dict(path, "--to_blip2 source")
    if config_dict.get("model_type") != "mblip":
        raise ConversionError(
            f"--to_blip2 source {src!r} has model_type {config_dict.get('model_type')!r}; expected 'mblip'"
        )
    model = MBlipForConditionalGeneration.from_pretrained(str(path), dtype="auto")
    processor = MBlipProcessor.from_pretrained(str(path))
    tokenizer = processor.tokenizer

    # transformers 5's BLIP-2 marks where the queries go with placeholder tokens in the prompt.
    image_token = AddedToken("<image>", normalized=False, special=True)
    tokenizer.add_tokens([image_token], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_token_id >= model.get_input_embeddings().weight.shape[0]:
        # No spare row in the (usually padded) vocabulary: grow by one. The placeholder's input embedding is always
        # replaced by a query; its output row is zeroed so that it scores 0 rather than a random value.
        model.resize_token_embeddings(image_token_id + 1, mean_resizing=False)
        with torch.no_grad():
            model.get_output_embeddings().weight[image_token_id:] = 0
    text_config = model.config.text_config
    blip2_config = Blip2Config(
        vision_config=model.config.vision_config.to_dict(),
        qformer_config=model.config.qformer_config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=model.config.num_query_tokens,
        image_token_index=image_token_id,
    )
    with torch.device("meta"):
        blip2 = Blip2ForConditionalGeneration(blip2_config)
    blip2.load_state_dict(model.state_dict(), strict=True, assign=True)
    blip2.tie_weights()
    # Saved with the tokenizer, so that plain BLIP-2 left-pads decoder-only prompts as mBLIP does.
    tokenizer.init_kwargs["padding_side"] = tokenizer.padding_side
    blip2_processor = Blip2Processor(
        processor.image_processor, tokenizer, num_query_tokens=model.config.num_query_tokens
    )
    card = model_card(
        title=f"{Path(src).name} (BLIP-2 format)",
        description=(
            f"An mBLIP model exported from `{src}` to plain transformers BLIP-2 format: it loads with "
            "`Blip2ForConditionalGeneration` and `AutoProcessor` without `trust_remote_code`. The processor inserts "
            f"{model.config.num_query_tokens} `<image>` placeholder tokens in front of each prompt."
        ),
        base_models=[src],
        license=license,
        repo_id=hub_model_id or f"org/{Path(output_dir).name}",
        remote_code=False,
        chat_template=False,
    )
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        blip2.save_pretrained(tmp, max_shard_size=max_shard_size)
        blip2_processor.save_pretrained(tmp)
        remove_loading_keys(tmp)
        card.save(tmp / "README.md")
    return Path(output_dir)


def card_repo_id(args) -> str:
    """The Hub id the card's snippets name: --hub_model_id, else a placeholder namespace and the output folder's name."""
    return args.hub_model_id or f"org/{Path(args.output_dir).name}"


def card_for(args, model: MBlipForConditionalGeneration) -> ModelCard:
    family = "encoder-decoder" if model.config.is_encoder_decoder else "decoder-only"
    llm = model.config.text_config.model_type
    if args.from_blip2:
        return model_card(
            title=f"mBLIP ({Path(args.from_blip2).name})",
            description=(
                f"mBLIP: BLIP-2's ViT and Q-Former re-aligned to a multilingual {family} LLM ({llm}), converted from "
                f"`{args.from_blip2}` (Geigle et al., 2023, *mBLIP: Efficient Bootstrapping of Multilingual "
                "Vision-LLMs*). Prompts need no image placeholder tokens."
            ),
            base_models=[args.from_blip2],
            license=args.license,
            repo_id=card_repo_id(args),
        )
    return model_card(
        title=f"mBLIP starting point: {Path(args.vision_model).name} + {Path(args.language_model).name}",
        description=(
            f"The re-alignment starting point of mBLIP: the ViT, Q-Former and query tokens of `{args.vision_model}`, "
            f"the {family} LLM `{args.language_model}` unchanged, and "
            + (
                f"the linear projection of `{args.vision_model}` between them (it maps into the LLM's hidden size)."
                if getattr(model, "projection_source", None) == "blip2"
                else "a freshly initialised linear projection between them."
            )
            + " Not trained yet: re-align it with `accelerate launch train_mblip.py --model_name_or_path ...`."
        ),
        base_models=[args.vision_model, args.language_model],
        license=args.license,
        repo_id=card_repo_id(args),
    )


# ---------------------------------------------------------------------------------------------------- CLI
@dataclass
class ConvertArguments:
    output_dir: str = field(metadata={"help": "Where the model repository folder is written (atomically)."})
    from_blip2: str | None = field(
        default=None, metadata={"help": "A transformers BLIP-2 checkpoint (folder or Hub id) to turn into mBLIP."}
    )
    vision_model: str | None = field(
        default=None, metadata={"help": "BLIP-2 checkpoint whose ViT, Q-Former and query tokens are taken."}
    )
    language_model: str | None = field(default=None, metadata={"help": "The multilingual LLM checkpoint."})
    to_blip2: str | None = field(
        default=None, metadata={"help": "An mBLIP repository to export in plain transformers BLIP-2 format."}
    )
    dtype: str = field(
        default="checkpoint",
        metadata={
            "help": f"Weights' dtype, one of {list(CONVERT_DTYPES)}: checkpoint keeps each source's own dtype (a "
            f"bfloat16 BLIP-2 stays bfloat16); {DTYPE_HELP}: float32 here, where conversion runs on the CPU."
        },
    )
    max_shard_size: str = field(default=DEFAULT_MAX_SHARD_SIZE, metadata={"help": "Largest safetensors shard."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty output_dir."})
    seed: int = field(default=0, metadata={"help": "Seed of the fresh projection (parts mode)."})
    projection_init: str = field(
        default="auto",
        metadata={
            "help": f"Parts mode, one of {PROJECTION_INITS}: auto takes --vision_model's own projection when it maps "
            "into the LLM's hidden size (as the official mT0-XL run did), else a fresh one; blip2 requires it; "
            "random is always fresh."
        },
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "The model card's licence (a Hub licence id, e.g. mit). Default: the base models' own, from their "
            "cards, or known for the usual checkpoints (Salesforce/blip2-flan-t5-xl, bigscience/mt0-xl, "
            "bigscience/bloomz-7b1, Gregor/mblip-*); 'other' (with a warning) when unknown."
        },
    )

    hub_model_id: str | None = field(
        default=None,
        metadata={
            "help": "The Hub id the model card's snippets load from (org/name). Default: org/ and the output_dir's name."
        },
    )

    def __post_init__(self):
        modes = [bool(self.from_blip2), bool(self.vision_model or self.language_model), bool(self.to_blip2)]
        if sum(modes) != 1:
            raise ValueError(
                "Choose exactly one of --from_blip2 SRC, --vision_model SRC --language_model SRC, or --to_blip2 SRC "
                f"(got from_blip2={self.from_blip2!r}, vision_model={self.vision_model!r}, "
                f"language_model={self.language_model!r}, to_blip2={self.to_blip2!r})"
            )
        if modes[1] and not (self.vision_model and self.language_model):
            raise ValueError(
                "Parts mode needs both --vision_model and --language_model "
                f"(got vision_model={self.vision_model!r}, language_model={self.language_model!r})"
            )
        conversion_dtype(self.dtype)  # refuses an unknown name, listing the known ones
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"--projection_init must be one of {PROJECTION_INITS}, got {self.projection_init!r}")


def convert(args: ConvertArguments) -> Path:
    if args.to_blip2:
        return to_blip2(
            args.to_blip2, args.output_dir, args.max_shard_size, args.overwrite, args.license, args.hub_model_id
        )
    if args.from_blip2:
        model, processor = from_blip2(args.from_blip2, args.dtype)
    else:
        model, processor = from_parts(
            args.vision_model, args.language_model, args.dtype, args.seed, projection_init=args.projection_init
        )
    return save_model_repository(
        model, processor, args.output_dir, card_for(args, model), args.max_shard_size, args.overwrite
    )


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = MBlipArgumentParser(ConvertArguments, description=__doc__)
    try:
        (args,) = parser.parse_command_line(argv)  # flags, or one .json/.yaml file followed by overriding flags
        output = convert(args)
    except (ConversionError, ValueError, FileExistsError) as err:
        parser.exit(2, f"convert_mblip.py: error: {err}\n")
    logger.info("Wrote %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
