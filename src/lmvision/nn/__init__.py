"""Plain torch modules with explicit constructor arguments: encoders, heads, fusions, decoders."""
