"""Real English sentences for measuring embedding quality (INT8 vs fp32). Written for this project."""

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "The quick brown fox jumps over the lazy dog.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The mitochondria is the powerhouse of the cell.",
    "Rust's borrow checker prevents data races at compile time.",
    "Our quarterly revenue grew by twelve percent compared to last year.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy rain is expected across the northern region this weekend.",
    "He scored the winning goal in the final minute of the match.",
    "Please confirm your appointment by replying to this message.",
    "The museum's new exhibit features ancient Egyptian artifacts.",
    "Quantum computers exploit superposition to explore many states at once.",
    "I left my umbrella on the train this morning.",
    "Children were playing in the park while their parents watched.",
]
