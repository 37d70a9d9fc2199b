"""UniMC: every choice task as multiple choice over the MLM head (docs/unimc_and_ppt.md)."""
