"""Agent templates shipped with naos: ``naosctl create NAME --template T``."""

TEMPLATES = {
    "echo": "Replies with the message it was given.",
    "wordcount": "Counts words in {'text': ...}: totals and the most frequent words.",
}
