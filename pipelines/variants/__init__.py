"""Model variants: one module per family (detector, classifier, llm, identity)."""
