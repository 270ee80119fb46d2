"""Book chapters 3 to 5: the GPT model, text generation, and GPT-2's published weights.

Beyond the book: the Llama family (llama, llama_config, llama_weights) and the one entry point for every
model we load (pretrained.load_pretrained)."""
