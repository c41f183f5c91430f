"""`lmforge generate`: stream the completion of one prompt to stdout.

Only typing is imported here; the model code is imported inside the function, so `lmforge --help` stays fast.
"""

from __future__ import annotations

from typing import Literal


def generate(
    model: str,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: list[str] | str | None = None,
    chat: bool = False,
    system: str | None = None,
    dtype: Literal["float32", "bfloat16"] = "float32",
    threads: int | None = None,
    quantize: Literal["int8", "q8_0", "int4"] | None = None,
    compile: bool = False,
) -> None:
    """Generate text after a prompt, printed as it comes.

    Args:
        model: A named model (smollm2-135m-instruct), a Hugging Face folder or an lmforge folder, with its
            tokenizer.
        prompt: The text to continue (with --chat true: the user's message).
        max_tokens: New tokens at most.
        temperature: Logits are divided by it; 0 is greedy (always the most likely token).
        top_p: Sample from the smallest set of likely tokens whose probability reaches top_p; 1 is off.
        top_k: Sample from the k most likely tokens; 0 is off.
        min_p: Drop tokens less likely than min_p times the most likely one; 0 is off.
        repetition_penalty: Make tokens already in the prompt or the output less likely (> 1) or more (< 1).
        seed: The same seed gives the same text; none: different each run.
        stop: A string, or a list of them ('["\\n\\n", "User:"]'), that ends the text (left out of it).
        chat: Wrap the prompt as one user message in the model's chat template (ChatML when it has none).
        system: The system prompt (with --chat true).
        dtype: The weights' precision.
        threads: CPU threads for torch; default: torch's own choice.
        quantize: Quantize the blocks' weights after loading (int8: a scale per row, f32 activations, the
            closest to float32; q8_0, int4: smaller, further from it); a folder written by `lmforge quantize`
            needs no flag.
        compile: Decode with the forward under torch.compile: about a minute to compile on first use, then
            faster steps (most with --quantize, where the per-token overhead is the larger part).
    """
    from lmforge.generate.console import load, run_generate, sampling_params

    params = sampling_params(max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, seed, stop)
    lm, tokenizer = load(model, dtype, threads, quantize)
    run_generate(lm, tokenizer, prompt, params, chat=chat, system=system, compile=compile)
