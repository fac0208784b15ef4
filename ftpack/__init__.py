"""ftpack: fine-tune a base model on your conversations and package it for Ollama."""

__version__ = "0.1.0"
