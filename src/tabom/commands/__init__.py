"""One module per ``tabom`` command: a config dataclass and ``run(cfg) -> int`` (DESIGN §8)."""
