"""A Gradio demo for any mBLIP model folder or Hub id: upload an image, pick a language, caption it or ask about it.

    python app.py                                         # the offline demo's model, outputs/demo/mblip
    python app.py --model Gregor/mblip-mt0-xl --port 7860
    python app.py --model mblip-mt0-xl --load_in_8bit --dtype bfloat16 --host 0.0.0.0

Then open http://127.0.0.1:7860. The language dropdown and the task (caption or question) fill in the prompt in the
form the model was trained on ("Caption the image in German.", "Question: ... Short answer in German:"); the prompt
box can be edited freely before pressing Generate. Nothing is sent anywhere: no share link, and Gradio's analytics
are off. From Python, `build_app("DIR_OR_ID")` or `build_app((model, processor))` returns the `gr.Blocks`.
"""

import logging
import os
import sys
from dataclasses import dataclass, field


# Gradio reads this when imported; the demo must not phone home (and cannot, on a closed network).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from mblip.arguments import MBlipArgumentParser  # noqa: E402
from mblip.images import ImageDecodeError, open_image  # noqa: E402
from mblip.loading import DTYPE_HELP, DTYPES  # noqa: E402
from mblip.predict import DEFAULT_MODEL, LANGUAGES, PredictError, generate_texts, load_model  # noqa: E402
from mblip.prompts import CAPTION_TEMPLATE, QUESTION_TEMPLATE  # noqa: E402


logger = logging.getLogger("app")

TASKS = ("Caption", "Question")
# English first (the default), then alphabetical, so a language is found by typing its name.
LANGUAGE_CHOICES = ["English"] + sorted(name for name in LANGUAGES.values() if name != "English")
DEFAULT_QUESTION = "What is in the image?"


def make_prompt(task: str, language: str, question: str = "") -> str:
    """The prompt mBLIP was trained with for a task and target language."""
    if task == "Question":
        return QUESTION_TEMPLATE.format(question=(question or DEFAULT_QUESTION).strip(), language=language)
    return CAPTION_TEMPLATE.format(language=language)


def answer(
    model, processor, image, prompt: str, max_new_tokens=30, num_beams=5, do_sample=False, temperature=1.0, top_p=1.0
) -> str:
    """One image and prompt -> the model's text; missing input is a message in the UI, not a stack trace."""
    if image is None:
        raise gr.Error("Upload an image first.")
    if not prompt or not prompt.strip():
        raise gr.Error("The prompt is empty: pick a language or type a prompt.")
    try:
        # The upload as predict.py would read the file: fully decoded, upright, within the pixel limit.
        image = open_image(image)
    except ImageDecodeError as err:
        raise gr.Error(f"The image cannot be used: {err.reason}") from None
    kwargs = dict(max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), do_sample=bool(do_sample))
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))
    return generate_texts(model, processor, [image], [prompt], **kwargs)[0]


def build_app(model_or_pair, title: str | None = None) -> gr.Blocks:
    """The demo's UI around a model folder / Hub id (loaded here) or an already loaded (model, processor) pair."""
    if isinstance(model_or_pair, (str, os.PathLike)):
        name = str(model_or_pair)
        model, processor = load_model(name)
    else:
        model, processor = model_or_pair
        name = getattr(model.config, "_name_or_path", "") or "in-memory model"

    def run(image, prompt, max_new_tokens, num_beams, do_sample, temperature, top_p):
        return answer(model, processor, image, prompt, max_new_tokens, num_beams, do_sample, temperature, top_p)

    with gr.Blocks(title=title or "mBLIP", analytics_enabled=False) as app:
        gr.Markdown(f"# mBLIP\nMultilingual captions and answers from `{name}`.")
        with gr.Row():
            with gr.Column():
                # image_mode=None hands the upload over unconverted, so that the processor composites transparency
                # onto white exactly as predict.py does (Gradio's RGB conversion would drop the alpha channel).
                image = gr.Image(type="pil", image_mode=None, label="Image", elem_id="image")
                with gr.Row():
                    task = gr.Radio(list(TASKS), value="Caption", label="Task", elem_id="task")
                    language = gr.Dropdown(
                        LANGUAGE_CHOICES, value="English", label="Target language", elem_id="language"
                    )
                question = gr.Textbox(
                    label="Question (for the Question task)", placeholder=DEFAULT_QUESTION, elem_id="question"
                )
                prompt = gr.Textbox(
                    value=make_prompt("Caption", "English"),
                    label="Prompt (sent to the model; edit freely)",
                    elem_id="prompt",
                )
                with gr.Accordion("Generation settings", open=False):
                    max_new_tokens = gr.Slider(
                        1, 128, value=30, step=1, label="Max new tokens", elem_id="max_new_tokens"
                    )
                    num_beams = gr.Slider(1, 10, value=5, step=1, label="Beams", elem_id="num_beams")
                    do_sample = gr.Checkbox(value=False, label="Sample instead of beam search", elem_id="do_sample")
                    temperature = gr.Slider(
                        0.05, 2.0, value=1.0, step=0.05, label="Temperature (sampling)", elem_id="temperature"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)", elem_id="top_p")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                output = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="answer")

        for control in (task, language, question):
            control.change(make_prompt, inputs=[task, language, question], outputs=prompt)
        inputs = [image, prompt, max_new_tokens, num_beams, do_sample, temperature, top_p]
        # Both triggers share one queue: a single model in memory generates for one request at a time.
        for trigger in (button.click, prompt.submit):
            trigger(run, inputs=inputs, outputs=output, concurrency_limit=1, concurrency_id="generate")
    return app


@dataclass
class AppArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "mBLIP model folder or Hub id; the default is the offline demo's (python train_mblip.py)."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on; 0.0.0.0 for every interface."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    dtype: str = field(default="auto", metadata={"help": f"Weights' dtype, one of {sorted(DTYPES)}; {DTYPE_HELP}."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize the LLM to 8 bits with bitsandbytes."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the LLM to 4-bit NF4 with bitsandbytes."})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu, ... Default: cuda if available."})

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("Pass --load_in_8bit or --load_in_4bit, not both")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's requests to itself are not news
    parser = MBlipArgumentParser(AppArguments, description=__doc__)
    try:
        (args,) = parser.parse_command_line(argv)  # flags, or one .json/.yaml file followed by overriding flags
        pair = load_model(args.model, args.dtype, args.load_in_8bit, args.load_in_4bit, args.device)
    except (PredictError, ValueError) as err:
        parser.exit(2, f"app.py: error: {err}\n")
    app = build_app(pair)
    logger.info("Serving %s on http://%s:%d", args.model, args.host, args.port)
    app.launch(server_name=args.host, server_port=args.port, share=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
