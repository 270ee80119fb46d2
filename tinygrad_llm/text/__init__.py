"""Book chapter 2: text to token ids (bpe, tokenizer, gpt2_files) and token ids to batches (data).

Beyond the book: the Llama family's tokenizers from tokenizer.json or GGUF files (hf_tokenizer, hf_files)
and their chat templates (chat)."""
