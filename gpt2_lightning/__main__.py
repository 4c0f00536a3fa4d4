"""`python -m gpt2_lightning` is the `gpt2-lightning` command."""

from gpt2_lightning.cli import main

main()
