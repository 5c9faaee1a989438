"""Text side of lmvision: tokenizers, loading from the Hugging Face hub or disk, descriptions."""
