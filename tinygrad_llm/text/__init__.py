"""Book chapter 2: text to token ids (tokenizer) and token ids to batches (data)."""
