"""Pure decisions and models: no I/O, time and state come in as arguments."""
