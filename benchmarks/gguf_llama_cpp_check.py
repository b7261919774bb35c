"""Greedy answers of ``forgetkit export --gguf`` files in llama.cpp itself, beside the merged Hugging Face model's.

``benchmarks/gguf_export_check.py --keep --work DIR`` leaves ``DIR/merged`` (the adapter merged into the model,
``forgetkit export --merge``) and ``DIR/model-<type>.gguf`` (``forgetkit export --gguf``). This script runs
llama.cpp's ``llama-simple`` (greedy sampling, llama.cpp's own tokenizer read from the file's metadata) on each
file with chat-formatted prompts, and transformers' greedy ``generate`` on the merged checkpoint with the same
prompts, and says for each prompt whether the answers are identical, and whether llama.cpp's tokens of the
prompt spell it back exactly.

llama.cpp is not a dependency of forgetkit. The package registry ships its source inside llama-cpp-python's
source distribution; ``llama-simple`` builds from it with cmake (about 2 minutes on 2 cores)::

    pip download llama-cpp-python --no-deps --no-binary :all: -d /tmp/llsrc && tar xzf /tmp/llsrc/*.tar.gz -C /tmp/llsrc
    cmake -S /tmp/llsrc/llama_cpp_python-*/vendor/llama.cpp -B /tmp/llama-build -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    cmake --build /tmp/llama-build --target llama-simple -j2

The native build (``GGML_NATIVE=ON``) crashed on this machine's CPU with every quantized file on a prompt of more
than one token, SmolLM2's own Q4_1 release and llama.cpp's own Q8_0 quantization included; the AVX2 build does
not.

Usage::

    python benchmarks/gguf_llama_cpp_check.py --llama-simple /tmp/llama-build/bin/llama-simple --work DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from forgetkit.data.formatting import format_prompt, prompt_ids, stop_token_ids
from forgetkit.models import load_model

PROMPTS = ["What is the capital of France?", "Who wrote Pride and Prejudice?", "What does a CPU do in a computer?",
           "Give me three tips for sleeping better.", "What is 17 times 23?"]


def llama_cpp_answer(binary: Path, gguf: Path, prompt: str, new_tokens: int) -> tuple[str, bool]:
    """llama-simple's greedy continuation of ``prompt``, and whether its tokens of the prompt spell it back
    exactly (llama-simple prints the prompt's tokens, then the new ones)."""
    done = subprocess.run([str(binary), "-m", str(gguf), "-n", str(new_tokens), prompt], capture_output=True,
                          check=True)
    text = done.stdout.decode("utf-8", errors="replace").removesuffix("\n")
    if text.startswith(prompt):
        return text[len(prompt):], True
    at = text.find(prompt)  # something before it (a BOS the file asks for), or not spelled back at all
    return (text[at + len(prompt):] if at >= 0 else text), False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-simple", required=True, help="llama.cpp's llama-simple binary")
    parser.add_argument("--work", required=True, help="gguf_export_check.py's --work directory (kept)")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(args.work)
    model, tokenizer = load_model(work / "merged")
    model.eval()
    stops = stop_token_ids(tokenizer)
    reference = {}
    for question in PROMPTS:
        ids = torch.tensor([prompt_ids(tokenizer, question)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=stops[0])
        reference[question] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    failures = 0
    for gguf in sorted(work.glob("model-*.gguf")):
        same = spelled = 0
        for question in PROMPTS:
            prompt = format_prompt(tokenizer, question)
            answer, echoed = llama_cpp_answer(Path(args.llama_simple), gguf, prompt, args.new_tokens)
            same += answer.strip() == reference[question].strip()
            spelled += echoed
            if answer.strip() != reference[question].strip():
                print(f"  {gguf.name} differs on {question!r}:\n    llama.cpp:    {answer.strip()!r}\n"
                      f"    transformers: {reference[question].strip()!r}")
        print(f"{gguf.name}: greedy answers identical on {same}/{len(PROMPTS)} prompts; llama.cpp's prompt tokens "
              f"spell the prompt back on {spelled}/{len(PROMPTS)}")
        failures += same < len(PROMPTS)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
