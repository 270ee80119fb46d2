"""Book chapters 3 to 5: the GPT model, text generation, and GPT-2's published weights."""
