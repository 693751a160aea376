"""The imitation servers: a local OpenAI-compatible teacher (:mod:`.teacher`) and a fake Together files and
fine-tuning API (:mod:`.together`), for tests, benchmarks and the demo.

They import from the core only its leaf modules (errors, token counting); the core never imports them.
"""
