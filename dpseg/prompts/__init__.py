"""Prompt sources: sentence templates, prompt banks (text + visual prompts), generators and exemplars."""
