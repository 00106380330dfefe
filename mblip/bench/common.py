"""What every comparison shares: model shapes, alternating timers, summaries, peak memory, child processes, machine.

The method: A and B run in the same session, alternating, each repeated; we report the
median of each, its min-max spread, and the median of the per-round ratios (a ratio taken within one round cancels
most of the drift of a shared machine). A single absolute time on this machine means little.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch


SIZES = ("tiny", "cpu", "full")
FAMILIES = ("mt5", "bloom", "llama")

# What the children import once, in the fork server, so that each measurement starts in a fresh process without
# paying ~10 s of imports on this machine.
CHILD_PRELOAD = ["torch", "transformers", "peft", "datasets", "mblip.modeling_mblip", "bench.common"]


# ---------------------------------------------------------------------------------------------------- shapes
# The recipes (special-token ids, no dropout, each family's conventions) are demo/tiny.py's; only the sizes are here.
def vision_configs(size: str):
    """The ViT and Q-Former shapes: tiny (tests), cpu (each measurement ~0.1-2 s on 2 cores), full (BLIP-2 ViT-g)."""
    from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig

    from mblip.demo.tiny import qformer_config, tiny_qformer_config, tiny_vision_config, vit_config

    if size == "tiny":
        return tiny_vision_config(), tiny_qformer_config(), 4
    if size == "cpu":
        vision = vit_config(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=16,
        )
        qformer = qformer_config(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            cross_attention_frequency=2,
        )
        return vision, qformer, 32
    if size == "full":
        # BLIP-2's EVA ViT-g/14 at 224 px and its Q-Former (Salesforce/blip2-flan-t5-xl), 32 queries.
        return Blip2VisionConfig(), Blip2QFormerConfig(), 32
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


# The cpu size's LLMs, in each family's own parameter names (see demo.tiny.llm_config).
_CPU_LLM_SHAPES = {
    "mt5": dict(d_model=256, d_kv=64, d_ff=640, num_layers=2, num_decoder_layers=2, num_heads=4),
    "bloom": dict(hidden_size=384, n_layer=4, n_head=6),
    "llama": dict(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
}


def text_config(family: str, size: str, vocab_size: int):
    """The LLM: tiny (demo.tiny), cpu (_CPU_LLM_SHAPES: bloom and llama hidden 384 and 4 layers, mt5 d_model 256 and
    2+2 layers; a 16k vocabulary, so that the output layer weighs in a step as in real models), full (mT0-XL,
    BLOOMZ-7B1, Llama-2-7B shapes)."""
    from transformers import MT5Config

    from mblip.demo.tiny import llm_config, tiny_text_config

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if size == "tiny":
        return tiny_text_config(family, vocab_size)
    if size == "cpu":
        return llm_config(family, 16000, **_CPU_LLM_SHAPES[family])
    if size == "full":
        if family == "mt5":
            from mblip.configuration_mblip import MT0_XL_TEXT_CONFIG

            config = {k: v for k, v in MT0_XL_TEXT_CONFIG.items() if k != "model_type"}
            return MT5Config(**{**config, "dropout_rate": 0.0})
        if family == "bloom":  # bigscience/bloomz-7b1
            return llm_config("bloom", 250880, hidden_size=4096, n_layer=30, n_head=32)
        return llm_config(  # meta-llama/Llama-2-7b-hf
            "llama",
            32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        )
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def mblip_config(family: str, size: str, vocab_size: int):
    from mblip.configuration_mblip import MBlipConfig

    vision, qformer, queries = vision_configs(size)
    return MBlipConfig(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text_config(family, size, vocab_size),
        num_query_tokens=queries,
    )


def image_size(config) -> int:
    size = config.vision_config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


# ---------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device | str):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(variants: dict, repeats: int, device="cpu") -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` rounds, A-B then B-A so neither always goes first."""
    names = list(variants)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios numerator/denominator, summarised: rounds ran back to back, so each ratio saw one load."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {**summary(ratios), **sign_test(ratios)}


def sign_test(ratios: list[float]) -> dict:
    """How many rounds the first side won (ratio > 1), and the two-sided sign-test p-value of that count: with a
    handful of noisy rounds, a median just under 1.0 is not evidence of being slower unless most rounds agree."""
    n, wins = len(ratios), sum(r > 1 for r in ratios)
    k = min(wins, n - wins)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"wins": wins, "p_value": p}


# ---------------------------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def release_freed_memory_eagerly():
    """Make the process's resident size follow its live allocations.

    glibc keeps freed blocks for reuse, so a later call can peak without growing the resident size and an earlier one
    can inflate it. With a fixed 64 KiB mmap threshold every tensor buffer of 64 KiB or more is its own mapping, given
    back on free, and the heap is trimmed; the resident size then moves with the live bytes (page-rounded). This
    slows allocation, so it is set only in the children that measure memory, never where we time.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (a fixed value also stops glibc's dynamic raising)
    libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


@dataclass
class Peak:
    bytes: int | None = None
    method: str = ""


@contextmanager
def peak_memory(device="cpu"):
    """The peak memory a block adds to what was allocated when it started.

    CUDA: `torch.cuda.max_memory_allocated` (tensor bytes, exact). CPU: the kernel's resident high-water mark
    (VmHWM), reset through /proc/self/clear_refs, minus the resident size at the start; meaningful in a fresh child
    after `release_freed_memory_eagerly()`.
    """
    peak = Peak()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield peak
        torch.cuda.synchronize()
        peak.bytes, peak.method = torch.cuda.max_memory_allocated() - start, "torch.cuda.max_memory_allocated"
        return
    if not cpu_peak_supported():
        yield peak
        peak.method = "unavailable (no /proc/self/clear_refs)"
        return
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current resident size
    start = _status_kib("VmRSS")
    yield peak
    peak.bytes, peak.method = (_status_kib("VmHWM") - start) * 1024, "VmHWM - VmRSS at start (fresh child)"


# ---------------------------------------------------------------------------------------------------- children
_executor_context = None
_child_log: str | None = None


def set_child_log(path: str | os.PathLike | None):
    """Send the children's stdout/stderr (Trainer logs, warnings) to `path`, appended; None: to the parent's."""
    global _child_log
    _child_log = None if path is None else str(path)


def _context():
    global _executor_context
    if _executor_context is None:
        _executor_context = multiprocessing.get_context("forkserver")
        _executor_context.set_forkserver_preload(CHILD_PRELOAD)
    return _executor_context


def in_child(function, /, *args, **kwargs):
    """`function(*args, **kwargs)` in a fresh process (forked from a server that has imported torch, transformers
    and peft but never ran an op), so that memory measurements and Trainer runs do not see each other."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_context(), max_tasks_per_child=1) as pool:
        return pool.submit(_child_entry, function, args, kwargs, torch.get_num_threads(), _child_log).result()


def _child_entry(function, args, kwargs, threads: int, log: str | None):
    import transformers

    if log is not None:
        import sys

        sys.stdout.flush(), sys.stderr.flush()
        handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(handle, 1), os.dup2(handle, 2)
        os.close(handle)
    torch.set_num_threads(threads)  # the parent's setting (--threads), not the machine's default
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return function(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------- machine
def machine(device="cpu") -> dict:
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
    }
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional, recorded as absent
            info[name] = None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        flags = ""
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in have)
                    break
        return f"{names[0] if names else platform.processor()} ({flags})" if flags else (names[0] if names else "")
    except OSError:
        return platform.processor()


def _memory_gib():
    try:
        with open("/proc/meminfo") as meminfo:
            return round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def require_device(device: str):
    """A clear error, before any model is built, when the asked-for device is missing."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device} asked for, but torch {torch.__version__} sees no CUDA device. The GPU benchmarks "
            "need a machine with an NVIDIA GPU and a CUDA build of torch; on this machine run `python -m mblip.bench`."
        )


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20
