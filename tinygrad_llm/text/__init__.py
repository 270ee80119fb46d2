"""Book chapter 2: text to token ids (bpe, tokenizer, gpt2_files) and token ids to batches (data)."""
