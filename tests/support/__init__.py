"""Reference math, shared models and the programs that tests run in child
processes; not test modules."""
