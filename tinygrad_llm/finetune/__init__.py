"""Book chapters 6 and 7 and appendix E: classification, instruction fine-tuning, LoRA; and the
chapter 7 bonus, preference tuning with DPO (preference)."""
