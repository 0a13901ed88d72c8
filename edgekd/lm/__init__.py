"""Causal language models (Llama / Qwen / GPT-2 style, from a Hugging Face folder or a .gguf file): the
third model family's stages: students (`layers:N`, `prune:R`), token- and sequence-level KD on cached
teacher outputs, weight-only INT8/INT4 quantization with KD, ONNX export with a KV cache (+ OpenVINO IR),
and generation measured on the runtimes (time to first token, decode tokens/s, speculative decoding)."""
