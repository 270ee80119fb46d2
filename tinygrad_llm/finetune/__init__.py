"""Book chapters 6 and 7 and appendix E: classification, instruction fine-tuning, LoRA."""
