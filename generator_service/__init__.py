"""The generator service: grounded answers with citations from a Hugging Face Transformer."""
