"""Files shipped with fedlora (the tiny presets' tokenizer)."""
