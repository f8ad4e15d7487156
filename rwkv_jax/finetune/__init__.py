"""Fine-tuning released models: LoRA / PiSSA adapters (lora.py) and state tuning."""
